"""Fitting a head on stored features to convergence, full batch: the recipe for small sets.

With a few dozen training photos, the head on frozen pooled features is a logistic regression,
a convex problem that a full-batch quasi-Newton method solves exactly in milliseconds. Minibatch
AdamW with dropout only approximates it, and on 32 photos (4 steps an epoch) that approximation
cost about a point of held-out accuracy against a plain logistic regression on the same features
(README "From scratch or pretrained"). The regulariser here is an L2 penalty on the head's
weights, scaled as scikit-learn's default (C = 1): the objective is
    sum_i w_i * BCE(logit_i, y_i) + ||W||^2 / (2 C)      (bias not penalised)
over the plain and mirrored features of every training photo (w_i = how often a photo counts).
Dropout does not apply: a full-batch method needs a deterministic objective, and dropout's
noise is what a minibatch loop averages away step by step.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from catnet.errors import CatnetError
from catnet.runtime.distributed import share_weights

if TYPE_CHECKING:
    from catnet.training.features import Features
    from catnet.training.state import Run
    from catnet.training.steps import OnBatch

# scikit-learn's LogisticRegression default; the floor in scripts/benchmark_accuracy.py uses it.
HEAD_C = 1.0
# L-BFGS iterations at most (each one or a few loss evaluations on all features); a head on
# 1,280 features of a few hundred photos converges in well under 200.
MAX_ITERATIONS = 500
# L-BFGS iterations per optimizer step, between two convergence checks.
ROUND = 20
# Converged when no gradient component of the mean loss exceeds this.
GRADIENT_TOLERANCE = 1e-6
# Folds of the out-of-fold logits that calibrate a head on a small folder (out_of_fold_logits).
FOLDS = 5


def fit_head_full_batch(
    head: nn.Linear,
    features: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    label_smoothing: float = 0.0,
    c: float = HEAD_C,
) -> dict[str, float]:
    """Fit `head` (F -> 1) from zero on features (n, F) fp32, labels (n,) 0/1 and per-row
    weights (n,) by L-BFGS to convergence. Returns the metrics row of this "epoch":
    train_loss (mean weighted BCE, penalty excluded), train_acc, lr (L-BFGS's step scale, 1),
    iterations."""
    device = head.weight.device
    x = features.float().to(device)
    labels = labels.to(device)
    y = labels.float() * (1 - label_smoothing) + label_smoothing / 2
    w = weights.float().to(device)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    # Each step() runs up to ROUND iterations (torch's L-BFGS, its curvature history kept in the
    # optimizer between steps); this loop checks convergence between rounds. (With max_iter=1
    # torch's line search gets one evaluation and stalls on badly scaled problems.)
    optimizer = torch.optim.LBFGS(
        head.parameters(), lr=1.0, max_iter=ROUND, tolerance_grad=1e-9, tolerance_change=1e-12,
        history_size=20, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def objective() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        logits = head(x).squeeze(1)  # (n,)
        data_term = (w * F.binary_cross_entropy_with_logits(logits, y, reduction="none")).sum()
        loss = data_term + head.weight.square().sum() / (2 * c)
        loss.backward()
        return loss

    previous, iterations = float("inf"), 0
    gradient_limit = GRADIENT_TOLERANCE * max(float(w.sum()), 1.0)  # the sum's scale
    with torch.enable_grad():
        while iterations < MAX_ITERATIONS:
            optimizer.step(objective)
            iterations = int(optimizer.state[head.weight]["n_iter"])
            loss = float(objective().detach())  # the objective and its gradient after the round
            if not math.isfinite(loss):
                raise CatnetError(f"the head's loss became {loss}: fitting diverged", exit_code=1)
            gradient = max(float(p.grad.abs().max()) for p in head.parameters())  # type: ignore[union-attr]
            if gradient <= gradient_limit or loss >= previous:
                break  # converged, or a whole round no longer lowers the objective (fp32)
            previous = loss
    with torch.no_grad():
        logits = head(x).squeeze(1)
        bce = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")
        correct = ((logits > 0).long() == labels.long()).float()
    total = max(float(w.sum()), 1e-12)
    return {
        "train_loss": float((w * bce).sum()) / total,
        "train_acc": float((w * correct).sum()) / total,
        "lr": 1.0,
        "iterations": iterations,
    }


def head_views(run: Run, feats: Features) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """What a head on stored features is fitted on: the views (each (n, F): the training photos
    plain and, with `augment`, mirrored), the labels (n,) and each photo's weight (n,): how
    often it counts (train_repeat)."""
    data = run.data
    n = len(feats.train)
    repeat = data.train_repeat if data.train_repeat is not None else np.ones(n, dtype=np.int64)
    views = [feats.train, feats.train_mirror] if run.cfg.augment else [feats.train]
    return views, torch.from_numpy(data.train_labels), torch.from_numpy(repeat.astype(np.float32))


def out_of_fold_logits(run: Run, feats: Features, folds: int = FOLDS) -> torch.Tensor:
    """(n,) logits of every training photo from a head fitted full batch on the other folds
    (stratified, seeded): held-out answers from every training photo, for calibration where
    validation has only a few dozen. With TTA, the mean of the plain and mirrored logits, as
    predict gives them. Each fit takes milliseconds on a small folder's features."""
    views, labels, weights = head_views(run, feats)
    gen = np.random.default_rng(run.cfg.seed)
    fold = np.zeros(len(labels), dtype=np.int64)
    for cls in (0, 1):  # stratified: each fold holds both classes in the folder's proportion
        where = np.flatnonzero(labels.numpy() == cls)
        fold[gen.permutation(where)] = np.arange(len(where)) % folds
    logits = torch.zeros(len(labels))
    head = nn.Linear(views[0].shape[1], 1)
    for f in range(folds):
        train, held = torch.from_numpy(fold != f), torch.from_numpy(fold == f)
        if not held.any() or labels[train].unique().numel() < 2:
            continue
        fit_head_full_batch(
            head, torch.cat([v[train] for v in views]), labels[train].repeat(len(views)),
            weights[train].repeat(len(views)), run.cfg.label_smoothing,
        )  # fmt: skip
        with torch.no_grad():
            shown = (
                [feats.train[held], feats.train_mirror[held]]
                if run.cfg.tta
                else [feats.train[held]]
            )
            logits[held] = torch.stack([head(v.float()).squeeze(1) for v in shown]).mean(0).cpu()
    return logits


def fit_head_epoch(run: Run, feats: Features, on_batch: OnBatch) -> dict[str, float]:
    """The full-batch fit as the run's one "epoch": every training photo plain and (with
    `augment`) mirrored, each counted train_repeat times. Every rank fits the same head; rank
    0's is kept, bit for bit."""
    views, labels, weights = head_views(run, feats)
    row = fit_head_full_batch(
        run.model.head, torch.cat(views), labels.repeat(len(views)), weights.repeat(len(views)),
        run.cfg.label_smoothing,
    )  # fmt: skip
    run.state.step += int(row.pop("iterations"))
    share_weights(run.ranks, run.model.head)
    on_batch(1, 1, row["train_loss"])
    return row
