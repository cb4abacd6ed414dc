"""Name over- or underfitting in plain words, with the flag to change next."""

from __future__ import annotations

from typing import Any

# Train accuracy this far above validation accuracy: the network memorises its training pictures.
OVERFIT_GAP = 0.08


def underfit_floor(majority: float) -> float:
    """Train accuracy below which a network has not even fit its training pictures: 80 %, or
    halfway from always answering the commoner class (`majority`) to perfect, if higher."""
    return max(0.8, majority + (1 - majority) / 2)


def diagnose(
    history: list[dict[str, Any]],
    best_epoch: int,
    cfg: Any,
    train_acc: float,
    val_acc: float,
    majority: float = 0.5,
) -> dict[str, str]:
    """Verdict from the best checkpoint's clean train and validation accuracy, and from the
    validation loss curve (rising after its minimum = memorising). `majority` is the accuracy of
    always answering the commoner class: a network near it has learnt next to nothing."""
    if not history:
        return {"verdict": "unknown", "message": "no epoch finished", "next_step": ""}
    last = history[-1]
    gap = train_acc - val_acc
    loss_rise = last["val_loss"] - min(r["val_loss"] for r in history)
    if gap > OVERFIT_GAP or (len(history) >= 4 and loss_rise > 0.15):
        return {
            "verdict": "overfit",
            "message": f"overfitting: train accuracy is {gap:+.1%} above validation, and the "
            "network is memorising its training pictures",
            "next_step": f"try --dropout {min(cfg.dropout + 0.2, 0.7):.1f}, "
            f"--weight-decay {cfg.weight_decay * 3:g}, keep --augment on, or a smaller network",
        }
    if train_acc < underfit_floor(majority) and gap < 0.05:
        bigger = (
            "--width " + str(cfg.width * 2)
            if cfg.model == "cnn"
            else "--hidden " + ",".join(str(h * 2) for h in cfg.hidden)
        )
        return {
            "verdict": "underfit",
            "message": f"underfitting: even training accuracy is only {train_acc:.1%}",
            "next_step": f"try a bigger network ({bigger}), a longer --time-budget or more "
            f"--epochs, or less regularisation (--dropout {max(cfg.dropout - 0.1, 0):.1f})",
        }
    return {
        "verdict": "good",
        "message": f"good fit: train and validation accuracy are within {abs(gap):.1%}",
        "next_step": "more pictures or a longer --time-budget are the way to go further",
    }
