"""Temperature scaling: one number T so that sigmoid(logit / T) matches observed frequencies.

Networks trained to low loss are over-confident; dividing logits by a T fitted on validation
pictures fixes the confidence without changing any decision at threshold 0.5.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    return F.binary_cross_entropy_with_logits(logits / temperature, labels.float()).item()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """T in [0.05, 20] minimising validation log-loss: a coarse log grid, then a finer one."""
    logits, labels = logits.detach().float().cpu(), labels.detach().cpu()
    if len(logits) < 2 or labels.min() == labels.max():
        return 1.0  # nothing to learn from
    # T >= 0.5: sharpening beyond that would claim more certainty than a few hundred
    # validation pictures (often perfectly separated) can support.
    grid = torch.logspace(math.log10(0.5), 1.3, 41).tolist()
    best = min(grid, key=lambda t: nll(logits, labels, t))
    fine = [t for t in (best * torch.logspace(-0.05, 0.05, 41)).tolist() if t >= 0.5]
    return float(min(fine, key=lambda t: nll(logits, labels, t)))


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE over `bins` equal-width bins of p(cat): the mean |frequency - confidence| gap,
    weighted by how many pictures fall in each bin."""
    probs, labels = probs.detach().float().cpu(), labels.detach().float().cpu()
    if len(probs) == 0:
        return 0.0
    edges = torch.linspace(0, 1, bins + 1)
    index = torch.bucketize(probs, edges[1:-1], right=True)
    ece = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            ece += mask.float().mean().item() * abs(
                labels[mask].mean().item() - probs[mask].mean().item()
            )
    return ece
