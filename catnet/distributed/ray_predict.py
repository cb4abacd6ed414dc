"""`catnet predict` on Ray Data: the same rows, with reading, decoding and the network spread
over a Ray cluster's workers.

Two stages of `map_batches`: `decode_batch` (stateless tasks: files or their bytes to
(S, S, 3) uint8 pixels, or the reason there are none) and `Predictor` (a callable class, so
each worker loads the network once and keeps it). Both reuse predict's own functions
(data.decoding.decode_one, inference.prediction.decoded_probabilities and to_predictions), so
the rows are predict's rows. Ray is imported lazily: it is the optional extra catnet[ray].
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catnet.config import PredictConfig
from catnet.data.decoding import Decoded, decode_one
from catnet.distributed.cluster import connected, require_ray
from catnet.errors import CatnetError
from catnet.inference.outputs import Prediction, RowWriter, expand_inputs

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

    from catnet.inference.prediction import CatnetModel

# Paths per Ray dataset in predict_on_ray: the driver holds one part's path strings at a time
# (~100 bytes each), so its memory stays bounded for any number of files; each part costs one
# start of the workers (seconds), nothing next to 100,000 pictures.
PATHS_PER_PART = 100_000
DECODE_BATCH = 8  # files per decode batch (their bytes, with read_binary_files)


def row_schema() -> pa.Schema:
    """The Arrow types of predict's row columns (RowWriter.COLUMNS, in that order); None is
    null: p_cat of an error row, unfamiliar where the open-set check is off."""
    import pyarrow as pa

    types = {
        "path": pa.string(), "label": pa.string(), "p_cat": pa.float64(), "error": pa.string(),
        "model": pa.string(), "threshold": pa.float64(), "unfamiliar": pa.bool_(),
        "unfamiliar_score": pa.float64(),
    }  # fmt: skip
    return pa.schema([(name, types[name]) for name in RowWriter.COLUMNS])


def decode_batch(batch: pa.Table, size: int, max_pixels: int) -> pa.Table:
    """Ray task: a batch of `path` (and, from ray.data.read_binary_files, `bytes`) to `path`,
    `pixels` ((S, S, 3) uint8 as bytes; null if unreadable) and `reason`."""
    import pyarrow as pa

    paths = batch.column("path").to_pylist()
    data = batch.column("bytes").to_pylist() if "bytes" in batch.column_names else None
    out = [
        decode_one(path, size, max_pixels, None if data is None else data[i] or b"")
        for i, path in enumerate(paths)
    ]
    return pa.table(
        {
            "path": pa.array(paths, pa.string()),
            "pixels": pa.array([d.pixels for d in out], pa.binary()),
            "reason": pa.array([d.reason for d in out], pa.string()),
        }
    )


class Predictor:
    """Ray actor: the network, loaded once per worker from the checkpoint's payload (shipped
    through Ray, so workers on other machines need no copy of the file); decoded batches to
    predict's rows."""

    def __init__(
        self,
        payload: dict[str, Any],
        name: str,
        cfg: PredictConfig,
        unsure: tuple[float, float] | None,
        device: str,
    ) -> None:
        from catnet.inference.prediction import CatnetModel

        self.model = CatnetModel(payload, Path(name), device)
        self.cfg, self.unsure = cfg, unsure
        self.threshold = self.model.threshold if cfg.threshold < 0 else cfg.threshold

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        from catnet.inference.prediction import decoded_probabilities, to_predictions

        paths = batch.column("path").to_pylist()
        pixels = batch.column("pixels").to_pylist()
        reasons = batch.column("reason").to_pylist()
        results = [Decoded(p, r) for p, r in zip(pixels, reasons, strict=True)]
        cfg = self.cfg
        probs = decoded_probabilities(self.model, results, cfg.batch_size, cfg.tta, cfg.open_set)
        preds = to_predictions(self.model, paths, results, probs, self.threshold, self.unsure)
        rows = [pred.as_row(self.model.hash, self.threshold) for pred in preds]
        return pa.Table.from_pylist(rows, schema=row_schema())


