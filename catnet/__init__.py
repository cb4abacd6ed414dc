"""catnet: teach a neural network to tell cat pictures from everything else.

The Python API mirrors the CLI: `train`, `evaluate`, `predict`, `load_model` and
`explain_images`. They are imported lazily so that `catnet --help` starts without loading torch.
"""

from __future__ import annotations

from typing import Any

from catnet.runtime import cpuload as _cpuload  # noqa: F401  (starts the CPU-load sample, see there)

__version__ = "0.1.0"
__all__ = ["__version__", "evaluate", "explain_images", "load_model", "predict", "train"]

_LAZY = {
    "train": "catnet.training.loop",
    "evaluate": "catnet.evaluating.evaluation",
    "predict": "catnet.predicting.prediction",
    "load_model": "catnet.predicting.prediction",
    "explain_images": "catnet.explaining.explain",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'catnet' has no attribute {name!r}")
