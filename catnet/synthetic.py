"""Procedural "cat vs not-cat" picture generator for the offline demo and tests.

Every class paints with the same colour and background distributions and places
its object anywhere at widely varying scale, so a model cannot read the label
from mean colour or pixel position: it has to see shape (ears, eyes, whiskers).
Only Pillow, numpy and the stdlib are used so data can be made without torch.
"""

from __future__ import annotations

import colorsys
import math
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES: tuple[str, ...] = ("cats", "cars", "birds", "houses", "noise")
POSITIVE_CLASS = "cats"
SUPERSAMPLE = 3  # draw at 3x and downsample with LANCZOS for anti-aliasing
JPEG_FRACTION = 0.35  # share of dataset files written as JPEG for format variety

Colour = tuple[int, int, int]
Point = tuple[float, float]
# Fur tones are deliberately part of the shared palette, so orange or grey
# objects are just as likely to be cars or houses as cats.
_FUR: tuple[Colour, ...] = (
    (226, 132, 48),
    (128, 128, 132),
    (32, 30, 30),
    (238, 236, 228),
    (122, 80, 46),
    (200, 170, 120),
)
_IRIS: tuple[Colour, ...] = ((90, 180, 60), (220, 200, 40), (210, 140, 30), (80, 150, 220))


def _clip(v: float) -> int:
    return max(0, min(255, int(v)))


def _colour(rng: random.Random, fur_only: bool = False) -> Colour:
    """One colour distribution shared by every class and by backgrounds."""
    if fur_only or rng.random() < 0.5:
        base = rng.choice(_FUR)
        return (
            _clip(base[0] + rng.randint(-25, 25)),
            _clip(base[1] + rng.randint(-25, 25)),
            _clip(base[2] + rng.randint(-25, 25)),
        )
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.15, 1.0), rng.uniform(0.2, 1.0))
    return (_clip(rgb[0] * 255), _clip(rgb[1] * 255), _clip(rgb[2] * 255))


def _shade(c: Colour, f: float) -> Colour:
    """Darken (f < 1) or lighten toward white (f > 1) for stripes, wings, windows."""
    if f <= 1:
        return (_clip(c[0] * f), _clip(c[1] * f), _clip(c[2] * f))
    t = min(f - 1, 1.0)
    return (
        _clip(c[0] + (255 - c[0]) * t),
        _clip(c[1] + (255 - c[1]) * t),
        _clip(c[2] + (255 - c[2]) * t),
    )


def _contrasting(
    rng: random.Random, against: Colour, min_dist: float = 120, fur_only: bool = False
) -> Colour:
    # Retry so the object usually stands out; the rare low-contrast leftover
    # is kept as a realistic hard example rather than looping forever.
    c = _colour(rng, fur_only)
    for _ in range(10):
        if math.dist(c, against) >= min_dist:
            break
        c = _colour(rng, fur_only)
    return c


def _background(rng: random.Random, big: int) -> tuple[Image.Image, Colour]:
    """Solid, gradient, blotchy texture or stripes; returns image and mean colour."""
    nrng = np.random.default_rng(rng.getrandbits(32))
    a = np.array(_colour(rng), np.float32)
    # Pull the second colour toward the first so the background stays calmer
    # than the object drawn on it.
    b = a + (np.array(_colour(rng), np.float32) - a) * rng.uniform(0.3, 0.8)
    kind = rng.choice(("solid", "gradient", "texture", "stripes"))
    ys, xs = np.mgrid[0:big, 0:big].astype(np.float32) / big
    ang = rng.uniform(0, math.pi)
    proj = xs * math.cos(ang) + ys * math.sin(ang)
    if kind == "solid":
        t = np.zeros((big, big), np.float32)
    elif kind == "gradient":
        t = (proj - proj.min()) / (proj.max() - proj.min())
    elif kind == "texture":
        cells = rng.randint(3, 12)
        low = Image.fromarray((nrng.random((cells, cells)) * 255).astype(np.uint8))
        t = np.asarray(low.resize((big, big), Image.Resampling.BICUBIC), np.float32) / 255
    else:
        t = (np.sin(proj * rng.uniform(8, 40)) > 0).astype(np.float32) * rng.uniform(0.3, 1)
    arr = a * (1 - t[..., None]) + b * t[..., None]
    arr += nrng.normal(0, rng.uniform(0, 12), (big, big, 1))  # film grain
    arr = np.clip(arr, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB"), tuple(int(v) for v in arr.mean(axis=(0, 1)))


def _span(rng: random.Random, lo: float, hi: float) -> float:
    # Large objects may not fit the requested margin; fall back to centring.
    return rng.uniform(lo, hi) if lo < hi else (lo + hi) / 2


def _ellipse(
    d: ImageDraw.ImageDraw, cx: float, cy: float, rx: float, ry: float, fill: Colour
) -> None:
    d.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)


