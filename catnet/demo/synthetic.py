"""Procedural "cat vs not-cat" pictures for the offline demo and tests (Pillow + numpy only).

All classes share one colour and background distribution and vary position and scale widely, so
the label is in the shapes (ears, eyes, whiskers), not in mean colour: a CNN beats an MLP."""

import colorsys
import math
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES: tuple[str, ...] = ("cats", "cars", "birds", "houses", "noise")
SUPERSAMPLE = 3  # draw at 3x and downsample with LANCZOS for anti-aliasing
JPEG_FRACTION = 0.35  # share of dataset files written as JPEG, for format variety

Colour = tuple[int, int, int]
Point = tuple[float, float]
Draw = ImageDraw.ImageDraw
# Fur tones are half of every class's palette: an orange object may as well be a car as a cat.
_FUR = ((226, 132, 48), (128, 128, 132), (32, 30, 30), (238, 236, 228), (122, 80, 46))
_IRIS = ((90, 180, 60), (220, 200, 40), (210, 140, 30), (80, 150, 220))
_BLACK, _WHITE, _PINK = (10, 10, 10), (248, 248, 248), (235, 150, 160)


def _rgb(values: Iterable[float]) -> Colour:
    r, g, b = (max(0, min(255, int(v))) for v in values)
    return r, g, b


def _colour(rng: random.Random, against: Colour | None = None, min_dist: float = 120) -> Colour:
    # One distribution for every class and background. With `against`, retry so the object
    # stands out; a rare low-contrast leftover stays as a hard example (no endless loop).
    for _ in range(10):
        if rng.random() < 0.5:
            c = _rgb(v + rng.randint(-25, 25) for v in rng.choice(_FUR))
        else:
            hsv = (rng.random(), rng.uniform(0.15, 1.0), rng.uniform(0.2, 1.0))
            c = _rgb(255 * v for v in colorsys.hsv_to_rgb(*hsv))
        if against is None or math.dist(c, against) >= min_dist:
            break
    return c


def _shade(c: Colour, f: float) -> Colour:
    """Darken (f < 1) or lighten toward white (f > 1): stripes, wings, frames."""
    return _rgb(v * f if f <= 1 else v + (255 - v) * min(f - 1, 1.0) for v in c)


def _background(rng: random.Random, big: int) -> tuple[Image.Image, Colour]:
    """Solid, gradient, blotchy texture or stripes; returns image and mean colour."""
    nrng = np.random.default_rng(rng.getrandbits(32))
    a = np.array(_colour(rng), np.float32)
    b = a + (np.array(_colour(rng), np.float32) - a) * rng.uniform(0.3, 0.8)  # calm: objects pop
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
    return Image.fromarray(arr, "RGB"), _rgb(arr.mean(axis=(0, 1)))


def _span(rng: random.Random, lo: float, hi: float) -> float:
    return rng.uniform(lo, hi) if lo < hi else (lo + hi) / 2  # too big for the margins: centre


def _rel(ox: float, oy: float, sx: float, sy: float, uv: Iterable[Point]) -> list[Point]:
    """Map (u, v) offsets in units of (sx, sy) around (ox, oy) to canvas points."""
    return [(ox + u * sx, oy + v * sy) for u, v in uv]


def _oval(d: Draw, cx: float, cy: float, rx: float, ry: float, fill: Colour) -> None:
    d.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)


