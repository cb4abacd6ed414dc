"""Property: whatever bytes a file holds, the loader returns pixels or the documented skip
(DecodeError with a reason), never another exception and never a hang."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from catnet.data.pixels import decode_square
from catnet.errors import DecodeError

pytestmark = pytest.mark.slow  # 300 generated files through the decoder

MAGIC = [
    b"", b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"RIFF\x00\x00\x00\x00WEBP", b"II*\x00"
]  # fmt: skip
SUFFIXES = [".jpg", ".png", ".gif", ".bmp", ".webp", ".tif", ".jpeg"]


def _valid_image_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 9), (200, 30, 60)).save(buf, fmt)
    return buf.getvalue()


VALID = [_valid_image_bytes(f) for f in ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")]


def check(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz{suffix}"
        path.write_bytes(data)
        try:
            pixels = decode_square(path, 16, max_pixels=4_000_000)
        except DecodeError as exc:
            assert exc.reason  # the documented skip always says why
            return
        assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    magic=st.sampled_from(MAGIC), body=st.binary(max_size=2048), suffix=st.sampled_from(SUFFIXES)
)
def test_random_bytes_decode_or_skip(magic: bytes, body: bytes, suffix: str) -> None:
    check(magic + body, suffix)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    source=st.sampled_from(VALID),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=8),
    suffix=st.sampled_from(SUFFIXES),
)
def test_damaged_real_pictures_decode_or_skip(
    source: bytes, cut: float, flips: list[tuple[float, int]], suffix: str
) -> None:
    data = bytearray(source[: max(1, int(len(source) * cut))])
    for where, value in flips:
        data[int(where * (len(data) - 1))] = value
    check(bytes(data), suffix)
