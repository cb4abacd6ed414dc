"""Ranking with a head-only pretrained model reads the backbone features training stored
(catnet.labelling.cached_scores) and gives CatnetModel's own numbers: p(cat) with and without
flip-TTA, and the open-set scores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_dataset, write_class

from catnet.labelling.queue import score_and_check, untagged_pictures
from catnet.runtime.compute import Compute

pytestmark = pytest.mark.slow  # trains a pretrained model (about 10 s)


@pytest.fixture(name="head_only", scope="module")
def head_only_fixture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data folder with unlabeled/, best.pt of a head-only pretrained run in fp32)."""
    from catnet.config import TrainConfig
    from catnet.training.loop import train

    root = tmp_path_factory.mktemp("cached")
    data = make_dataset(root / "data", n_per_class=8)
    write_class(data / "unlabeled", "cats", 4, 24, start=100)
    write_class(data / "unlabeled", "dogs", 4, 24, start=100)
    (data / "unlabeled" / "broken.png").write_bytes(b"not a picture")
    cfg = TrainConfig(data=str(data), out=str(root / "run"), image_size=64, epochs=5,
                      precision="fp32", device="cpu", workers=1,
                      cache_dir=str(root / "cache"))  # fmt: skip
    return data, train(cfg).best_checkpoint


@pytest.fixture(name="cached_model")
def cached_model_fixture(head_only: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """(data folder, the head-only model loaded in fp32 as trained), with $CATNET_CACHE at the
    cache training filled, so ranking finds the stored features."""
    from catnet.predicting.prediction import load_model

    data, checkpoint = head_only
    monkeypatch.setenv("CATNET_CACHE", str(checkpoint.parent.parent / "cache"))
    model = load_model(checkpoint, device="cpu")
    model.compute = Compute(torch.device("cpu"), None)  # as trained: fp32
    return data, model


def test_cached_feature_scores_match_the_whole_network(cached_model) -> None:  # type: ignore[no-untyped-def]
    data, model = cached_model
    assert model.open_set is not None  # the scores below are compared too; the loop sets TTA
    paths = untagged_pictures(data / "unlabeled") + sorted((data / "cats").iterdir())
    for tta in (True, False):
        model.tta = tta
        whole = score_and_check(model, paths, cache=False)  # the backbone runs on every picture
        cached = score_and_check(model, paths)
        assert (
            set(cached.p_cat)
            == set(whole.p_cat)
            == set(paths) - {data / "unlabeled" / "broken.png"}
        )
        for p in whole.p_cat:
            assert cached.p_cat[p] == pytest.approx(whole.p_cat[p], abs=2e-3), (tta, p)
            assert cached.open_set[p] == pytest.approx(whole.open_set[p], abs=2e-3), (tta, p)


def test_a_rerank_does_not_run_the_backbone(cached_model) -> None:  # type: ignore[no-untyped-def]
    data, model = cached_model
    paths = untagged_pictures(data / "unlabeled") + sorted((data / "dogs").iterdir())
    first = score_and_check(model, paths)  # the untagged pictures' features get stored
    calls: list[int] = []
    for module in (model.module.backbone, model.inference_module.backbone):
        module.register_forward_hook(lambda *_: calls.append(1))
    again = score_and_check(model, paths)
    assert calls == [] and again.p_cat == first.p_cat and again.open_set == first.open_set


def test_models_that_train_the_backbone_still_run_it(
    head_only: tuple[Path, Path],
    cached_model,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    from catnet.labelling.cached_scores import head_only_scorer

    _, checkpoint = head_only
    _, model = cached_model
    assert head_only_scorer(model, checkpoint.parent) is not None
    monkeypatch.setitem(model.payload["train_config"], "train_stages", 1)
    assert head_only_scorer(model, checkpoint.parent) is None
    assert head_only_scorer(object(), checkpoint.parent) is None
