"""Pictures to pixels: any file Pillow can read becomes a (size, size, 3) uint8 RGB square, or a
DecodeError with a short reason. No torch here: decoding runs in worker processes that should
start fast."""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps

from catnet.data.folders import missing_reason
from catnet.errors import DecodeError


def decode_square(path: str | Path, size: int, max_pixels: int = 120_000_000) -> np.ndarray:
    """Read any supported picture by content and return (size, size, 3) uint8 RGB.

    The short side is resized to `size` and the centre square kept; training, evaluation and
    prediction all go through this one function so they see pictures the same way.
    Raises DecodeError with a short reason for anything that is not a usable picture.
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise DecodeError(missing_reason(path))
        if path.stat().st_size == 0:
            raise DecodeError("empty file (0 bytes)")
        with path.open("rb") as fh:
            return _decode_open(fh, str(path), size, max_pixels)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(reason_for(exc, max_pixels)) from None


def decode_square_bytes(data: bytes, size: int, max_pixels: int = 120_000_000) -> np.ndarray:
    """decode_square for a file's bytes already read (catnet.distributed: Ray reads the files):
    the same (size, size, 3) uint8 RGB square, or the same DecodeError reasons."""
    try:
        if not data:
            raise DecodeError("empty file (0 bytes)")
        return _decode_open(io.BytesIO(data), "", size, max_pixels)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(reason_for(exc, max_pixels)) from None


def _decode_open(fh: IO[bytes], name: str, size: int, max_pixels: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's chatter about odd files: we judge by result
        with open_picture(fh, name) as img:
            return to_square_rgb(img, size, max_pixels)


@contextlib.contextmanager
def open_picture(fh: IO[bytes], name: str = "") -> Iterator[Image.Image]:
    """Image.open, judged by the caller's own pixel limit instead of Pillow's process-wide
    Image.MAX_IMAGE_PIXELS (which catnet never changes: it belongs to the caller's process).

    Only the header is read here: callers compare img.size with their max_pixels before any
    pixel is decoded (to_square_rgb does). Pillow's warning above its limit is silenced, and
    where Pillow refuses outright (over twice its limit) the header is read again without its
    check, so that the caller's limit decides and its message can give the sizes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(fh)
        except Image.DecompressionBombError:
            img = _open_header(fh, name)
    with img:
        yield img


def _open_header(fh: IO[bytes], name: str) -> Image.Image:
    """What Image.open does (each registered format's accept() on the first 16 bytes, then its
    plugin reads the header), minus the pixel-limit check. Nothing is decoded yet."""
    Image.init()
    fh.seek(0)
    prefix = fh.read(16)
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        if accept is None or accept(prefix) is True:
            fh.seek(0)
            with contextlib.suppress(SyntaxError, IndexError, TypeError, struct.error):
                return factory(fh, name)
    raise Image.UnidentifiedImageError("not a picture")


def reason_for(exc: Exception, max_pixels: int) -> str:
    """A short, human reason for why Pillow could not read a file."""
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not a picture (unknown format)"
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return f"too many pixels (limit {max_pixels:,})"
    if isinstance(exc, OSError | SyntaxError | ValueError | EOFError):
        reason = str(exc) or type(exc).__name__
        return f"unreadable: {'truncated file' if 'truncated' in reason else reason}"
    return f"unreadable: {type(exc).__name__}: {exc}"


def to_square_rgb(img: Image.Image, size: int, max_pixels: int) -> np.ndarray:
    width, height = img.size
    if width * height > max_pixels:
        raise DecodeError(f"too many pixels ({width}x{height}, limit {max_pixels:,})")
    if width < 1 or height < 1:
        raise DecodeError("zero-sized picture")
    img.seek(0)  # animated GIF/WebP: the first frame
    if img.format == "JPEG":
        # Draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale: far less work for small sizes.
        # Asking for (size, size) keeps both sides >= size, so the short side never goes below.
        img.draft("RGB", (size, size))
    img = ImageOps.exif_transpose(img) or img
    rgb = to_rgb(img)
    side = min(rgb.size)
    left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
    # reducing_gap: shrink by whole factors first (fast), then resample the rest properly.
    fitted = rgb.resize(
        (size, size),
        Image.Resampling.BILINEAR,
        box=(left, top, left + side, top + side),
        reducing_gap=3.0,
    )
    return np.asarray(fitted, dtype=np.uint8).reshape(size, size, 3)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB. Transparency is composited on white, 16-bit is rescaled."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or pixels.max(initial=0) > 255 else 255.0
        if img.mode == "F" and pixels.max(initial=0) <= 1.0:
            top = 1.0
        gray = np.clip(pixels / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