def _cat_face(
    d: ImageDraw.ImageDraw,
    rng: random.Random,
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    fur: Colour,
) -> None:
    """Eyes with pupils, nose, mouth and whiskers: the cues that define a cat."""
    lum = sum(fur) / 3
    line = max(2, round(rx * 0.05))
    er = rx * rng.uniform(0.2, 0.26)
    iris, slit = rng.choice(_IRIS), rng.uniform(0.25, 0.6)
    for side in (-1, 1):
        ex, ey = cx + side * rx * rng.uniform(0.4, 0.46), cy - ry * rng.uniform(0.02, 0.18)
        _ellipse(d, ex, ey, er, er * 0.9, iris)
        _ellipse(d, ex, ey, er * slit, er * 0.85, (10, 10, 10))
        _ellipse(d, ex + er * 0.3, ey - er * 0.35, er * 0.18, er * 0.18, (250, 250, 250))
    ny, nw = cy + ry * rng.uniform(0.18, 0.3), rx * rng.uniform(0.1, 0.15)
    nose = rng.choice(((240, 140, 160), (60, 40, 40), (200, 100, 110)))
    d.polygon([(cx - nw, ny - nw * 0.5), (cx + nw, ny - nw * 0.5), (cx, ny + nw * 0.6)], fill=nose)
    mouth = _shade(fur, 0.35) if lum > 90 else _shade(fur, 1.6)
    for side in (-1, 1):
        d.line([(cx, ny + nw * 0.6), (cx + side * nw * 1.2, ny + nw * 1.6)], fill=mouth, width=line)
    whisker = (245, 245, 245) if lum < 150 or rng.random() < 0.3 else (40, 40, 40)
    for side in (-1, 1):
        for k in (-1, 0, 1):
            start = (cx + side * rx * 0.22, ny + nw * 0.3 + k * nw * 0.4)
            end = (cx + side * rx * rng.uniform(1.05, 1.35), ny + k * rx * 0.22 + rx * 0.05)
            d.line([start, end], fill=whisker, width=line)


def _draw_cat(d: ImageDraw.ImageDraw, rng: random.Random, big: int, bg: Colour) -> Point:
    r = big * (0.35 + 0.45 * rng.random() ** 0.6) / 2  # head 35-80% of frame, few tiny
    rx, ry = r * rng.uniform(0.95, 1.15), r * rng.uniform(0.8, 0.98)
    cx = _span(rng, rx * 0.9, big - rx * 0.9)
    cy = _span(rng, ry * 1.6, big - ry * 0.9)
    fur = _contrasting(rng, bg)
    if rng.random() < 0.4:  # sitting body behind the head, usually cropped by the frame
        bx, by = cx + rng.uniform(-0.3, 0.3) * r, cy + r * rng.uniform(1.1, 1.5)
        _ellipse(d, bx, by, r * rng.uniform(0.9, 1.3), r * rng.uniform(0.8, 1.1), fur)
    for side in (-1, 1):
        phi = math.radians(rng.uniform(28, 45))
        k = rng.uniform(1.5, 1.85)

        def on_head(a: float, s: float, side: int = side) -> Point:
            return cx + side * rx * s * math.sin(a), cy - ry * s * math.cos(a)

        ear = [on_head(phi - 0.4, 0.85), on_head(phi, k), on_head(phi + 0.45, 0.85)]
        d.polygon(ear, fill=fur)
        inner = [
            on_head(phi - 0.22, 1.0),
            on_head(phi, 1 + (k - 1) * 0.7),
            on_head(phi + 0.25, 1.0),
        ]
        d.polygon(inner, fill=_shade((235, 150, 160), rng.uniform(0.8, 1.0)))
    _ellipse(d, cx, cy, rx, ry, fur)
    if rng.random() < 0.35:  # tabby stripes on forehead and cheeks
        stripe, w = _shade(fur, 0.5), max(2, round(r * 0.07))
        for dx in (-0.2, 0.0, 0.2):
            d.line(
                [(cx + dx * rx, cy - ry * 0.95), (cx + dx * rx * 0.7, cy - ry * 0.45)],
                fill=stripe,
                width=w,
            )
        for side in (-1, 1):
            for dy in (0.15, 0.4):
                d.line(
                    [(cx + side * rx * 0.98, cy + dy * ry), (cx + side * rx * 0.7, cy + dy * ry)],
                    fill=stripe,
                    width=w,
                )
    _cat_face(d, rng, cx, cy, rx, ry, fur)
    return cx, cy


