"""`catnet predict` on Ray Data: the same rows, with reading, decoding and the network spread
over a Ray cluster's workers.

Two stages of `map_batches`: `decode_batch` (stateless tasks: files or their bytes to
(S, S, 3) uint8 pixels, or the reason there are none) and `Predictor` (a callable class, so
each worker loads the network once and keeps it). Both reuse predict's own functions
(data.decoding.decode_one, predicting.prediction.decoded_answers and to_predictions, the
model's one decision), so the rows are predict's rows. Ray is imported lazily: it is the
optional extra catnet[ray].
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catnet.config import PredictConfig
from catnet.data.decoding import Decoded, decode_one
from catnet.distributed.cluster import connected, require_ray
from catnet.errors import CatnetError
from catnet.predicting.outputs import Prediction, RowWriter, expand_inputs

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

    from catnet.predicting.answering import AnsweringModel
    from catnet.predicting.network_model import CatnetModel

# Paths per Ray dataset in predict_on_ray: the driver holds one part's path strings at a time
# (~100 bytes each), so its memory stays bounded for any number of files; each part costs one
# start of the workers (seconds), nothing next to 100,000 pictures.
PATHS_PER_PART = 100_000
BYTES_BATCH = 8  # files per decode batch when the rows carry the files' bytes


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
    # `file`: the path as bytes, for names that are not UTF-8 (Arrow's strings must be).
    files = batch.column("file").to_pylist() if "file" in batch.column_names else None
    out = [
        decode_one(
            path if files is None else os.fsdecode(files[i]),
            size,
            max_pixels,
            None if data is None else data[i] or b"",
        )
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
    """Ray actor: the model, loaded once per worker: from this machine's engine cache when the
    checkpoint's graphs are there (as a warm predict: no torch, no payload fetched; the
    driver's machine always has them), else from the checkpoint's payload (shipped through
    Ray, so workers on other machines need no copy of the file); decoded batches to predict's
    rows."""

    def __init__(
        self,
        payload: list[Any],
        name: str,
        cfg: PredictConfig,
        unsure: tuple[float, float] | None,
        device: str,
        engine_key: str = "",
    ) -> None:
        from catnet.engine.runtime import EngineUnavailable

        engine = bool(engine_key) and cfg.engine != "torch" and device == "cpu"
        model: AnsweringModel | None = None
        if engine:
            from catnet.predicting.prediction import cached_engine_model

            try:
                model = cached_engine_model(Path(name), cfg.tta, engine_key)
            except EngineUnavailable:  # the driver said so already if it could not either
                if cfg.engine == "openvino":
                    raise
        if model is None:
            from catnet.predicting.network_model import CatnetModel, attach_engine

            # [ObjectRef]: the payload is in Ray's object store once, fetched by each worker.
            loaded = CatnetModel(require_ray().get(payload[0]), Path(name), device)
            if engine:
                try:  # each machine builds its graphs once, in its own cache
                    attach_engine(loaded, cfg.tta, engine_key)
                except EngineUnavailable:
                    if cfg.engine == "openvino":
                        raise
            model = loaded
        self.model: AnsweringModel = model
        self.cfg = cfg
        self.decision = self.model.decision(cfg.threshold, unsure, cfg.open_set)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        from catnet.predicting.prediction import decoded_answers, to_predictions

        paths = batch.column("path").to_pylist()
        pixels = batch.column("pixels").to_pylist()
        reasons = batch.column("reason").to_pylist()
        results = [Decoded(p, r) for p, r in zip(pixels, reasons, strict=True)]
        answers = decoded_answers(self.model, self.decision, results, self.cfg.batch_size,
                                  self.cfg.tta)  # fmt: skip
        preds = to_predictions(paths, results, answers)
        rows = [pred.as_row(self.model.hash, self.decision.threshold) for pred in preds]
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
    `ray.data.read_binary_files(..., include_paths=True)` gives (or `path` to show and `file`,
    the path as bytes, to read). Unreadable files become error rows. cfg: threshold,
    batch_size (per forward pass), tta, max_image_pixels, open_set as in predict. num_gpus:
    GPUs per model copy (0: CPU workers). concurrency: model copies, a number or (min, max)
    [default: 1 up to one per CPU, or per GPU]. Rows come in Ray's order unless the returned
    dataset's `context.execution_options.preserve_order` is set (predict_on_ray sets it)."""
    ray = require_ray()
    cfg = cfg or PredictConfig()
    model = _as_model(checkpoint, cfg.engine)
    columns = dataset.columns(fetch_if_missing=False)
    if columns is not None and "path" not in columns:
        raise CatnetError(f"the dataset needs a 'path' column; it has {', '.join(columns)}")
    # Few files per decode batch where the rows hold the files' bytes (read_binary_files; MBs
    # each): a batch that needs more than Ray's object store budget lets in waits forever.
    # Paths alone: a forward pass's worth.
    paths_only = columns is not None and "bytes" not in columns
    decoded = dataset.map_batches(
        decode_batch,
        batch_format="pyarrow",
        batch_size=cfg.batch_size if paths_only else BYTES_BATCH,
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
            "payload": [ray.put(model.payload)],  # in a list: Ray hands the ref over as is
            "name": str(model.path),
            "cfg": cfg,
            "unsure": unsure,
            "device": "cuda" if num_gpus else "cpu",
            # the engine cache's key for this checkpoint (its bytes' digest): workers build
            # their graphs from the payload under the driver's key
            "engine_key": model.engine.store.dir.name if model.engine is not None else "",
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
    """predicting.prediction.predict on the Ray cluster at cfg.ray: the same inputs (files,
    folders, globs), the same rows in the same order, handed to on_row; the same summary."""
    from catnet.predicting.prediction import run_summary

    model = _as_model(checkpoint, cfg.engine)
    counts: dict[str, int] = {"cat": 0, "not_cat": 0, "unsure": 0, "error": 0}
    paths = (str(p) for p in expand_inputs(inputs) if not skip or str(p) not in skip)
    with connected(cfg.ray) as ray:
        while part := list(itertools.islice(paths, PATHS_PER_PART)):
            items = [{"path": _text(p), "file": os.fsencode(p)} for p in part]
            source = ray.data.from_items(items)
            # A fixed pool, every CPU (or GPU): no read tasks need a CPU of their own here.
            copies = _workers(cfg.ray_gpus)
            rows = predict_dataset(model, source, cfg, unsure, cfg.ray_gpus, copies)
            rows.context.execution_options.preserve_order = True  # predict's order
            rows.context.enable_progress_bars = False  # the CLI prints its own summary
            given = iter(part)  # in order: the k-th row is the k-th path, byte-exact
            for batch in rows.iter_batches(batch_format="pyarrow", batch_size=None):
                for row in batch.to_pylist():
                    path = next(given)
                    if row["path"] != _text(path):  # Ray lost the order: never write wrong rows
                        raise RuntimeError(f"Ray returned {row['path']!r} for {path!r}")
                    pred = Prediction(
                        path, row["label"], row["p_cat"], row["error"],
                        row["unfamiliar"], row["unfamiliar_score"],
                    )  # fmt: skip
                    counts[pred.label] += 1
                    if on_row:
                        on_row(pred)
    return run_summary(model, model.decision(cfg.threshold, unsure, cfg.open_set), counts)


def _text(path: str) -> str:
    """A path as valid UTF-8 for Arrow: bytes of a non-UTF-8 name as backslash escapes."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _as_model(checkpoint: str | Path | CatnetModel, engine: str) -> CatnetModel:
    """The checkpoint loaded (and checked) once on the driver: a bad file is one clear error
    here, not one per worker; its payload is what the workers get."""
    from catnet.predicting.network_model import CatnetModel
    from catnet.predicting.prediction import load_model

    if isinstance(checkpoint, CatnetModel):
        return checkpoint
    return load_model(checkpoint, "cpu", engine)


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