def _draw_cat(d: Draw, rng: random.Random, big: int, bg: Colour) -> Point:
    # Head 35-80% of the frame, skewed large: tiny cats need more data than the demo has.
    r = big * (0.35 + 0.45 * rng.random() ** 0.6) / 2
    rx, ry = r * rng.uniform(0.95, 1.15), r * rng.uniform(0.8, 0.98)
    cx, cy = _span(rng, rx * 0.9, big - rx * 0.9), _span(rng, ry * 1.6, big - ry * 0.9)
    fur = _colour(rng, bg)
    if rng.random() < 0.4:  # sitting body behind the head, usually cut by the frame
        bx, by = cx + rng.uniform(-0.3, 0.3) * r, cy + r * rng.uniform(1.1, 1.5)
        _oval(d, bx, by, r * rng.uniform(0.9, 1.3), r * rng.uniform(0.8, 1.1), fur)
    for side in (-1, 1):
        phi, k = math.radians(rng.uniform(28, 45)), rng.uniform(1.5, 1.85)
        # Ear corners as (angle from vertical, distance in head radii).
        outer = [(phi - 0.4, 0.85), (phi, k), (phi + 0.45, 0.85)]
        inner = [(phi - 0.22, 1.0), (phi, 1 + (k - 1) * 0.7), (phi + 0.25, 1.0)]
        for corners, fill in ((outer, fur), (inner, _shade(_PINK, rng.uniform(0.8, 1.0)))):
            uv = [(side * s * math.sin(a), -s * math.cos(a)) for a, s in corners]
            d.polygon(_rel(cx, cy, rx, ry, uv), fill=fill)
    _oval(d, cx, cy, rx, ry, fur)
    if rng.random() < 0.35:  # tabby stripes on forehead and cheeks
        stripe, w = _shade(fur, 0.5), max(2, round(r * 0.07))
        for u in (-0.2, 0.0, 0.2):
            d.line(_rel(cx, cy, rx, ry, [(u, -0.95), (u * 0.7, -0.45)]), fill=stripe, width=w)
        for u, v in ((-1, 0.15), (-1, 0.4), (1, 0.15), (1, 0.4)):
            d.line(_rel(cx, cy, rx, ry, [(u * 0.98, v), (u * 0.7, v)]), fill=stripe, width=w)
    # Face: eyes with pupils, nose, mouth and whiskers, the cues that make it a cat.
    lum, line = sum(fur) / 3, max(2, round(rx * 0.05))
    # Big cartoon eyes keep the cat readable when the head is only ~12 px wide.
    er, iris, slit = rx * rng.uniform(0.2, 0.26), rng.choice(_IRIS), rng.uniform(0.25, 0.6)
    for side in (-1, 1):
        ex, ey = cx + side * rx * rng.uniform(0.4, 0.46), cy - ry * rng.uniform(0.02, 0.18)
        _oval(d, ex, ey, er, er * 0.9, iris)
        _oval(d, ex, ey, er * slit, er * 0.85, _BLACK)
        _oval(d, ex + er * 0.3, ey - er * 0.35, er * 0.18, er * 0.18, _WHITE)
    ny, nw = cy + ry * rng.uniform(0.18, 0.3), rx * rng.uniform(0.1, 0.15)
    nose = rng.choice((_PINK, (60, 40, 40), (200, 100, 110)))
    d.polygon(_rel(cx, ny, nw, nw, [(-1, -0.5), (1, -0.5), (0, 0.6)]), fill=nose)
    mouth = _shade(fur, 0.35) if lum > 90 else _shade(fur, 1.6)
    whisker = _WHITE if lum < 150 or rng.random() < 0.3 else (40, 40, 40)
    for side in (-1, 1):
        d.line(_rel(cx, ny, side * nw, nw, [(0, 0.6), (1.2, 1.6)]), fill=mouth, width=line)
        for k in (-1, 0, 1):
            start = (cx + side * rx * 0.22, ny + nw * 0.3 + k * nw * 0.4)
            end = (cx + side * rx * rng.uniform(1.05, 1.35), ny + k * rx * 0.22 + rx * 0.05)
            d.line([start, end], fill=whisker, width=line)
    return cx, cy


def _draw_car(d: Draw, rng: random.Random, big: int, bg: Colour) -> Point:
    w = big * rng.uniform(0.5, 0.95)
    h = w * rng.uniform(0.22, 0.32)
    cx, cy = _span(rng, w / 2, big - w / 2), _span(rng, h * 1.4, big - h * 1.1)
    paint = _colour(rng, bg)
    top, a, b = -rng.uniform(1.1, 1.45) * h / w, rng.uniform(-0.38, -0.25), rng.uniform(-0.2, -0.1)
    # Cabin then its window inset, as offsets from the body centre in car widths.
    cabin = [(a, -0.5 * h / w), (b, top), (-b * 0.9, top), (-a * 0.8, -0.5 * h / w)]
    d.polygon(_rel(cx, cy, w, w, cabin), fill=paint)
    glass = rng.choice(((150, 190, 220), (90, 100, 110), (200, 210, 215)))
    inset = [(u - 0.04 * math.copysign(1, u), v + (0.03 if v == top else 0)) for u, v in cabin]
    d.polygon(_rel(cx, cy, w, w, inset), fill=glass)
    x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    d.rounded_rectangle((x0, y0, x1, y1), radius=h * 0.3, fill=paint)
    d.line([(x0 + w * 0.05, cy), (x1 - w * 0.05, cy)], fill=_shade(paint, 0.6), width=2)
    wr = h * rng.uniform(0.42, 0.58)
    hub = rng.choice(((200, 200, 205), (150, 150, 155), _shade(paint, 1.4)))
    for wx in (x0 + w * 0.22, x1 - w * 0.22):  # wheels double as eye-like hard negatives
        _oval(d, wx, y1, wr, wr, (25, 25, 28))
        _oval(d, wx, y1, wr * 0.5, wr * 0.5, hub)
    _oval(d, x1 - h * 0.15, y0 + h * 0.3, h * 0.12, h * 0.09, (250, 240, 170))
    _oval(d, x0 + h * 0.1, y0 + h * 0.3, h * 0.08, h * 0.1, (200, 30, 30))
    return cx, cy


