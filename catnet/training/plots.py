"""Pictures of training: learning curves. matplotlib draws; nothing here is needed to predict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from catnet.runtime.files import atomic_write


def plot_curves(history: list[dict[str, Any]], best_epoch: int, path: Path) -> Path:
    """curves.png: train/val loss and accuracy per epoch, the best epoch and the LR marked."""
    # A Figure without pyplot: drawn straight to a file, no window, and the caller's
    # matplotlib backend left as it was.
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train loss")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], label="val loss")
    ax_acc.plot(epochs, [r["train_acc"] for r in history], label="train accuracy")
    ax_acc.plot(epochs, [r["val_acc"] for r in history], label="val accuracy")
    for ax in (ax_loss, ax_acc):
        ax.axvline(best_epoch, color="grey", linestyle="--", label=f"best epoch ({best_epoch})")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    ax_lr = ax_loss.twinx()
    ax_lr.plot(
        epochs, [r["lr"] for r in history], color="tab:green", alpha=0.5, label="learning rate"
    )
    ax_lr.set_ylabel("learning rate", color="tab:green")
    ax_loss.set_ylabel("loss (binary cross-entropy)")
    ax_acc.set_ylabel("accuracy")
    ax_loss.legend(loc="upper right")
    ax_acc.legend(loc="lower right")
    ax_loss.set_title("Loss")
    ax_acc.set_title("Accuracy")
    # Fixed margins (fractions of the 10 x 4 in figure) that fit these labels, instead of
    # tight_layout, which draws the whole figure once more to measure them (0.18 -> 0.10 s a
    # plot, and every training draws one).
    fig.subplots_adjust(left=0.065, right=0.985, bottom=0.12, top=0.92, wspace=0.45)
    # Atomic: a full disk keeps the previous curves.png, never half of a new one.
    atomic_write(
        path, lambda fh: fig.savefig(fh, format="png", dpi=100), what="the training curves"
    )
    return path