def predict_dataset(
    checkpoint: str | Path | CatnetModel,
    dataset: ray.data.Dataset,
    cfg: PredictConfig | None = None,
    unsure: tuple[float, float] | None = None,
    num_gpus: float = 0.0,
    concurrency: int | tuple[int, int] | None = None,
) -> ray.data.Dataset:
    """Tag the pictures of a Ray Dataset; returns a lazy Ray Dataset of predict's rows
    (path, label, p_cat, error, model, threshold, unfamiliar, unfamiliar_score).

    `dataset` has a `path` column (files every worker can read), or `path` and `bytes`, as
    `ray.data.read_binary_files(..., include_paths=True)` gives. Unreadable files become error
    rows. cfg: threshold, batch_size (per forward pass), tta, max_image_pixels, open_set as in
    predict. num_gpus: GPUs per model copy (0: CPU workers). concurrency: model copies, a number
    or (min, max) [default: 1 up to one per CPU, or per GPU]. Rows come in any order unless
    `dataset.context.execution_options.preserve_order` is set (predict_on_ray sets it)."""
    ray = require_ray()
    cfg = cfg or PredictConfig()
    model = _as_model(checkpoint)
    columns = dataset.columns(fetch_if_missing=False)
    if columns is not None and "path" not in columns:
        raise CatnetError(f"the dataset needs a 'path' column; it has {', '.join(columns)}")
    # Few files per decode batch: with read_binary_files a batch holds the files' bytes (MBs
    # each), and a batch that needs more than Ray's object store budget lets in waits forever.
    decoded = dataset.map_batches(
        decode_batch,
        batch_format="pyarrow",
        batch_size=DECODE_BATCH,
        fn_kwargs={"size": model.decode_size, "max_pixels": cfg.max_image_pixels},
    )
    return decoded.map_batches(
        Predictor,
        batch_format="pyarrow",
        # On CPUs Ray fuses the two stages (one worker decodes and runs the network; no copy of
        # the pixels in between) and each decode batch goes through the network as it is. A GPU
        # worker is a stage of its own and gathers a full forward pass of pixels.
        batch_size=cfg.batch_size if num_gpus else None,
        fn_constructor_kwargs={
            "payload": model.payload,
            "name": str(model.path),
            "cfg": cfg,
            "unsure": unsure,
            "device": "cuda" if num_gpus else "cpu",
        },
        compute=_actor_pool(ray, concurrency or (1, _workers(num_gpus))),
        num_cpus=None if num_gpus else 1,
        num_gpus=num_gpus or None,
    )


def predict_on_ray(
    checkpoint: str | Path | CatnetModel,
    inputs: Iterable[str],
    cfg: PredictConfig,
    on_row: Callable[[Prediction], None] | None = None,
    skip: set[str] | None = None,
    unsure: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """inference.prediction.predict on the Ray cluster at cfg.ray: the same inputs (files,
    folders, globs), the same rows in the same order, handed to on_row; the same summary."""
    model = _as_model(checkpoint)
    threshold = model.threshold if cfg.threshold < 0 else cfg.threshold
    counts: dict[str, int] = {"cat": 0, "not_cat": 0, "unsure": 0, "error": 0}
    paths = (str(p) for p in expand_inputs(inputs) if not skip or str(p) not in skip)
    with connected(cfg.ray) as ray:
        while part := list(itertools.islice(paths, PATHS_PER_PART)):
            source = ray.data.from_items([{"path": p} for p in part])
            rows = predict_dataset(model, source, cfg, unsure, cfg.ray_gpus)
            rows.context.execution_options.preserve_order = True  # predict's order
            rows.context.enable_progress_bars = False  # the CLI prints its own summary
            for batch in rows.iter_batches(batch_format="pyarrow", batch_size=None):
                for row in batch.to_pylist():
                    pred = Prediction(
                        row["path"], row["label"], row["p_cat"], row["error"],
                        row["unfamiliar"], row["unfamiliar_score"],
                    )  # fmt: skip
                    counts[pred.label] += 1
                    if on_row:
                        on_row(pred)
    return {
        "counts": counts,
        "errors": counts["error"],
        "model": model.hash,
        "threshold": threshold,
        "open_set": bool(cfg.open_set and model.open_set),
    }


def _as_model(checkpoint: str | Path | CatnetModel) -> CatnetModel:
    """The checkpoint loaded (and checked) once on the driver: a bad file is one clear error
    here, not one per worker; its payload is what the workers get."""
    from catnet.inference.prediction import CatnetModel, load_model

    if isinstance(checkpoint, CatnetModel):
        return checkpoint
    return load_model(checkpoint, "cpu")


def _workers(num_gpus: float) -> int:
    """The most model copies the cluster can hold: one per CPU, or per num_gpus GPUs."""
    ray = require_ray()
    if not ray.is_initialized():
        return 1
    resources = ray.cluster_resources()
    if num_gpus:
        return max(1, int(resources.get("GPU", 0) / num_gpus))
    return max(1, int(resources.get("CPU", 1)))


def _actor_pool(ray: Any, copies: int | tuple[int, int]) -> Any:
    """Ray's pool of model copies: a fixed number, or (min, max) that Ray scales between."""
    if isinstance(copies, int):
        return ray.data.ActorPoolStrategy(size=copies)
    return ray.data.ActorPoolStrategy(min_size=copies[0], max_size=copies[1])
