"""Pictures the page shows beyond the files themselves: p(cat) of a dropped picture (Try) and
the explain heatmap as a see-through PNG laid over the picture.

The heatmap is `catnet.explaining.explain.explain_images` (one heatmap array per picture, in the
picture's own size): the same map `catnet explain` draws.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps

from catnet.data.pixels import open_picture, reason_for, to_rgb
from catnet.errors import CatnetError
from catnet.explaining.explain import explain_images
from catnet.explaining.heatmaps import data_uri

MAX_PIXELS = 120_000_000  # as TrainConfig.max_image_pixels: bigger uploads are refused
# px, the longest side of a heatmap overlay: the map has a few dozen cells, and a photo's own
# size (64 MP) took 6 s to encode as a 256 MB RGBA PNG for the browser to shrink again
OVERLAY_LONGEST = 1024


def has_explain(model: Any) -> bool:
    """Heatmaps need a model (the page runs without one until the first Teach)."""
    return model is not None


def open_upload(fh: IO[bytes], what: str = "not a picture this app can read") -> Image.Image:
    """The picture upright in 8-bit RGB, as commands see it; CatnetError (shown) if unusable."""
    try:
        with open_picture(fh) as img:
            if img.width * img.height > MAX_PIXELS:
                raise CatnetError(f"picture too large ({img.width}x{img.height} pixels)")
            img.load()
            return to_rgb(ImageOps.exif_transpose(img) or img)
    except CatnetError:
        raise
    except Exception as exc:
        raise CatnetError(f"{what}: {reason_for(exc, MAX_PIXELS)}") from None


def try_bytes(model: Any, data: bytes) -> dict[str, Any]:
    """Try page: {p_cat, label, unfamiliar (null: no open-set check), unfamiliar_score,
    heatmap (data: URL of a PNG, or null)}."""
    img = open_upload(io.BytesIO(data))
    pred = model.predict([img])[0]
    heat = heatmap_png(model, img) if has_explain(model) else None
    return {
        "p_cat": pred.p_cat,
        "label": pred.label,
        "unfamiliar": pred.unfamiliar,
        "unfamiliar_score": pred.unfamiliar_score,
        "heatmap": data_uri(heat) if heat else None,
    }


def heatmap_png_of_file(model: Any, path: Path) -> bytes:
    """The file's heatmap, from the file as predict decodes it (a JPEG at a fraction of its
    size): the map explains the very pixels behind the answer the page shows."""
    return heatmap_png(model, path)


def heatmap_png(model: Any, picture: Image.Image | Path) -> bytes:
    """The model's heatmap for a picture as an RGBA PNG of its shape, at most OVERLAY_LONGEST
    px on its longest side (the page stretches it over the picture): hot parts red to yellow
    and opaque, cold parts transparent."""
    heat = np.asarray(explain_images(model, [picture], longest=OVERLAY_LONGEST)[0], np.float32)
    heat = np.squeeze(heat)
    if heat.ndim != 2:
        raise CatnetError(f"explain returned a heatmap of shape {heat.shape}, expected (H, W)")
    heat = np.nan_to_num(heat - heat.min())
    heat = heat / heat.max() if heat.max() > 0 else heat
    rgba = np.zeros((*heat.shape, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 1] = (255 * np.clip(heat * 2 - 1, 0, 1)).astype(np.uint8)  # yellow at the top
    rgba[..., 3] = (200 * heat).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, "PNG")
    return out.getvalue()
