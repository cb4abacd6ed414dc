"""Binary classification metrics from p(cat) and true labels. Plain torch, no sklearn."""

from __future__ import annotations

from typing import Any

import torch


def confusion(
    probs: torch.Tensor,
    labels: torch.Tensor,
    threshold: float,
    answers: torch.Tensor | None = None,
) -> dict[str, int]:
    """Counts of the answers (n,) bool, True = cat (default: p(cat) >= threshold)."""
    pred = answers.bool() if answers is not None else probs >= threshold
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
    probs: torch.Tensor,
    labels: torch.Tensor,
    threshold: float = 0.5,
    answers: torch.Tensor | None = None,
) -> dict[str, Any]:
    """accuracy, precision, recall, f1 and the confusion counts of the answers (n,) bool
    (scoring.decision's; default: p(cat) >= threshold), and roc_auc of p(cat)'s ranking."""
    probs, labels = probs.detach().float().cpu(), labels.detach().long().cpu()
    c = confusion(probs, labels, threshold, None if answers is None else answers.cpu())
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


def sweep(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Counts at every distinct threshold, highest first: predicting cat when p >= threshold.

    Returns thresholds, tp, fp (cumulative, shape (k,)) and the totals as 0-d tensors.
    """
    probs, labels = probs.detach().double().cpu(), labels.detach().long().cpu()
    order = probs.argsort(descending=True)
    p, y = probs[order], labels[order]
    tp = torch.cumsum(y, 0)
    fp = torch.cumsum(1 - y, 0)
    last_of_tie = torch.ones(len(p), dtype=torch.bool)
    last_of_tie[:-1] = p[1:] != p[:-1]  # keep one point per distinct score
    return {
        "thresholds": p[last_of_tie],
        "tp": tp[last_of_tie].double(),
        "fp": fp[last_of_tie].double(),
        "positives": y.sum().double(),
        "negatives": (1 - y).sum().double(),
    }


def roc_curve(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, list[float]]:
    s = sweep(probs, labels)
    fpr = torch.cat([torch.zeros(1, dtype=torch.float64), s["fp"] / s["negatives"].clamp(min=1)])
    tpr = torch.cat([torch.zeros(1, dtype=torch.float64), s["tp"] / s["positives"].clamp(min=1)])
    return {
        "fpr": fpr.tolist(),
        "tpr": tpr.tolist(),
        "thresholds": [1.0, *s["thresholds"].tolist()],
    }


def pr_curve(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Precision-recall points and the average precision (area under the PR curve, step-wise)."""
    s = sweep(probs, labels)
    precision = s["tp"] / (s["tp"] + s["fp"])
    recall = s["tp"] / s["positives"].clamp(min=1)
    previous = torch.cat([torch.zeros(1, dtype=torch.float64), recall[:-1]])
    ap = float(((recall - previous) * precision).sum())
    return {
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "thresholds": s["thresholds"].tolist(),
        "average_precision": ap,
    }


def pick_threshold(probs: torch.Tensor, labels: torch.Tensor, rule: str) -> dict[str, float]:
    """Threshold by rule: "f1" (best F1), "precision=P" (highest recall with precision >= P)
    or "recall=R" (highest precision with recall >= R). Raises ValueError if no threshold fits."""
    s = sweep(probs, labels)
    precision = s["tp"] / (s["tp"] + s["fp"])
    recall = s["tp"] / s["positives"].clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    name, target = parse_threshold_rule(rule)
    if name == "f1":
        i = int(f1.argmax())
    else:
        ok = (precision if name == "precision" else recall) >= target
        if not ok.any():
            raise ValueError(f"no threshold reaches {name} {target:g} on these pictures")
        score = recall if name == "precision" else precision
        i = int(torch.where(ok, score, torch.full_like(score, -1.0)).argmax())
    return {
        "threshold": float(s["thresholds"][i]),
        "precision": float(precision[i]),
        "recall": float(recall[i]),
        "f1": float(f1[i]),
    }


def unsure_metrics(
    cat: torch.Tensor, unsure: torch.Tensor, labels: torch.Tensor, band: tuple[float, float]
) -> dict:
    """Accuracy on the pictures answered cat or not_cat (the sure ones: `unsure` (n,) False)
    and the share answered unsure; cat (n,) bool: the answer, True = cat."""
    sure = ~unsure
    n_sure = int(sure.sum())
    correct = (cat[sure].long() == labels[sure].long()).sum()
    return {
        "unsure_range": list(band),
        "unsure_rate": float(unsure.float().mean()) if len(cat) else 0.0,
        "sure_accuracy": float(correct) / n_sure if n_sure else 0.0,
        "n_sure": n_sure,
    }


def parse_threshold_rule(rule: str) -> tuple[str, float]:
    """("f1", 0) or ("precision"|"recall", target in (0, 1]); ValueError says what is wrong."""
    name, sep, value = rule.strip().partition("=")
    if name == "f1" and not sep:
        return "f1", 0.0
    if name not in ("precision", "recall") or not sep:
        raise ValueError(f"unknown rule {rule!r}: use f1, precision=P or recall=R")
    try:
        target = float(value)
    except ValueError:
        raise ValueError(
            f"{name} needs a number between 0 and 1, like {name}=0.95, not {value!r}"
        ) from None
    if not 0 < target <= 1:
        raise ValueError(f"{name} must be above 0 and at most 1, not {target:g}")
    return name, target
