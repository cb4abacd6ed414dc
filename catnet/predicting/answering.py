"""A trained model as predict sees it, torch-free.

`ModelCard`: what answering needs from a checkpoint besides the network (plain numbers, kept
as JSON in the engine's cache). `AnsweringModel`: the one way of turning pictures into answers,
whatever runs the network: `logits_and_scores` is the forward pass, the rest (batching, the
decision, the Python `predict`) is shared. Two forward passes exist: `EngineModel` (OpenVINO,
from the engine's cache, never imports torch) and `network_model.CatnetModel` (PyTorch, which
hands its no-gradient passes to an EngineModel when it has one).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from catnet.data.pixels import decode_square, to_square_rgb
from catnet.engine.runtime import ENGINE_BATCH, Compiled, batched
from catnet.engine.store import EngineStore
from catnet.errors import DecodeError
from catnet.predicting.outputs import Prediction
from catnet.scoring.decision import Decision, probabilities


@dataclass(frozen=True)
class ModelCard:
    hash: str  # short model id carried by every output row (the weights' SHA-256, 12 hex)
    image_size: int  # px the network sees
    decode_size: int  # px pictures are decoded to (then resized to image_size in the graph)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    threshold: float  # p(cat) at or above it: cat
    temperature: float  # p(cat) = sigmoid(logit / temperature)
    tta: bool  # flip-averaging, as validated
    unfamiliar_above: float | None  # the open-set threshold; None: the model has no check
    positive: str  # the cat class's folder name in training (evaluate looks for it)
    open_set_on: bool = True  # the check on when nobody says (scoring.openset.Verdict)

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> ModelCard:
        pre = payload["preprocessing"]
        check = payload.get("open_set")
        return cls(
            str(payload["weights_sha256"])[:12], int(pre["image_size"]), int(pre["decode_size"]),
            tuple(pre["mean"]), tuple(pre["std"]), float(payload["threshold"]),
            float(payload.get("temperature", 1.0)), bool(payload.get("tta", False)),
            float(check["threshold"]) if isinstance(check, dict) and check.get("method") == "knn"
            else None, str(payload["classes"]["positive"]),
            bool(check.get("on", True)) if isinstance(check, dict) else True,
        )  # fmt: skip

    @classmethod
    def from_json(cls, card: dict[str, Any]) -> ModelCard:
        card = {**card, "mean": tuple(card["mean"]), "std": tuple(card["std"])}
        return cls(**card)

    def to_json(self) -> dict[str, Any]:
        """As card.json reads back (lists, not tuples), so that an unchanged card compares
        equal and is not written again on every load."""
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}


class AnsweringModel:
    """A checkpoint's card and a forward pass (subclasses): pictures in, answers out."""

    def __init__(self, card: ModelCard, path: Path) -> None:
        self.card, self.path = card, path
        self.hash = card.hash
        self.image_size, self.decode_size = card.image_size, card.decode_size
        self.mean, self.std = card.mean, card.std
        self.threshold, self.temperature, self.tta = card.threshold, card.temperature, card.tta
        self.engine_name = "torch"  # what runs the forward pass: "openvino" or "torch"

    def logits_and_scores(
        self, batch_u8: Any, tta: bool | None = None, open_set: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(B, S, S, 3) uint8 pictures -> raw logits (B,) and open-set scores (B,) (None: the
        check is off or the model has none), from one forward pass; tta None = as trained."""
        raise NotImplementedError

    def decision(
        self, threshold: float = -1.0, unsure: Any = None, open_set: bool | None = None
    ) -> Decision:
        """How this model answers (scoring.decision), under a command's settings: threshold
        < 0 = the checkpoint's, an unsure band (low, high) or none, open_set False: no check,
        None: the checkpoint's (on where it paid on validation: scoring.openset.Verdict)."""
        own = Decision(self.threshold, self.temperature, None, self.card.unfamiliar_above)
        return own.with_settings(threshold, unsure, self.card.open_set_on if open_set is None
                                 else open_set)  # fmt: skip

    def probabilities(self, batch_u8: Any, tta: bool | None = None) -> np.ndarray:
        """(B, S, S, 3) uint8 pixels -> (B,) calibrated p(cat); tta None = as trained."""
        return probabilities(self.logits_and_scores(batch_u8, tta, False)[0], self.temperature)

    def logits_and_scores_of(
        self,
        pixels: np.ndarray,
        slots: np.ndarray,
        batch_size: int,
        tta: bool | None = None,
        open_set: bool = True,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """logits_and_scores for pixels[slots] (n,), batch by batch (pixels may be a
        memory-mapped cache: only one batch is read at a time)."""
        logits, scores = [np.zeros(0, np.float32)], []
        for start in range(0, len(slots), batch_size):
            batch = np.ascontiguousarray(pixels[slots[start : start + batch_size]])
            lg, sc = self.logits_and_scores(batch, tta, open_set)
            logits.append(lg)
            scores += [] if sc is None else [sc]
        return np.concatenate(logits), np.concatenate(scores) if scores else None

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
                    pixels.append(decode_square(image, self.decode_size))
                where.append(len(preds))
                preds.append(Prediction(name, "", None))
            except DecodeError as exc:
                preds.append(Prediction(name, "error", None, exc.reason))
        if pixels:
            decision = self.decision(open_set=open_set)
            decided = decision.decide(
                *self.logits_and_scores(np.stack(pixels), tta, decision.checks)
            )
            for j, answer in zip(where, decided.answers(), strict=True):
                preds[j] = Prediction(preds[j].path, answer.label, answer.p_cat, "",
                                      answer.unfamiliar, answer.score)  # fmt: skip
        return preds


def answer_graph(tta: bool) -> str:
    """The engine store's name for the answer graph with or without flip TTA."""
    return "answer-tta" if tta else "answer"


class EngineModel(AnsweringModel):
    """The forward pass on OpenVINO, from the graphs in the checkpoint's engine cache (built by
    network_model.attach_engine). Graphs compile on first use (from OpenVINO's blob cache when
    this CPU compiled them before)."""

    def __init__(self, card: ModelCard, path: Path, store: EngineStore) -> None:
        super().__init__(card, path)
        self.store = store
        self.engine_name = "openvino"
        self._compiled: dict[str, Compiled] = {}

    def _graph(self, name: str, exact: bool = False) -> Compiled:
        if name not in self._compiled:
            self._compiled[name] = Compiled(self.store.graph(name), self.store.blobs, exact)
        return self._compiled[name]

    def compile(self, tta: bool | None = None) -> None:
        """Compile the graphs a run with this TTA uses, now: a graph this OpenVINO cannot run
        raises EngineUnavailable here, where callers can still fall back to PyTorch, not at
        the first batch."""
        self._graph(answer_graph(self.tta if tta is None else tta))
        if self.card.unfamiliar_above is not None:
            self._graph("score", exact=True)

    def logits_and_scores(
        self, batch_u8: Any, tta: bool | None = None, open_set: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        tta = self.tta if tta is None else tta
        batch = np.ascontiguousarray(np.asarray(batch_u8, dtype=np.uint8))
        if not len(batch):
            return np.zeros(0, np.float32), None
        logits, features = batched(self._graph(answer_graph(tta)), batch, ENGINE_BATCH)
        if not open_set or self.card.unfamiliar_above is None:
            return logits.astype(np.float32), None
        (scores,) = self._graph("score", exact=True)(features)
        return logits.astype(np.float32), scores.astype(np.float32)
