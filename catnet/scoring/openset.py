"""The open-set check: is a picture unlike anything the model was trained on?

A cat/not-cat network trained on cats and dogs has only learned what separates cats from dogs;
shown a car, its logit says "more cat than dog" or "more dog than cat" and nothing else. This
module asks a different question, in the network's own penultimate feature space (the input of
its last linear layer): how far is this picture from the training pictures? The score is the
distance to the k-th nearest training picture after L2-normalising every feature vector
(Sun et al., ICML 2022, "Out-of-distribution detection with deep nearest neighbors"). A picture
whose score is beyond the threshold fitted when training ended is "unfamiliar": never cat.
The threshold is the 99.5th percentile of held-out scores: the validation pictures' and, where
a frozen backbone gives the features, each bank picture's against the rest of the bank, ~2,000
instead of ~300 (scripts/benchmark_openset.py compares the variants).

A correction outranks the check. A picture the user tagged (`catnet correct`, the labelling
page's answers and confirmations) is familiar from then on, and so is any picture with the same
content: the features of the tagged training pictures are kept beside the bank, and a picture
whose features lie within `tagged_radius` of one of them scores its distance to it instead (a
familiar score). Why features and not file hashes: the same content gives the same features, so
a copy under another name, a re-encoded or resized copy is recognised too (as
curation.fingerprints' perceptual hash would), and the rule lives inside the score itself, so
predict, Ray, the labelling page and an exported model (whose graph computes the score) all
apply it with no list of files to ship. Without it, with k = 10, a corrected picture's own entry
in the bank is only one of its ten neighbours, and a picture unlike the rest stays unfamiliar
however the user tagged it (issue #23).

What a checkpoint stores under "open_set" (plain tensors and numbers, weights_only-safe):
  bank (N, F) float16, L2-normalised training features, N <= BANK_SIZE;
  k, threshold (a distance in [0, 2]), quantile (of held-out scores it was fitted at);
  validation (Verdict's numbers) and on (whether the check is on by default; absent: on);
  tagged (M, F) float16, L2-normalised features of the pictures the user tagged, and
  tagged_radius (a distance); absent in checkpoints from before them (no tagged pictures).
Checkpoints without it predict with the check off.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

KEY = "open_set"
BANK_SIZE = 2000  # training pictures kept (fp16): 5 MB at 1,280 features, ~1 ms a batch
DEFAULT_K = 10
DEFAULT_QUANTILE = 0.995  # of held-out scores; 0.99: 5.0 of 1,000 unfamiliar, 0.998: 2.5
# A picture this close to a tagged one, as a share of the unfamiliarity threshold, is that
# picture (see tagged_radius). Measured on the tests' tiny CNN (24 px drawings, threshold 0.16):
# a training file lies 0 to 0.02 from its own bank entry, a copy resized x2 at most 0.025 from
# it, a JPEG (q75) re-encoding 0.01 to 0.13 (at 24 px JPEG is harsh), the nearest other picture
# 0.05 to 0.13. A quarter of the threshold (0.04) takes the copies and leaves the others.
TAGGED_SHARE = 0.25


def knn_scores(
    features: torch.Tensor,
    bank: torch.Tensor,
    k: int,
    tagged: torch.Tensor | None = None,
    radius: float = 0.0,
) -> torch.Tensor:
    """(B, F) penultimate features -> (B,) open-set scores: the distance to the k-th nearest
    row of bank (N, F); for a picture within `radius` of a row of tagged (M, F) (a picture the
    user tagged), the distance to that row instead. Every row of bank and tagged is of unit
    length. Plain tensor maths, so that an exported graph computes the same score."""
    f = nn.functional.normalize(features.float(), dim=1)
    kth = (f @ bank.T).topk(min(k, bank.shape[0]), dim=1).values[:, -1]  # (B,) cosine
    # |a - b| for unit vectors a, b is sqrt(2 - 2 cos): the distance Sun et al. threshold.
    scores = (2 - 2 * kth).clamp_min(0).sqrt()
    if tagged is None or tagged.shape[0] == 0:
        return scores
    near = (2 - 2 * (f @ tagged.T).amax(dim=1)).clamp_min(0).sqrt()  # (B,) to the nearest
    return torch.where(near <= radius, torch.minimum(near, scores), scores)


@dataclass(frozen=True)
class Verdict:
    """Whether the check pays on validation, where it can only turn the head's cat answers
    away: a cat is its price, a non-cat the head called cat its gain. Working as designed, it
    turns each held-out picture away with probability 1 - quantile; it pays when its net price
    there (cats minus non-cats turned away) is within what such a check turns away by chance
    19 times in 20. Distances that say little about new pictures (features that learned the
    training set, as a from-scratch MLP's) turn away more: the check is then off by default.
    (With fewer than 1 / (1 - quantile) held-out scores, the farthest validation picture is
    always beyond the threshold: a cat there already counts against the check.)"""

    cats_turned_away: int  # validation cats the head called cat, unfamiliar to the check
    wrong_turned_away: int  # validation non-cats the head called cat, unfamiliar to the check
    by_chance: int  # the most a check working as designed turns away, 19 times in 20

    @property
    def pays(self) -> bool:
        return self.cats_turned_away - self.wrong_turned_away <= self.by_chance

    @classmethod
    def of(cls, unfamiliar: Any, called_cat: Any, cats: Any, quantile: float) -> Verdict:
        """unfamiliar, called_cat (the head's answer without the check), cats (the truth): (n,)
        bools (arrays or tensors) over the validation pictures."""
        unfamiliar, called_cat, cats = (
            np.asarray(a, dtype=bool) for a in (unfamiliar, called_cat, cats)
        )
        right, wrong = called_cat & cats, called_cat & ~cats
        return cls(
            int((unfamiliar & right).sum()), int((unfamiliar & wrong).sum()),
            binomial_quantile(int(right.sum()), 1 - quantile, 0.95),
        )  # fmt: skip


def binomial_quantile(n: int, p: float, level: float) -> int:
    """The smallest c with P(X <= c) >= level for X ~ Binomial(n, p)."""
    term, total = (1 - p) ** n, 0.0  # P(X = 0), then P(X = c + 1) = P(X = c) (n-c)/(c+1) p/(1-p)
    for c in range(n + 1):
        total += term
        if total >= level:
            return c
        term *= (n - c) / (c + 1) * p / (1 - p)
    return n


@dataclass
class OpenSetCheck:
    bank: torch.Tensor  # (N, F) float32 on the model's device, rows of unit length
    k: int
    threshold: float  # scores above it are unfamiliar
    quantile: float = DEFAULT_QUANTILE
    # (M, F) float32 unit rows: the pictures the user tagged, familiar whatever the bank says
    tagged: torch.Tensor | None = None
    tagged_radius: float = 0.0  # a distance; closer to a tagged picture than this: that picture
    # What the check did on validation (Verdict); on by default only where it paid there.
    verdict: Verdict | None = None

    @property
    def on(self) -> bool:
        """Whether the check is on when nobody says (checkpoints from before verdicts: on)."""
        return self.verdict is None or self.verdict.pays

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F) penultimate features -> (B,) scores (knn_scores)."""
        tagged = None if self.tagged is None else self.tagged.to(self.bank.device)
        return knn_scores(features.to(self.bank.device), self.bank, self.k, tagged,
                          self.tagged_radius)  # fmt: skip

    def remember_tagged(self, features: torch.Tensor) -> None:
        """Count the pictures behind features (M, F) as familiar: the user tagged them.
        Rounded through fp16 now, as stored."""
        if len(features) == 0:
            self.tagged, self.tagged_radius = None, 0.0
            return
        self.tagged = nn.functional.normalize(features.float(), dim=1).half().float()
        self.tagged_radius = TAGGED_SHARE * self.threshold

    def to_payload(self) -> dict[str, Any]:
        tagged = self.tagged if self.tagged is not None else self.bank[:0]
        payload = {
            "method": "knn",
            "bank": self.bank.detach().cpu().half(),
            "k": self.k,
            "threshold": self.threshold,
            "quantile": self.quantile,
            "tagged": tagged.detach().cpu().half(),
            "tagged_radius": self.tagged_radius,
        }
        if self.verdict is not None:  # "on" for readers without catnet's scoring (catnet info)
            payload.update(validation=dataclasses.asdict(self.verdict), on=self.verdict.pays)
        return payload

    @classmethod
    def from_payload(cls, entry: Any, device: torch.device | str = "cpu") -> OpenSetCheck | None:
        """None for checkpoints without the check (written before it existed)."""
        if not isinstance(entry, dict) or entry.get("method") != "knn":
            return None
        bank = entry["bank"].to(device=device, dtype=torch.float32)
        tagged = entry.get("tagged")
        return cls(
            bank, int(entry["k"]), float(entry["threshold"]), float(entry["quantile"]),
            None if tagged is None else tagged.to(device=device, dtype=torch.float32),
            float(entry.get("tagged_radius", 0.0)),
            Verdict(**entry["validation"]) if "validation" in entry else None,
        )  # fmt: skip


def output_layer(module: nn.Module) -> nn.Linear:
    """The network's last linear layer: its input is the penultimate feature vector (the
    pooled conv features for the CNN and pretrained nets, the last hidden layer for the MLP)."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the network has no linear output layer")
    return linears[-1]


@contextlib.contextmanager
def capture_features(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """While active, every forward pass appends its (B, F) penultimate features to the list
    yielded (two entries per batch with flip-TTA: the picture and its mirror)."""
    seen: list[torch.Tensor] = []

    def hook(_layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        seen.append(inputs[0].detach().float())

    handle = output_layer(module).register_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def mean_features(seen: list[torch.Tensor], n: int) -> torch.Tensor:
    """Join the features captured for n pictures: (n, F). With flip-TTA every batch was seen
    twice in a row (the pictures, then their mirrors): those two are averaged."""
    total = sum(len(f) for f in seen)
    if total == 2 * n and n:
        return torch.cat([(a + b) / 2 for a, b in zip(seen[0::2], seen[1::2], strict=True)])
    if total != n:
        raise ValueError(f"captured features for {total} pictures, expected {n}")
    return torch.cat(seen) if seen else torch.zeros(0)


@dataclass(frozen=True)
class OpenSetFit:
    """How fit_open_set builds a check: the choices scripts/benchmark_openset.py compares."""

    k: int = DEFAULT_K
    quantile: float = DEFAULT_QUANTILE
    bank_size: int = BANK_SIZE
    # The threshold's sample: the validation pictures, plus (True) every bank picture scored
    # against the rest of the bank (leave-one-out): held-out scores too where the features did
    # not learn the training pictures (a frozen backbone), several times as many.
    leave_one_out: bool = True
    seed: int = 0


def fit_open_set(
    train_features: torch.Tensor, val_features: torch.Tensor, how: OpenSetFit = OpenSetFit()
) -> OpenSetCheck:
    """Bank = up to how.bank_size training features (n, F); threshold = the how.quantile of
    held-out scores: the validation pictures' (pictures the bank has not seen, like those
    predict will get) and, with how.leave_one_out or fewer than 20 of them, each bank
    picture's against the rest of the bank."""
    rng = np.random.default_rng(how.seed)
    pick = rng.permutation(len(train_features))[: how.bank_size]
    bank = nn.functional.normalize(train_features[pick].float(), dim=1)
    # Round through fp16 now, so the threshold is fitted on exactly the bank that is stored.
    check = OpenSetCheck(bank.half().float(), how.k, 0.0, how.quantile)
    scores = [check.scores(val_features)] if len(val_features) else []
    if how.leave_one_out or len(val_features) < 20:
        loo = OpenSetCheck(check.bank, how.k + 1, 0.0)  # each picture is its own nearest
        scores.append(loo.scores(train_features[pick]))
    check.threshold = float(torch.quantile(torch.cat(scores).double(), how.quantile))
    return check


class WithOpenSet(nn.Module):
    """A network that returns its logits (B,) and its open-set scores (B,) from one forward
    pass: what `catnet export` writes, so a server gets the score without catnet. A picture is
    unfamiliar (never cat) when its score is above the threshold in the export's metadata."""

    def __init__(self, module: nn.Module, check: OpenSetCheck) -> None:
        super().__init__()
        self.module = module
        self.register_buffer("bank", check.bank.detach().float().cpu().clone())  # (N, F)
        tagged = check.tagged if check.tagged is not None else check.bank[:0]
        self.register_buffer("tagged", tagged.detach().float().cpu().clone())  # (M, F)
        self.k, self.radius = check.k, check.tagged_radius

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen: list[torch.Tensor] = []
        layer = output_layer(self.module)
        handle = layer.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0]))
        try:
            logits = self.module(x)
        finally:
            handle.remove()
        return logits, knn_scores(seen[0], self.bank, self.k, self.tagged, self.radius)
