"""The one decision per picture: from a network's logit and its open-set score to the answer
(cat, not_cat or unsure) that predict, explain, evaluate, the labelling page, Ray and the
exported model's metadata all give.

    p(cat)     = sigmoid(logit / temperature)
    unfamiliar = open-set score > its threshold (None: the check is off or the checkpoint has
                 none; a picture the user tagged scores as familiar: scoring.openset)
    label      = unsure   if an unsure band (low, high) is given and the picture is unfamiliar
                          or low <= p(cat) <= high
                 not_cat  if unfamiliar
                 cat      if p(cat) >= threshold, else not_cat
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

RULE = (
    "p_cat = sigmoid(logit / temperature); unfamiliar if unfamiliar_score > unfamiliar_above; "
    "label: unsure if an unsure band [low, high] is used and the picture is unfamiliar or "
    "low <= p_cat <= high, else not_cat if unfamiliar, else cat if p_cat >= threshold, "
    "else not_cat"
)


def as_array(values: Any) -> np.ndarray:
    """A (n,) tensor (CPU or not, with or without grad) or array as a float32 NumPy array.
    NumPy, not torch: predict on the inference engine answers without importing torch."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu()
    return np.asarray(values, dtype=np.float32)


def probabilities(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """(n,) raw logits -> (n,) float32 p(cat) = sigmoid(logit / T); T = 1 is uncalibrated."""
    z = as_array(logits) / np.float32(temperature)
    # sigmoid(z) = exp(-log(1 + exp(-z))): no overflow warning for large |z|
    return np.exp(-np.logaddexp(np.float32(0), -z)).astype(np.float32)


def resolve_threshold(asked: float, own: float) -> float:
    """The threshold a command uses: the one asked for, or (negative: the settings' "none
    given") the checkpoint's own."""
    return own if asked < 0 else asked


@dataclass(frozen=True)
class Answer:
    """One picture's answer: what a prediction row, an explain row or a queue entry shows."""

    p_cat: float
    label: str  # cat, not_cat or unsure
    unfamiliar: bool | None  # None: not checked
    score: float | None  # the open-set score, None: not checked


@dataclass(frozen=True)
class Decided:
    """A batch's answers, as arrays (n,) and labels."""

    p_cat: np.ndarray  # (n,) float32 calibrated p(cat)
    unfamiliar: np.ndarray | None  # (n,) bool, None: not checked
    scores: np.ndarray | None  # (n,) float32 open-set scores, None: not checked
    cat: np.ndarray  # (n,) bool: the answer before the unsure band (familiar, p >= threshold)
    unsure: np.ndarray  # (n,) bool: in the unsure band (all False without one)

    @property
    def labels(self) -> list[str]:
        return [
            "unsure" if u else "cat" if c else "not_cat"
            for c, u in zip(self.cat.tolist(), self.unsure.tolist(), strict=True)
        ]

    def answers(self) -> list[Answer]:
        n = len(self.p_cat)
        flags = [None] * n if self.unfamiliar is None else self.unfamiliar.tolist()
        scores = [None] * n if self.scores is None else self.scores.tolist()
        return [
            Answer(p, label, flag, score)
            for p, label, flag, score in zip(
                self.p_cat.tolist(), self.labels, flags, scores, strict=True
            )
        ]


@dataclass(frozen=True)
class Decision:
    """Everything that turns logits (and open-set scores) into answers; a checkpoint's own
    is CatnetModel.decision()."""

    threshold: float  # p(cat) at or above it: cat
    temperature: float = 1.0
    unsure: tuple[float, float] | None = None  # (low, high) band of p(cat) answered unsure
    unfamiliar_above: float | None = None  # open-set threshold (a distance); None: check off

    def with_settings(
        self, threshold: float = -1.0, unsure: Any = None, open_set: bool = True
    ) -> Decision:
        """This decision under a command's settings: threshold < 0 keeps this one's, an
        unsure band (low, high) or none, open_set False turns the check off."""
        return dataclasses.replace(
            self,
            threshold=resolve_threshold(threshold, self.threshold),
            unsure=(float(unsure[0]), float(unsure[1])) if unsure else None,
            unfamiliar_above=self.unfamiliar_above if open_set else None,
        )

    @property
    def checks(self) -> bool:
        """Whether the open-set check is part of this decision."""
        return self.unfamiliar_above is not None

    def decide(self, logits: Any, scores: Any = None) -> Decided:
        """logits (n,) raw and open-set scores (n,) (None: not computed), as arrays or
        tensors -> the answers."""
        return self.decide_p(probabilities(logits, self.temperature), scores)

    def decide_p(self, p: Any, scores: Any = None) -> Decided:
        """The same from p(cat) (n,) already calibrated (sigmoid(logit / temperature))."""
        p = as_array(p)
        unfamiliar = None
        if scores is not None and self.unfamiliar_above is not None:
            scores = as_array(scores)
            unfamiliar = scores > self.unfamiliar_above
        else:
            scores = None
        odd = unfamiliar if unfamiliar is not None else np.zeros(p.shape, dtype=bool)
        cat = ~odd & (p >= self.threshold)
        unsure = np.zeros_like(cat)
        if self.unsure:
            low, high = self.unsure
            unsure = odd | ((p >= low) & (p <= high))
        return Decided(p, unfamiliar, scores, cat, unsure)

    def metadata(self) -> dict[str, str]:
        """The rule as an exported model's metadata states it (strings, as ONNX keeps them)."""
        return {
            "threshold": str(self.threshold),
            "temperature": str(self.temperature),
            "decision": json.dumps({**dataclasses.asdict(self), "rule": RULE}),
        }
