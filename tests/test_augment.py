"""Batched augmentation: CutMix pastes one box and mixes the targets by its area."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from catnet.config import TrainConfig
from catnet.data.augment import cutmix
from catnet.training.loop import train


def two_colour_batch() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.zeros(8, 3, 16, 16)
    x[4:] = 1.0  # pictures 0-3 all 0 ("not cat"), 4-7 all 1 ("cat")
    return x, torch.tensor([0.0] * 4 + [1.0] * 4)


def test_cutmix_targets_are_the_pasted_share() -> None:
    x, y = two_colour_batch()
    for seed in range(20):
        mixed, targets = cutmix(x, y, torch.Generator().manual_seed(seed))
        assert mixed.shape == x.shape and targets.shape == y.shape
        # Every picture is its own colour outside the box and its partner's inside it, so the
        # mean brightness is exactly the mixed target.
        assert torch.allclose(mixed.mean(dim=(1, 2, 3)), targets, atol=1e-6)
        assert ((targets >= 0) & (targets <= 1)).all()


def test_cutmix_is_deterministic_for_a_seed_and_leaves_its_input_alone() -> None:
    x, y = two_colour_batch()
    a = cutmix(x, y, torch.Generator().manual_seed(3))
    b = cutmix(x, y, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(x, two_colour_batch()[0])


def test_training_with_cutmix_runs(
    tmp_path: Path,
    make_dataset: Callable[..., Path],
    tiny_config: Callable[..., TrainConfig],
) -> None:
    data = make_dataset(tmp_path / "d", n_per_class=6, size=16)
    cfg = tiny_config(data, tmp_path / "run", tmp_path / "c", epochs=2, cutmix=1.0)
    result = train(cfg)
    assert result.epochs_run == 2
    assert all(0 <= row["train_loss"] < 10 for row in result.history)