def _draw_car(d: ImageDraw.ImageDraw, rng: random.Random, big: int, bg: Colour) -> Point:
    w = big * rng.uniform(0.5, 0.95)
    h = w * rng.uniform(0.22, 0.32)
    cx = _span(rng, w / 2, big - w / 2)
    cy = _span(rng, h * 1.4, big - h * 1.1)
    x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    paint = _contrasting(rng, bg)
    top = y0 - h * rng.uniform(0.6, 0.95)
    a, b = rng.uniform(0.12, 0.25), rng.uniform(0.3, 0.4)
    cabin = [(x0 + w * a, y0), (x0 + w * b, top), (x1 - w * b * 0.9, top), (x1 - w * a * 0.8, y0)]
    d.polygon(cabin, fill=paint)
    glass = _shade(rng.choice(((150, 190, 220), (90, 100, 110), (200, 210, 215))), 1.0)
    inset = h * 0.12
    d.polygon(
        [
            (x0 + w * a + inset * 1.5, y0),
            (x0 + w * b + inset * 0.5, top + inset),
            (x1 - w * b * 0.9 - inset * 0.5, top + inset),
            (x1 - w * a * 0.8 - inset * 1.5, y0),
        ],
        fill=glass,
    )
    d.line([(cx, top + inset), (cx, y0)], fill=paint, width=max(2, round(h * 0.08)))
    d.rounded_rectangle((x0, y0, x1, y1), radius=h * 0.3, fill=paint)
    d.line(
        [(x0 + w * 0.05, cy), (x1 - w * 0.05, cy)],
        fill=_shade(paint, 0.6),
        width=max(1, round(h * 0.04)),
    )
    wr = h * rng.uniform(0.42, 0.58)
    hub = rng.choice(((200, 200, 205), (150, 150, 155), _shade(paint, 1.4)))
    for wx in (x0 + w * 0.22, x1 - w * 0.22):  # wheels double as eye-like hard negatives
        _ellipse(d, wx, y1, wr, wr, (25, 25, 28))
        _ellipse(d, wx, y1, wr * 0.5, wr * 0.5, hub)
    _ellipse(d, x1 - h * 0.15, y0 + h * 0.3, h * 0.12, h * 0.09, (250, 240, 170))
    _ellipse(d, x0 + h * 0.1, y0 + h * 0.3, h * 0.08, h * 0.1, (200, 30, 30))
    return cx, cy


