"""Batched augmentation: the affine warp (crop, aspect, rotation, flip) and the colour jitter
do what their settings say, are seeded, and keep the output format; CutMix pastes one box and
mixes the targets by its area."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from catnet.config import TrainConfig
from catnet.data.augment import MEAN, STD, AugmentSettings, augment, cutmix
from catnet.training.loop import train

RAW = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # mean, std that leave pixels in [0, 1]


def still(**changes: object) -> AugmentSettings:
    """No crop, rotation, flip nor jitter, unless `changes` turn one on."""
    values: dict[str, object] = {"crop_scale": 1.0, "rotation": 0.0, "color_jitter": 0.0}
    values["flip"] = False
    values.update(changes)
    return AugmentSettings(**values)  # type: ignore[arg-type]


def random_batch(b: int = 6, side: int = 24, seed: int = 0) -> torch.Tensor:
    """(b, side, side, 3) uint8 noise: any warp or mix-up shows."""
    return torch.randint(0, 256, (b, side, side, 3), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)  # fmt: skip


def as_float(batch_u8: torch.Tensor) -> torch.Tensor:
    return batch_u8.permute(0, 3, 1, 2).float() / 255


def raw(batch_u8: torch.Tensor, size: int, settings: AugmentSettings, seed: int) -> torch.Tensor:
    """augment() with the identity normalisation: (B, 3, size, size) in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    return augment(batch_u8, size, settings, gen, *RAW)


def test_augment_output_format_and_normalisation() -> None:
    batch = random_batch(5, 24)
    out = augment(batch, 16, AugmentSettings(), torch.Generator().manual_seed(0))
    assert out.shape == (5, 3, 16, 16) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    # The default normalisation is ImageNet's: the same view with mean 0 / std 1, shifted.
    plain = raw(batch, 16, AugmentSettings(), seed=0)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (plain - mean) / std, atol=1e-5, rtol=0)
    assert plain.min() >= 0 and plain.max() <= 1  # jitter clamps to the valid range


def test_augment_without_changes_is_the_identity() -> None:
    batch = random_batch(4, 24)
    torch.testing.assert_close(raw(batch, 24, still(), seed=1), as_float(batch), atol=1e-5, rtol=0)
    # To another size it is a plain bilinear resize.
    resized = F.interpolate(as_float(batch), size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(raw(batch, 16, still(), seed=1), resized, atol=1e-5, rtol=0)


def test_augment_flip_mirrors_about_half_the_pictures() -> None:
    batch = random_batch(32, 12)
    out = raw(batch, 12, still(flip=True), seed=2)
    same = [torch.allclose(o, x, atol=1e-5) for o, x in zip(out, as_float(batch), strict=True)]
    mirror = as_float(batch).flip(-1)
    mirrored = [torch.allclose(o, x, atol=1e-5) for o, x in zip(out, mirror, strict=True)]
    assert all(a != b for a, b in zip(same, mirrored, strict=True))  # each one or the other
    assert 6 <= sum(mirrored) <= 26  # a fair coin: P(outside) < 0.001


def coordinate_batch(b: int, side: int) -> torch.Tensor:
    """Red = 8 * column, green = 8 * row: every output pixel says where it was sampled."""
    ramp = torch.arange(side) * 8
    batch = torch.zeros(b, side, side, 3, dtype=torch.uint8)
    batch[..., 0] = ramp.view(1, 1, side)
    batch[..., 1] = ramp.view(1, side, 1)
    return batch


@pytest.mark.parametrize("crop_scale", [0.35, 0.9])
def test_augment_crops_inside_the_picture_with_the_stated_area_and_aspect(
    crop_scale: float,
) -> None:
    side = 32
    out = raw(coordinate_batch(64, side), side, still(crop_scale=crop_scale), seed=3) * 255 / 8
    x, y = out[:, 0], out[:, 1]  # source column and row of every output pixel
    # No rotation: columns rise along rows, rows down columns. A crop that left the picture
    # would fold back (reflection padding) and break the rise.
    assert (x.diff(dim=2) > -1e-3).all() and (y.diff(dim=1) > -1e-3).all()
    assert x.min() > -1e-3 and x.max() < side - 1 + 1e-3
    width = (x[:, :, -1] - x[:, :, 0]).mean(dim=1) / (side - 1)  # share of the picture's
    height = (y[:, -1, :] - y[:, 0, :]).mean(dim=1) / (side - 1)
    area, aspect = width * height, width / height
    assert (area >= crop_scale - 1e-3).all() and (area <= 1 + 1e-3).all(), area
    assert (aspect >= 3 / 4 - 1e-3).all() and (aspect <= 4 / 3 + 1e-3).all(), aspect
    assert area.max() - area.min() > (1 - crop_scale) / 2  # the areas do vary


def test_augment_rotation_turns_about_the_centre_within_the_bound() -> None:
    side = 33  # odd: one pixel sits on the centre of rotation
    batch = coordinate_batch(32, side)
    out = raw(batch, side, still(rotation=20.0), seed=4) * 255 / 8
    centre = side // 2
    torch.testing.assert_close(out[:, :2, centre, centre], torch.full((32, 2), float(centre)))
    # Along the middle row the source row changes by tan(angle) per column.
    row = out[:, 1, centre, centre - 8 : centre + 9]
    slope = (row[:, -1] - row[:, 0]) / 16
    angles = torch.rad2deg(torch.atan(slope))
    assert angles.abs().max() <= 20 + 0.5 and angles.abs().max() > 10, angles
    assert (angles > 1).any() and (angles < -1).any()  # either way


def test_jitter_strength_bounds_brightness_and_contrast() -> None:
    s = 0.3
    # Uniform grey pictures: only the brightness factor can change them.
    grey = torch.full((64, 8, 8, 3), 100, dtype=torch.uint8)
    ratio = raw(grey, 8, still(color_jitter=s), seed=5).mean(dim=(1, 2, 3)) / (100 / 255)
    assert (ratio >= 1 - s - 1e-5).all() and (ratio <= 1 + s + 1e-5).all(), ratio
    assert ratio.min() < 1 - s / 2 and ratio.max() > 1 + s / 2  # the whole range is used
    # A grey gradient: the spread changes by brightness x contrast, and grey stays grey
    # (saturation only scales the distance from grey).
    ramp = torch.arange(8, dtype=torch.uint8).view(1, 1, 8, 1).mul(10).add(90)
    out = raw(ramp.expand(64, 8, 8, 3).contiguous(), 8, still(color_jitter=s), seed=6)
    spread = out.std(dim=(1, 2, 3)) / as_float(ramp).std()
    assert (spread >= (1 - s) ** 2 - 1e-4).all() and (spread <= (1 + s) ** 2 + 1e-4).all()
    assert spread.max() - spread.min() > s
    torch.testing.assert_close(out[:, 0], out[:, 1])
    torch.testing.assert_close(out[:, 1], out[:, 2])


def test_augment_is_seeded() -> None:
    batch = random_batch(4, 24)
    a = augment(batch, 16, AugmentSettings(), torch.Generator().manual_seed(7))
    b = augment(batch, 16, AugmentSettings(), torch.Generator().manual_seed(7))
    c = augment(batch, 16, AugmentSettings(), torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert (a - c).abs().amax(dim=(1, 2, 3)).min() > 0.1  # every picture differs


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


def test_cutmix_is_deterministic_for_a_seed_and_leaves_its_input_alone() -> None:
    x, y = two_colour_batch()
    a = cutmix(x, y, torch.Generator().manual_seed(3))
    b = cutmix(x, y, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(x, two_colour_batch()[0])


@pytest.mark.slow
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
