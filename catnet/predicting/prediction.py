"""Use a trained checkpoint: `load_model` for Python, `predict` for files and folders.

predict streams: a window of files is decoded by a pool of worker processes, then the model
runs on it, in turn; rows are handed to a callback as soon as they exist, so memory stays
bounded for any number of files.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from catnet.config import PredictConfig
from catnet.data.decoding import Decoded
from catnet.engine.runtime import EngineUnavailable, check_engine_name
from catnet.engine.store import EngineStore
from catnet.errors import CatnetError
from catnet.predicting.answering import AnsweringModel, EngineModel, ModelCard, answer_graph
from catnet.predicting.outputs import Prediction
from catnet.predicting.readahead import DecodeAhead
from catnet.scoring.decision import Answer, Decision

if TYPE_CHECKING:
    from catnet.predicting.network_model import CatnetModel


def load_model(
    path: str | Path,
    device: str = "auto",
    engine: str = "auto",
    on_message: Callable[[str], None] | None = None,
) -> CatnetModel:
    """Load a checkpoint safely (no code can run) and return a ready-to-use model. engine:
    "auto" runs the no-gradient forward passes on OpenVINO where it can (saying why not once,
    through on_message, where it cannot), "openvino" insists, "torch" never uses it."""
    from catnet.models.checkpoint import load_checkpoint
    from catnet.predicting.network_model import CatnetModel, attach_engine
    from catnet.runtime.compute import setup_threads

    check_engine_name(engine)
    path = Path(path)
    setup_threads()
    model = CatnetModel(load_checkpoint(path), path, device)
    if engine != "torch" and (engine == "openvino" or model.compute.device.type == "cpu"):
        try:
            attach_engine(model, on_message=on_message)
        except EngineUnavailable as exc:
            _fallback(engine, exc, on_message)
    return model


def answering_model(
    path: str | Path,
    device: str = "auto",
    engine: str = "auto",
    tta: bool | None = None,
    on_message: Callable[[str], None] | None = None,
) -> AnsweringModel:
    """The fastest model that answers for a checkpoint: with the engine's graphs already
    cached, an EngineModel straight from the cache (no torch, no checkpoint load: a
    one-picture predict in well under a second); else load_model."""
    check_engine_name(engine)
    path = Path(path)
    if engine != "torch" and device in ("auto", "cpu") and path.is_file():
        try:
            model = cached_engine_model(path, tta)
            if model is not None:
                return model
        except EngineUnavailable as exc:
            _fallback(engine, exc, on_message)
            return load_model(path, device, "torch", on_message)
    return load_model(path, device, engine, on_message)


def cached_engine_model(path: Path, tta: bool | None, key: str = "") -> EngineModel | None:
    """An EngineModel from the engine cache, None when the cache lacks a graph this run
    needs (load_model builds it). key: the cache folder's name (default: from the checkpoint
    file's bytes; a Ray worker gets the driver's)."""
    store = EngineStore(key) if key else EngineStore.of_checkpoint(path)
    card = store.card()
    if card is None:
        return None
    try:
        model = EngineModel(ModelCard.from_json(card), path, store)
    except (TypeError, KeyError, ValueError):  # a card from another catnet version: rebuild
        return None
    tta = model.tta if tta is None else tta
    wanted = [answer_graph(tta)] + (["score"] if model.card.unfamiliar_above is not None else [])
    if not all(store.has(name) for name in wanted):
        return None
    model.compile(tta)  # as attach_engine does: where the callers can fall back to PyTorch
    return model


_SAID: set[str] = set()


def _fallback(engine: str, exc: EngineUnavailable, on_message: Callable[[str], None] | None
              ) -> None:  # fmt: skip
    """engine "openvino": a CatnetError; "auto": say why once per process, then PyTorch."""
    if engine == "openvino":
        raise CatnetError(f"cannot use the OpenVINO engine: {exc}",
                          hint="use --engine torch (or auto, which falls back by itself)")  # fmt: skip
    if str(exc) not in _SAID:
        _SAID.add(str(exc))
        (on_message or warnings.warn)(f"running PyTorch instead of the inference engine: {exc}")


def predict(
    checkpoint: str | Path | AnsweringModel,
    inputs: Iterable[str],
    cfg: PredictConfig | None = None,
    on_row: Callable[[Prediction], None] | None = None,
    skip: set[str] | None = None,
    unsure: tuple[float, float] | None = None,
    reader: DecodeAhead | None = None,
) -> dict[str, Any]:
    """Tag every picture in inputs; each result goes to on_row as soon as it exists.
    `reader`: decoding already started (readahead.start_early), else it starts here.
    Returns a summary: counts per label, number of errors, model hash."""
    cfg = cfg or PredictConfig()
    model = (
        checkpoint
        if isinstance(checkpoint, AnsweringModel)
        else answering_model(checkpoint, "auto", cfg.engine, cfg.tta)
    )
    decision = model.decision(cfg.threshold, unsure, cfg.open_set)
    counts: dict[str, int] = {"cat": 0, "not_cat": 0, "unsure": 0, "error": 0}
    reader = reader or DecodeAhead(inputs, model.decode_size, cfg, skip)
    reader.resize(model.decode_size)
    # Decode a window of files on every core, then run the network on it with every core, in
    # turn: on a small machine the two stages overlapping would only fight for the same cores
    # (torch's threads stall whenever a decoder takes their core). Only the light part, turning
    # results into rows, overlaps with decoding the next window.
    with reader:
        while True:
            chunk, results = reader.take()
            if not chunk:
                break
            answers = decoded_answers(model, decision, results, cfg.batch_size, cfg.tta)
            reader.start_next()
            for pred in to_predictions(chunk, results, answers):
                counts[pred.label] += 1
                if on_row:
                    on_row(pred)
    return run_summary(model, decision, counts)


def run_summary(
    model: AnsweringModel, decision: Decision, counts: dict[str, int]
) -> dict[str, Any]:
    """What a predict run returns, however it ran (here, or on Ray)."""
    return {
        "counts": counts,
        "errors": counts["error"],
        "model": model.hash,
        "engine": model.engine_name,
        "threshold": decision.threshold,
        "open_set": decision.checks,
    }


def to_predictions(
    paths: Iterable[str | Path], results: Iterable[Decoded], answers: Iterable[Answer | None]
) -> Iterator[Prediction]:
    """One Prediction per decoded file: its answer, or an error row with the decoder's reason
    (no answer). Shared by predict and catnet.distributed, so both write the same rows."""
    for path, result, answer in zip(paths, results, answers, strict=True):
        if answer is None:
            yield Prediction(str(path), "error", None, result.reason)
        else:
            yield Prediction(str(path), answer.label, answer.p_cat, "", answer.unfamiliar,
                             answer.score)  # fmt: skip


def decoded_answers(
    model: AnsweringModel,
    decision: Decision,
    results: list[Decoded],
    batch_size: int,
    tta: bool | None,
) -> list[Answer | None]:
    """The decision's answer for each decoded result; None where decoding failed."""
    s = model.decode_size
    good = [i for i, r in enumerate(results) if r.pixels is not None]
    answers: list[Answer | None] = [None] * len(results)
    if not good:
        return answers
    # (n_good, s, s, 3) uint8: one copy out of the decoders' byte strings
    pixels = np.stack([np.frombuffer(results[i].pixels or b"", dtype=np.uint8) for i in good])
    pixels = pixels.reshape(len(good), s, s, 3)
    logits, scores = model.logits_and_scores_of(
        pixels, np.arange(len(good)), batch_size, tta, decision.checks
    )
    for i, answer in zip(good, decision.decide(logits, scores).answers(), strict=True):
        answers[i] = answer
    return answers