def _draw_bird(d: Draw, rng: random.Random, big: int, bg: Colour) -> Point:
    rx = big * rng.uniform(0.35, 0.75) / 2
    ry = rx * rng.uniform(0.5, 0.7)
    hr = ry * rng.uniform(0.6, 0.85)
    cx, cy = _span(rng, rx * 1.5, big - rx * 1.3), _span(rng, ry + hr * 1.4, big - ry * 1.4)
    body = _colour(rng, bg)
    if rng.random() < 0.6:  # the tail triangle looks ear-like: a deliberate hard negative
        tail = [(-0.6, 0), (-1.5, -rng.uniform(0.5, 1.1)), (-1.5, rng.uniform(0.0, 0.6))]
        d.polygon(_rel(cx, cy, rx, ry, tail), fill=_shade(body, 0.75))
    if rng.random() < 0.6:
        for u in (-0.15, 0.15):
            d.line(_rel(cx, cy, rx, ry, [(u, 0.8), (u, 1.4)]), (200, 150, 60), round(rx * 0.05))
    _oval(d, cx, cy, rx, ry, body)
    hx, hy = cx + rx * 0.8, cy - ry * rng.uniform(0.5, 0.9)
    _oval(d, hx, hy, hr, hr, body)
    beak = rng.choice(((240, 180, 40), (230, 120, 30), (60, 50, 40)))
    tip = 0.8 + rng.uniform(0.6, 1.0)
    d.polygon(_rel(hx, hy, hr, hr, [(0.8, -0.3), (0.8, 0.3), (tip, 0.1)]), fill=beak)
    # One eye built exactly like a cat's, so "eye" alone does not mean cat.
    _oval(d, hx + hr * 0.35, hy - hr * 0.2, hr * 0.22, hr * 0.22, _WHITE)
    _oval(d, hx + hr * 0.39, hy - hr * 0.2, hr * 0.13, hr * 0.13, _BLACK)
    wing, up = _shade(body, rng.choice((0.6, 0.75, 1.4))), rng.uniform(-1.2, -0.3)
    d.polygon(_rel(cx, cy, rx, ry, [(0.4, -0.2), (-0.7, up), (-0.5, 0.4), (0.2, 0.35)]), wing)
    return cx, cy


def _draw_house(d: Draw, rng: random.Random, big: int, bg: Colour) -> Point:
    w = big * rng.uniform(0.35, 0.75)
    h, rh = w * rng.uniform(0.6, 0.95), w * rng.uniform(0.35, 0.7)  # roof: one big "ear"
    cx, cy = _span(rng, w * 0.6, big - w * 0.6), _span(rng, rh + h / 2, big - h / 2)
    x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    wall = _colour(rng, bg)
    roof = _colour(rng, wall, 60)
    if rng.random() < 0.5:  # chimney
        d.rectangle((x1 - w * 0.3, y0 - rh * 0.9, x1 - w * 0.18, y0 - rh * 0.3), _shade(roof, 0.7))
    d.rectangle((x0, y0, x1, y1), fill=wall)
    over = w * rng.uniform(0.0, 0.12)
    d.polygon([(x0 - over, y0), (cx, y0 - rh), (x1 + over, y0)], fill=roof)
    glass = rng.choice(((170, 210, 240), (250, 230, 140), (60, 70, 90)))
    frame, ww = _shade(wall, 0.5), w * rng.uniform(0.16, 0.24)
    wy, lw = y0 + h * rng.uniform(0.15, 0.25), max(2, round(ww * 0.08))
    for wx in (x0 + w * 0.12, x1 - w * 0.12 - ww):
        d.rectangle((wx, wy, wx + ww, wy + ww), fill=glass, outline=frame, width=lw)
        d.line([(wx + ww / 2, wy), (wx + ww / 2, wy + ww)], fill=frame, width=lw)
    dw = w * rng.uniform(0.16, 0.24)
    dx = cx - dw / 2 + rng.uniform(-0.15, 0.15) * w
    d.rectangle((dx, y1 - h * rng.uniform(0.4, 0.55), dx + dw, y1), _shade(_colour(rng), 0.6))
    return cx, cy


