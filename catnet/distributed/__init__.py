"""Beyond one machine: tag pictures on a Ray cluster (the optional extra `catnet[ray]`).

`predict_dataset(checkpoint, ray_dataset)` returns a Ray Dataset of `catnet predict`'s rows;
`predict_on_ray` is `catnet predict --ray`. Importing this package imports neither Ray nor torch:
both load when a function runs, and a missing Ray is a CatnetError with the install line.
"""

from __future__ import annotations

from typing import Any

__all__ = ["predict_dataset", "predict_on_ray"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from catnet.distributed import ray_predict

        return getattr(ray_predict, name)
    raise AttributeError(f"module 'catnet.distributed' has no attribute {name!r}")
