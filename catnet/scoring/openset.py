"""The open-set check: is a picture unlike anything the model was trained on?

A cat/not-cat network trained on cats and dogs has only learned what separates cats from dogs;
shown a car, its logit says "more cat than dog" or "more dog than cat" and nothing else. This
module asks a different question, in the network's own penultimate feature space (the input of
its last linear layer): how far is this picture from the training pictures? The score is the
distance to the k-th nearest training picture after L2-normalising every feature vector
(Sun et al., ICML 2022, "Out-of-distribution detection with deep nearest neighbors"). A picture
whose score is beyond the threshold fitted on the validation pictures when training ended is
"unfamiliar": never labelled cat.

What a checkpoint stores under "open_set" (plain tensors and numbers, weights_only-safe):
  bank (N, F) float16, L2-normalised training features, N <= BANK_SIZE;
  k, threshold (a distance in [0, 2]), quantile (of validation scores it was fitted at).
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


@dataclass
class OpenSetCheck:
    bank: torch.Tensor  # (N, F) float32 on the model's device, rows of unit length
    k: int
    threshold: float  # scores above it are unfamiliar
    quantile: float = DEFAULT_QUANTILE

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F) penultimate features -> (B,) distance to the k-th nearest training picture."""
        f = nn.functional.normalize(features.float(), dim=1)
        similarity = f @ self.bank.T  # (B, N) cosine similarities
        k = min(self.k, self.bank.shape[0])
        kth = similarity.topk(k, dim=1).values[:, -1]
        # |a - b| for unit vectors a, b is sqrt(2 - 2 cos): the distance Sun et al. threshold.
        return (2 - 2 * kth).clamp_min(0).sqrt()

    def to_payload(self) -> dict[str, Any]:
        return {
            "method": "knn",
            "bank": self.bank.detach().cpu().half(),
            "k": self.k,
            "threshold": self.threshold,
            "quantile": self.quantile,
        }

    @classmethod
    def from_payload(cls, entry: Any, device: torch.device | str = "cpu") -> OpenSetCheck | None:
        """None for checkpoints without the check (written before it existed)."""
        if not isinstance(entry, dict) or entry.get("method") != "knn":
            return None
        bank = entry["bank"].to(device=device, dtype=torch.float32)
        return cls(bank, int(entry["k"]), float(entry["threshold"]), float(entry["quantile"]))


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
        self.k = min(check.k, check.bank.shape[0])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen: list[torch.Tensor] = []
        layer = output_layer(self.module)
        handle = layer.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0]))
        try:
            logits = self.module(x)
        finally:
            handle.remove()
        f = nn.functional.normalize(seen[0], dim=1)
        kth = (f @ self.bank.T).topk(self.k, dim=1).values[:, -1]
        return logits, (2 - 2 * kth).clamp_min(0).sqrt()
