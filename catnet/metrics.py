"""Binary classification metrics from p(cat) and true labels. Plain torch, no sklearn."""

from __future__ import annotations

from typing import Any

import torch


def confusion(probs: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict[str, int]:
    pred = probs >= threshold
    truth = labels.bool()
    return {
        "tp": int((pred & truth).sum()),
        "fp": int((pred & ~truth).sum()),
        "tn": int((~pred & ~truth).sum()),
        "fn": int((~pred & truth).sum()),
    }


def roc_auc(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve = P(a random cat scores above a random not-cat), ties count 1/2."""
    pos, neg = probs[labels == 1], probs[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    # Mann-Whitney U via average ranks: O(n log n), exact with ties.
    scores = torch.cat([pos, neg]).double()
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    uniq, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    if len(uniq) < len(scores):  # average the ranks of tied scores
        sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, ranks)
        ranks = (sums / counts)[inverse]
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def binary_metrics(
    probs: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5
) -> dict[str, Any]:
    """accuracy, precision, recall, f1, roc_auc and the confusion counts at `threshold`."""
    probs, labels = probs.detach().float().cpu(), labels.detach().long().cpu()
    c = confusion(probs, labels, threshold)
    n = len(labels)
    precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
    recall = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": n,
        "accuracy": (c["tp"] + c["tn"]) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "roc_auc": roc_auc(probs, labels),
        "threshold": threshold,
        "confusion": c,
    }