def _draw_noise(img: Image.Image, rng: random.Random, big: int) -> Image.Image:
    """Nonsense: pixel noise, blobs, loose shapes, or a bare (solid, striped...) background."""
    mode = rng.choice(("pixels", "blobs", "shapes", "background"))
    if mode == "pixels":
        cells = rng.choice((big // 24, big // 8, big // 3, big))
        nrng = np.random.default_rng(rng.getrandbits(32))
        arr = (nrng.random((cells, cells, 3)) * rng.uniform(80, 255)).astype(np.uint8)
        return Image.fromarray(arr, "RGB").resize((big, big), Image.Resampling.NEAREST)
    if mode == "background":  # bare (incl. solid, striped) backgrounds: "no object" is a class too
        return img
    d = ImageDraw.Draw(img)
    for _ in range(rng.randint(2, 8)):
        x, y, s = rng.uniform(0, big), rng.uniform(0, big), big * rng.uniform(0.05, 0.35)
        if mode == "blobs" or rng.random() < 0.4:  # lone discs: eye look-alikes
            _oval(d, x, y, s, s * rng.uniform(0.4, 1.0), _colour(rng))
        elif rng.random() < 0.5:  # lone triangles: ear look-alikes
            tri = [(0, 0), (1, rng.uniform(-1, 1)), (rng.uniform(-1, 1), 1)]
            d.polygon(_rel(x, y, s, s, tri), fill=_colour(rng))
        else:
            d.rectangle((x, y, x + s, y + s * rng.uniform(0.3, 1.5)), fill=_colour(rng))
    return img


# Each drawer paints its object and returns the point to rotate it about.
_DRAWERS = {"cats": _draw_cat, "cars": _draw_car, "birds": _draw_bird, "houses": _draw_house}
_MAX_TILT = {"cats": 20.0, "cars": 10.0, "birds": 20.0, "houses": 8.0}  # degrees


def draw_image(kind: str, rng: random.Random, size: int = 64) -> Image.Image:
    """Draw one RGB picture of ``kind`` (one of CLASSES), ``size`` x ``size`` px."""
    if kind not in CLASSES:
        raise ValueError(f"unknown kind {kind!r}; expected one of {CLASSES}")
    big = size * SUPERSAMPLE
    img, bg_mean = _background(rng, big)
    if kind == "noise":
        img = _draw_noise(img, rng, big)
    else:
        # The object goes on a transparent layer to rotate and mirror it without the background.
        layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
        pivot = _DRAWERS[kind](ImageDraw.Draw(layer), rng, big, bg_mean)
        angle = rng.uniform(-_MAX_TILT[kind], _MAX_TILT[kind])
        layer = layer.rotate(angle, Image.Resampling.BICUBIC, center=pivot)
        if rng.random() < 0.5:
            layer = layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        img = Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")
    return img.resize((size, size), Image.Resampling.LANCZOS)


def generate_dataset(
    out_dir: Path,
    n_per_class: int = 120,
    size: int = 64,
    seed: int = 0,
    classes: Sequence[str] = CLASSES,
) -> dict[str, int]:
    """Write ``out_dir/<class>/<class>_<i>.{png,jpg}`` (JPEG quality 90); return counts.

    Per-picture RNGs keyed by (seed, class, index): same seed, same bytes, whatever the n."""
    for kind in classes:
        if kind not in CLASSES:
            raise ValueError(f"unknown class {kind!r}; expected one of {CLASSES}")
        class_dir = Path(out_dir) / kind
        class_dir.mkdir(parents=True, exist_ok=True)
        # Drop our files from an earlier run so what is on disk matches the counts.
        for old in class_dir.glob(f"{kind}_*.*"):
            if old.stem.removeprefix(f"{kind}_").isdigit() and old.suffix in (".png", ".jpg"):
                old.unlink()
        for i in range(n_per_class):
            rng = random.Random(f"{seed}:{kind}:{i}")
            img = draw_image(kind, rng, size)
            ext = "jpg" if rng.random() < JPEG_FRACTION else "png"
            img.save(class_dir / f"{kind}_{i}.{ext}", quality=90)  # PNG ignores quality
    return {kind: n_per_class for kind in classes}


def generate_unlabeled(
    out_dir: Path, n: int, size: int = 64, seed: int = 1
) -> list[tuple[Path, str]]:
    """Write ``out_dir/img_<i>.jpg`` of mixed kinds; return (path, true kind) pairs."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rngs = [random.Random(f"{seed}:unlabeled:{i}") for i in range(n)]
    result = [(out_dir / f"img_{i}.jpg", rng.choice(CLASSES)) for i, rng in enumerate(rngs)]
    for (path, kind), rng in zip(result, rngs, strict=True):
        draw_image(kind, rng, size).save(path, quality=90)
    return result
