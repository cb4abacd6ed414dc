"""The full-batch head fit for small sets: the same optimum as scikit-learn's logistic
regression, per-photo weights that count as repeats, and which training path a run takes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_dataset
from torch import nn

from catnet.training.head_fit import HEAD_C, fit_head_full_batch


def blobs(n: int = 60, dim: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two overlapping Gaussian clouds: (n, dim) features and (n,) 0/1 labels."""
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % 2).long()
    x = torch.randn(n, dim, generator=gen) + labels[:, None].float() * 0.8
    return x, labels


def test_reaches_scikit_learns_logistic_regression_optimum() -> None:
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = blobs()
    head = nn.Linear(x.shape[1], 1)
    row = fit_head_full_batch(head, x, y, torch.ones(len(y)))
    reference = sklearn.LogisticRegression(C=HEAD_C, tol=1e-10, max_iter=10_000).fit(
        x.numpy(), y.numpy()
    )
    np.testing.assert_allclose(head.weight.detach().numpy(), reference.coef_, atol=2e-3)
    np.testing.assert_allclose(head.bias.detach().numpy(), reference.intercept_, atol=2e-3)
    assert row["train_acc"] == pytest.approx(reference.score(x.numpy(), y.numpy()))


def test_a_weight_of_two_is_the_same_as_showing_a_photo_twice() -> None:
    x, y = blobs(n=30)
    weights = torch.ones(len(y))
    weights[:5] = 2
    weighted, repeated = nn.Linear(x.shape[1], 1), nn.Linear(x.shape[1], 1)
    fit_head_full_batch(weighted, x, y, weights)
    fit_head_full_batch(repeated, torch.cat([x, x[:5]]), torch.cat([y, y[:5]]), torch.ones(35))
    torch.testing.assert_close(weighted.weight, repeated.weight, atol=1e-3, rtol=0)


@pytest.mark.slow
def test_small_sets_fit_full_batch_and_larger_ones_keep_the_epoch_loop(
    tmp_path: Path, tiny_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    from catnet.training import recipes
    from catnet.training.loop import train

    data = make_dataset(tmp_path / "d", n_per_class=8)
    cfg = dict(model="pretrained", image_size=64, epochs=3, batch_size=8)
    small = train(tiny_config(data, tmp_path / "small", tmp_path / "cache", **cfg))
    assert len(small.history) == 1 and "L-BFGS" in small.stop_reason
    assert small.best_checkpoint.exists()
    monkeypatch.setattr(recipes, "FULL_BATCH_PHOTOS", 0)  # as if the set were large
    large = train(tiny_config(data, tmp_path / "large", tmp_path / "cache", **cfg))
    assert len(large.history) == 3 and "L-BFGS" not in large.stop_reason


def test_out_of_fold_logits_never_see_their_own_photo() -> None:
    from types import SimpleNamespace

    from catnet.training.head_fit import out_of_fold_logits

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 64, generator=gen)  # 40 photos, 64 features: a head can learn any labels
    labels = (torch.arange(40) % 2).long()

    def oof(y: torch.Tensor) -> torch.Tensor:
        data = SimpleNamespace(train_labels=y.numpy(), train_repeat=None)
        cfg = SimpleNamespace(augment=True, tta=True, seed=0, label_smoothing=0.0)
        feats = SimpleNamespace(train=x, train_mirror=x.flip(1))
        return out_of_fold_logits(SimpleNamespace(data=data, cfg=cfg), feats)  # type: ignore[arg-type]

    logits = oof(labels)
    # random labels: a head fitted on all photos knows them, a held-out one can only guess
    head = nn.Linear(64, 1)
    fit_head_full_batch(head, x, labels, torch.ones(40))
    assert float(((head(x).squeeze(1) > 0).long() == labels).float().mean()) == 1.0
    assert float(((logits > 0).long() == labels).float().mean()) < 0.8
    x = x + labels[:, None].float() * 2  # learnable labels: held-out heads know them too
    assert float(((oof(labels) > 0).long() == labels).float().mean()) > 0.9


@pytest.mark.slow
def test_a_small_folder_calibrates_on_every_photo(
    tmp_path: Path, tiny_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    from catnet.training import finalize
    from catnet.training.loop import train

    seen: list[tuple[int, float]] = []  # (photos, temperature) of each fit
    fit = finalize.fit_temperature

    def recording(logits: torch.Tensor, labels: torch.Tensor) -> float:
        seen.append((len(labels), fit(logits, labels)))
        return seen[-1][1]

    monkeypatch.setattr(finalize, "fit_temperature", recording)
    data = make_dataset(tmp_path / "d", n_per_class=8)
    cfg = dict(model="pretrained", image_size=64, epochs=3, batch_size=8)
    result = train(tiny_config(data, tmp_path / "small", tmp_path / "cache", **cfg))
    # validation's few photos and every training photo's out-of-fold logit: all 16 photos,
    # and the checkpoint keeps that temperature (it was 1 below 100 validation photos)
    assert [n for n, _ in seen] == [16]
    payload = torch.load(result.best_checkpoint, weights_only=True)
    assert payload["temperature"] == pytest.approx(seen[0][1])
