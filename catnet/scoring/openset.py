"""The open-set check: is a picture unlike anything the model was trained on?

A cat/not-cat network trained on cats and dogs has only learned what separates cats from dogs;
shown a car, its logit says "more cat than dog" or "more dog than cat" and nothing else. This
module asks a different question, in the network's own penultimate feature space (the input of
its last linear layer): how far is this picture from the training pictures? The score is the
distance to the k-th nearest training picture after L2-normalising every feature vector
(Sun et al., ICML 2022, "Out-of-distribution detection with deep nearest neighbors"). A picture
whose score is beyond the threshold fitted on the validation pictures when training ended is
"unfamiliar": never labelled cat.

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
  k, threshold (a distance in [0, 2]), quantile (of validation scores it was fitted at);
  tagged (M, F) float16, L2-normalised features of the pictures the user tagged, and
  tagged_radius (a distance); absent in checkpoints from before them (no tagged pictures).
Checkpoints without it predict with the check off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

KEY = "open_set"
BANK_SIZE = 2000  # training pictures kept (fp16): 5 MB at 1,280 features, ~1 ms a batch
DEFAULT_K = 10
DEFAULT_QUANTILE = 0.99
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


@dataclass
class OpenSetCheck:
    bank: torch.Tensor  # (N, F) float32 on the model's device, rows of unit length
    k: int
    threshold: float  # scores above it are unfamiliar
    quantile: float = DEFAULT_QUANTILE
    # (M, F) float32 unit rows: the pictures the user tagged, familiar whatever the bank says
    tagged: torch.Tensor | None = None
    tagged_radius: float = 0.0  # a distance; closer to a tagged picture than this: that picture

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
        return {
            "method": "knn",
            "bank": self.bank.detach().cpu().half(),
            "k": self.k,
            "threshold": self.threshold,
            "quantile": self.quantile,
            "tagged": tagged.detach().cpu().half(),
            "tagged_radius": self.tagged_radius,
        }

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


def fit_open_set(
    train_features: torch.Tensor,
    val_features: torch.Tensor,
    k: int = DEFAULT_K,
    quantile: float = DEFAULT_QUANTILE,
    bank_size: int = BANK_SIZE,
    seed: int = 0,
) -> OpenSetCheck:
    """Bank = up to bank_size training features; threshold = the `quantile` of the validation
    pictures' scores (pictures the bank has not seen, like those predict will get). Without
    enough validation pictures (< 20), leave-one-out scores of the training pictures stand in."""
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(train_features))[:bank_size]
    bank = nn.functional.normalize(train_features[pick].float(), dim=1)
    # Round through fp16 now, so the threshold is fitted on exactly the bank that is stored.
    check = OpenSetCheck(bank.half().float(), k, 0.0, quantile)
    if len(val_features) >= 20:
        scores = check.scores(val_features)
    else:
        loo = OpenSetCheck(check.bank, k + 1, 0.0, quantile)  # each picture is its own nearest
        scores = loo.scores(train_features[pick])
    check.threshold = float(torch.quantile(scores.double(), quantile))
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
