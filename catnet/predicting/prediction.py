"""Use a trained checkpoint: `load_model` for Python, `predict` for files and folders.

predict streams: a window of files is decoded by a pool of worker processes, then the model
runs on it, in turn; rows are handed to a callback as soon as they exist, so memory stays
bounded for any number of files.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from catnet.config import PredictConfig
from catnet.data.decoding import Decoded
from catnet.data.pixels import to_square_rgb
from catnet.errors import DecodeError
from catnet.models.checkpoint import load_checkpoint
from catnet.models.forward import logits_for, pixel_batches
from catnet.models.networks import fuse_for_inference, network_from
from catnet.predicting.outputs import Prediction
from catnet.predicting.readahead import DecodeAhead
from catnet.runtime.compute import Compute, select_compute, setup_threads
from catnet.scoring.decision import Answer, Decision, probabilities
from catnet.scoring.openset import KEY as OPEN_SET_KEY
from catnet.scoring.openset import OpenSetCheck, capture_features, mean_features


class CatnetModel:
    """A trained network plus everything needed to feed it pictures the way it was trained."""

    def __init__(self, payload: dict[str, Any], path: Path, device: str = "auto") -> None:
        self.path = path
        self.payload = payload
        self.compute: Compute = select_compute(device, "auto")
        self.module: nn.Module = network_from(payload)
        self.module.to(self.compute.device, memory_format=torch.channels_last).eval()
        # The same network with batch norm folded into the convs: what predict and evaluate run.
        self.inference_module = fuse_for_inference(copy.deepcopy(self.module))
        pre = payload["preprocessing"]
        self.image_size: int = int(pre["image_size"])
        self.decode_size: int = int(pre["decode_size"])
        self.mean, self.std = tuple(pre["mean"]), tuple(pre["std"])
        self.threshold: float = float(payload["threshold"])
        self.temperature: float = float(payload.get("temperature", 1.0))
        self.tta: bool = bool(payload.get("tta", False))  # flip-averaging, as validated
        self.hash = payload["weights_sha256"][:12]  # short model id carried by every output row
        # None for checkpoints written before the open-set check existed: the check is off.
        self.open_set = OpenSetCheck.from_payload(payload.get(OPEN_SET_KEY), self.compute.device)

    def decision(
        self, threshold: float = -1.0, unsure: Any = None, open_set: bool | None = None
    ) -> Decision:
        """How this model answers (scoring.decision), under a command's settings: threshold
        < 0 = the checkpoint's, an unsure band (low, high) or none, open_set False: no check,
        None: the checkpoint's (on where it paid on validation: scoring.openset.Verdict)."""
        check = self.open_set
        own = Decision(self.threshold, self.temperature, None, check.threshold if check else None)
        return own.with_settings(threshold, unsure, check is not None and (
            check.on if open_set is None else open_set))  # fmt: skip

    def probabilities(self, batch_u8: torch.Tensor, tta: bool | None = None) -> torch.Tensor:
        """(B, S, S, 3) uint8 pixels -> (B,) calibrated p(cat); tta None = as trained."""
        return probabilities(self.logits_and_scores(batch_u8, tta, False)[0], self.temperature)

    def logits_and_scores(
        self, batch_u8: torch.Tensor, tta: bool | None = None, open_set: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, S, S, 3) uint8 -> raw logits (B,) and open-set scores (B,), the distance to the
        k-th nearest training picture, from the same forward pass (None: check off/absent)."""
        tta = self.tta if tta is None else tta
        check = self.open_set if open_set else None
        with capture_features(self.inference_module) if check else contextlib.nullcontext() as seen:
            logits = logits_for(
                self.inference_module, batch_u8, self.image_size, self.compute, tta,
                self.mean, self.std,
            )  # fmt: skip
        if check is None or seen is None:
            return logits, None
        return logits, check.scores(mean_features(seen, len(batch_u8))).cpu()

    def logits_and_scores_of(
        self,
        pixels: np.ndarray,
        slots: np.ndarray,
        batch_size: int,
        tta: bool | None = None,
        open_set: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """logits_and_scores for pixels[slots] (n,), batch by batch (pixels may be a cache)."""
        logits, scores = [torch.zeros(0)], []
        for batch in pixel_batches(pixels, slots, batch_size):
            lg, sc = self.logits_and_scores(batch, tta, open_set)
            logits.append(lg)
            scores += [] if sc is None else [sc]
        return torch.cat(logits), torch.cat(scores) if scores else None

    def predict(
        self,
        images: Iterable[Image.Image | str | Path],
        tta: bool | None = None,
        open_set: bool | None = None,
    ) -> list[Prediction]:
        """Predict PIL images or paths held in memory (for Python users; the CLI streams).
        open_set=False turns the check off (every row's unfamiliar is then None), None: as
        the checkpoint says."""
        preds: list[Prediction] = []
        pixels, where = [], []
        for i, image in enumerate(images):
            name = str(image) if not isinstance(image, Image.Image) else f"<image {i}>"
            try:
                if isinstance(image, Image.Image):
                    pixels.append(to_square_rgb(image, self.decode_size, 10**9))
                else:
                    from catnet.data.pixels import decode_square

                    pixels.append(decode_square(image, self.decode_size))
                where.append(len(preds))
                preds.append(Prediction(name, "", None))
            except DecodeError as exc:
                preds.append(Prediction(name, "error", None, exc.reason))
        if pixels:
            batch = torch.from_numpy(np.stack(pixels))
            decision = self.decision(open_set=open_set)
            decided = decision.decide(*self.logits_and_scores(batch, tta, decision.checks))
            for j, answer in zip(where, decided.answers(), strict=True):
                preds[j] = Prediction(preds[j].path, answer.label, answer.p_cat, "",
                                      answer.unfamiliar, answer.score)  # fmt: skip
        return preds


def load_model(path: str | Path, device: str = "auto") -> CatnetModel:
    """Load a checkpoint safely (no code can run) and return a ready-to-use model."""
    path = Path(path)
    return CatnetModel(load_checkpoint(path), path, device)


def predict(
    checkpoint: str | Path | CatnetModel,
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
    model = checkpoint if isinstance(checkpoint, CatnetModel) else load_model(checkpoint)
    setup_threads()
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


def run_summary(model: CatnetModel, decision: Decision, counts: dict[str, int]) -> dict[str, Any]:
    """What a predict run returns, however it ran (here, or on Ray)."""
    return {
        "counts": counts,
        "errors": counts["error"],
        "model": model.hash,
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
    model: CatnetModel,
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