def _draw_bird(d: ImageDraw.ImageDraw, rng: random.Random, big: int, bg: Colour) -> Point:
    rx = big * rng.uniform(0.35, 0.75) / 2
    ry = rx * rng.uniform(0.5, 0.7)
    hr = ry * rng.uniform(0.6, 0.85)
    cx = _span(rng, rx * 1.5, big - rx * 1.3)
    cy = _span(rng, ry + hr * 1.4, big - ry * 1.4)
    body = _contrasting(rng, bg)
    if rng.random() < 0.6:  # tail triangles look ear-like: a deliberate hard negative
        d.polygon(
            [
                (cx - rx * 0.6, cy),
                (cx - rx * 1.5, cy - ry * rng.uniform(0.5, 1.1)),
                (cx - rx * 1.5, cy + ry * rng.uniform(0.0, 0.6)),
            ],
            fill=_shade(body, 0.75),
        )
    if rng.random() < 0.6:
        leg = (200, 150, 60)
        for lx in (cx - rx * 0.15, cx + rx * 0.15):
            d.line(
                [(lx, cy + ry * 0.8), (lx, cy + ry * 1.4)], fill=leg, width=max(2, round(rx * 0.05))
            )
    _ellipse(d, cx, cy, rx, ry, body)
    hx, hy = cx + rx * 0.8, cy - ry * rng.uniform(0.5, 0.9)
    _ellipse(d, hx, hy, hr, hr, body)
    beak = rng.choice(((240, 180, 40), (230, 120, 30), (60, 50, 40)))
    bl = hr * rng.uniform(0.6, 1.0)
    d.polygon(
        [
            (hx + hr * 0.8, hy - hr * 0.3),
            (hx + hr * 0.8, hy + hr * 0.3),
            (hx + hr * 0.8 + bl, hy + hr * 0.1),
        ],
        fill=beak,
    )
    ex, ey = hx + hr * 0.35, hy - hr * 0.2
    _ellipse(d, ex, ey, hr * 0.22, hr * 0.22, (245, 245, 245))
    _ellipse(d, ex + hr * 0.04, ey, hr * 0.13, hr * 0.13, (10, 10, 10))
    wing = _shade(body, rng.choice((0.6, 0.75, 1.4)))
    up = rng.uniform(-0.6, 0.3)
    d.polygon(
        [
            (cx + rx * 0.4, cy - ry * 0.2),
            (cx - rx * 0.7, cy + ry * up - ry * 0.6),
            (cx - rx * 0.5, cy + ry * 0.4),
            (cx + rx * 0.2, cy + ry * 0.35),
        ],
        fill=wing,
    )
    return cx, cy


def _draw_house(d: ImageDraw.ImageDraw, rng: random.Random, big: int, bg: Colour) -> Point:
    w = big * rng.uniform(0.35, 0.75)
    h = w * rng.uniform(0.6, 0.95)
    rh = w * rng.uniform(0.35, 0.7)  # roof triangle mimics a big cat ear
    cx = _span(rng, w * 0.6, big - w * 0.6)
    cy = _span(rng, rh + h / 2, big - h / 2)
    x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    wall = _contrasting(rng, bg)
    roof = _contrasting(rng, wall, 60)
    if rng.random() < 0.5:
        d.rectangle(
            (x1 - w * 0.3, y0 - rh * 0.9, x1 - w * 0.18, y0 - rh * 0.3), fill=_shade(roof, 0.7)
        )
    d.rectangle((x0, y0, x1, y1), fill=wall)
    over = w * rng.uniform(0.0, 0.12)
    d.polygon([(x0 - over, y0), (cx, y0 - rh), (x1 + over, y0)], fill=roof)
    glass = rng.choice(((170, 210, 240), (250, 230, 140), (60, 70, 90)))
    frame = _shade(wall, 0.5)
    ww = w * rng.uniform(0.16, 0.24)
    wy = y0 + h * rng.uniform(0.15, 0.25)
    for wx in (x0 + w * 0.12, x1 - w * 0.12 - ww):
        d.rectangle(
            (wx, wy, wx + ww, wy + ww), fill=glass, outline=frame, width=max(1, round(ww * 0.08))
        )
        d.line(
            [(wx + ww / 2, wy), (wx + ww / 2, wy + ww)], fill=frame, width=max(1, round(ww * 0.06))
        )
    dw = w * rng.uniform(0.16, 0.24)
    dx = cx - dw / 2 + rng.uniform(-0.15, 0.15) * w
    d.rectangle((dx, y1 - h * rng.uniform(0.4, 0.55), dx + dw, y1), fill=_shade(_colour(rng), 0.6))
    return cx, cy


def _draw_noise(img: Image.Image, rng: random.Random, big: int) -> Image.Image:
    """Nonsense: pixel noise, blobs, stripes, a solid fill, or loose primitive shapes."""
    mode = rng.choice(("pixels", "blobs", "shapes", "solid", "background"))
    if mode == "pixels":
        cells = rng.choice((big // 24, big // 8, big // 3, big))
        nrng = np.random.default_rng(rng.getrandbits(32))
        arr = (nrng.random((cells, cells, 3)) * rng.uniform(80, 255)).astype(np.uint8)
        return Image.fromarray(arr, "RGB").resize((big, big), Image.Resampling.NEAREST)
    if mode == "solid":
        return Image.new("RGB", (big, big), _colour(rng))
    if mode == "background":  # bare backgrounds so "no object" is never cat-free shortcut
        return img
    d = ImageDraw.Draw(img)
    for _ in range(rng.randint(2, 8)):
        x, y, s = rng.uniform(0, big), rng.uniform(0, big), big * rng.uniform(0.05, 0.35)
        if mode == "blobs" or rng.random() < 0.4:
            _ellipse(d, x, y, s, s * rng.uniform(0.4, 1.0), _colour(rng))
        elif rng.random() < 0.5:  # lone triangles and circles as ear/eye look-alikes
            d.polygon(
                [(x, y), (x + s, y + rng.uniform(-s, s)), (x + rng.uniform(-s, s), y + s)],
                fill=_colour(rng),
            )
        else:
            d.rectangle((x, y, x + s, y + s * rng.uniform(0.3, 1.5)), fill=_colour(rng))
    return img


_DRAWERS: dict[str, tuple[Callable[..., Point], float]] = {
    # kind -> (drawer, max rotation in degrees)
    "cats": (_draw_cat, 20.0),
    "cars": (_draw_car, 10.0),
    "birds": (_draw_bird, 20.0),
    "houses": (_draw_house, 8.0),
}


def draw_image(kind: str, rng: random.Random, size: int = 64) -> Image.Image:
    """Draw one RGB picture of ``kind`` (one of CLASSES) at ``size`` x ``size``."""
    if kind not in CLASSES:
        raise ValueError(f"unknown kind {kind!r}; expected one of {CLASSES}")
    big = size * SUPERSAMPLE
    img, bg_mean = _background(rng, big)
    if kind == "noise":
        img = _draw_noise(img, rng, big)
    else:
        drawer, max_rot = _DRAWERS[kind]
        # Objects go on a transparent layer so they can be rotated and mirrored
        # without dragging the background along.
        layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
        cx, cy = drawer(ImageDraw.Draw(layer), rng, big, bg_mean)
        layer = layer.rotate(
            rng.uniform(-max_rot, max_rot), Image.Resampling.BICUBIC, center=(cx, cy)
        )
        if rng.random() < 0.5:
            layer = layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        img = Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")
    return img.resize((size, size), Image.Resampling.LANCZOS)


def _save(img: Image.Image, path: Path) -> None:
    if path.suffix == ".jpg":
        img.save(path, "JPEG", quality=90)
    else:
        img.save(path, "PNG")


def generate_dataset(
    out_dir: Path,
    n_per_class: int = 120,
    size: int = 64,
    seed: int = 0,
    classes: Sequence[str] = CLASSES,
) -> dict[str, int]:
    """Write ``out_dir/<class>/<class>_<i>.{png,jpg}``; return the count per class.

    Each image gets its own RNG keyed by (seed, class, index), so output is
    byte-identical for a seed and one class's images do not depend on n.
    """
    out_dir = Path(out_dir)
    counts: dict[str, int] = {}
    for kind in classes:
        if kind not in CLASSES:
            raise ValueError(f"unknown class {kind!r}; expected one of {CLASSES}")
        class_dir = out_dir / kind
        class_dir.mkdir(parents=True, exist_ok=True)
        # Drop our own leftovers from an earlier run so counts on disk stay exact.
        stale = re.compile(rf"{re.escape(kind)}_\d+\.(png|jpg)")
        for old in class_dir.iterdir():
            if stale.fullmatch(old.name):
                old.unlink()
        for i in range(n_per_class):
            rng = random.Random(f"{seed}:{kind}:{i}")
            img = draw_image(kind, rng, size)
            ext = "jpg" if rng.random() < JPEG_FRACTION else "png"
            _save(img, class_dir / f"{kind}_{i}.{ext}")
        counts[kind] = n_per_class
    return counts


def generate_unlabeled(
    out_dir: Path, n: int, size: int = 64, seed: int = 1
) -> list[tuple[Path, str]]:
    """Write ``out_dir/img_<i>.jpg`` of mixed kinds; return (path, true kind) pairs."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: list[tuple[Path, str]] = []
    for i in range(n):
        rng = random.Random(f"{seed}:unlabeled:{i}")
        kind = rng.choice(CLASSES)
        path = out_dir / f"img_{i}.jpg"
        _save(draw_image(kind, rng, size), path)
        result.append((path, kind))
    return result
