"""The open-set check: a picture unlike every training picture is never "cat"."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ODD_NAME, OpenSetRun, catnet_cli

from catnet.config import EvaluateConfig, PredictConfig
from catnet.evaluating.evaluation import evaluate
from catnet.models.checkpoint import load_checkpoint, save_checkpoint
from catnet.predicting.prediction import load_model, predict
from catnet.scoring.openset import (
    KEY,
    OpenSetCheck,
    OpenSetFit,
    fit_open_set,
    mean_features,
)


def test_scores_are_distances_to_the_kth_nearest_training_picture() -> None:
    bank = torch.eye(4)  # four unit vectors, pairwise distance sqrt(2)
    check = OpenSetCheck(bank, k=1, threshold=0.5)
    scores = check.scores(torch.tensor([[2.0, 0, 0, 0], [1.0, 1.0, 0, 0]]))
    torch.testing.assert_close(scores, torch.tensor([0.0, (2 - 2 * 0.5**0.5) ** 0.5]))
    assert OpenSetCheck(bank, k=2, threshold=0).scores(torch.tensor([[1.0, 0, 0, 0]]))[0] > 1.4


def test_fit_puts_the_threshold_at_the_quantile_of_validation_scores() -> None:
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(300, 8, generator=gen) + 5  # one cloud away from the origin
    val = torch.randn(200, 8, generator=gen) + 5
    check = fit_open_set(
        train, val, OpenSetFit(k=5, quantile=0.9, bank_size=100, leave_one_out=False)
    )
    assert check.bank.shape == (100, 8)
    assert torch.allclose(check.bank.norm(dim=1), torch.ones(100), atol=1e-3)
    share_above = float((check.scores(val) > check.threshold).float().mean())
    assert 0.05 <= share_above <= 0.15
    far = torch.randn(50, 8, generator=gen) * 5  # centred elsewhere: every direction
    assert float((check.scores(far) > check.threshold).float().mean()) > 0.8
    restored = OpenSetCheck.from_payload(check.to_payload())
    assert restored is not None and restored.bank.dtype == torch.float32
    assert restored.threshold == check.threshold and restored.k == 5


def test_the_threshold_also_counts_each_bank_picture_left_out() -> None:
    # With k = 1, validation copies of bank pictures score 0, however unlike each other the
    # training pictures are; the bank's own leave-one-out scores tell how far a new one lies.
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(200, 16, generator=gen)
    val = train[:40].clone()
    blind_check = fit_open_set(train, val, OpenSetFit(k=1, quantile=0.9, leave_one_out=False))
    held_out = fit_open_set(train, val, OpenSetFit(k=1, quantile=0.9))
    assert blind_check.threshold < 0.05 < 0.5 < held_out.threshold  # 0.05: fp16 rounding
    new = torch.randn(200, 16, generator=gen)  # from the same distribution as the training
    assert float((held_out.scores(new) > held_out.threshold).float().mean()) < 0.25


def test_tta_features_average_the_picture_and_its_mirror() -> None:
    a, b = torch.ones(3, 2), torch.zeros(3, 2)
    torch.testing.assert_close(mean_features([a, b], 3), torch.full((3, 2), 0.5))
    with pytest.raises(ValueError):
        mean_features([a], 4)


@pytest.mark.slow
def test_unfamiliar_pictures_are_never_cat_and_cats_stay_cat(openset_run: OpenSetRun) -> None:
    model = load_model(openset_run.best)
    assert model.open_set is not None and model.open_set.bank.shape[0] == 64
    strange = sorted(openset_run.strange.iterdir())
    checked, unchecked = model.predict(strange), model.predict(strange, open_set=False)
    uniform = [p for p in checked if "uniform" in p.path or ODD_NAME in p.path]
    assert all(p.unfamiliar and p.label == "not_cat" for p in uniform)
    tagged_before = sum(p.label == "cat" for p in unchecked)
    tagged_after = sum(p.label == "cat" for p in checked)
    assert tagged_after <= 0.1 * len(strange) and tagged_after < tagged_before
    assert all(p.unfamiliar is None for p in unchecked)
    cats = sorted(openset_run.new_cats.iterdir())
    before = {p.path for p in model.predict(cats, open_set=False) if p.label == "cat"}
    after = {p.path for p in model.predict(cats) if p.label == "cat"}
    assert len(before) >= 10 and len(after & before) >= 0.9 * len(before)


@pytest.mark.slow
def test_unsure_range_labels_unfamiliar_pictures_unsure(openset_run: OpenSetRun) -> None:
    rows: list = []
    predict(openset_run.best, [str(openset_run.strange)], PredictConfig(workers=1),
            on_row=rows.append, unsure=(0.45, 0.55))  # fmt: skip
    assert all(r.label == "unsure" for r in rows if r.unfamiliar)
    assert any(r.unfamiliar for r in rows)


@pytest.mark.slow
def test_checkpoint_without_a_bank_predicts_with_the_check_off(
    openset_run: OpenSetRun, tmp_path: Path
) -> None:
    payload = load_checkpoint(openset_run.best)
    del payload[KEY]  # what a checkpoint from before the check looks like
    old = save_checkpoint(payload, tmp_path / "old.pt")
    model = load_model(old)
    assert model.open_set is None
    rows = model.predict(sorted(openset_run.strange.iterdir()))
    assert all(r.unfamiliar is None and r.unfamiliar_score is None for r in rows)
    result = evaluate(old, openset_run.strange.parent / "data", EvaluateConfig(workers=1))
    assert "open_set" not in result.metrics and result.unfamiliar is None


@pytest.mark.slow
def test_evaluate_reports_what_the_check_did(openset_run: OpenSetRun) -> None:
    data = openset_run.strange.parent / "data"
    on = evaluate(openset_run.best, data, EvaluateConfig(workers=1))
    off = evaluate(openset_run.best, data, EvaluateConfig(workers=1, open_set=False))
    assert "open_set" in on.metrics and "open_set" not in off.metrics
    assert on.unfamiliar is not None and len(on.unfamiliar) == on.metrics["n"]
    assert on.metrics["open_set"]["accuracy_without_check"] == pytest.approx(
        off.metrics["accuracy"]
    )


@pytest.mark.slow
def test_cli_csv_and_json_carry_the_flag_and_the_score(
    openset_run: OpenSetRun, tmp_path: Path
) -> None:
    out = tmp_path / "rows.csv"
    proc = catnet_cli("predict", openset_run.best, openset_run.strange, "-o", out)
    assert proc.returncode == 0, proc.stderr
    with out.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(list(openset_run.strange.iterdir()))
    odd = next(r for r in rows if Path(r["path"]).name == ODD_NAME)
    assert odd["unfamiliar"] == "true" and odd["label"] == "not_cat"
    assert all(r["unfamiliar"] in ("true", "false") and float(r["unfamiliar_score"]) >= 0
               for r in rows)  # fmt: skip
    proc = catnet_cli("predict", openset_run.best, openset_run.strange, "--json")
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {type(r["unfamiliar"]) for r in lines} == {bool}
    assert any(Path(r["path"]).name == ODD_NAME and r["unfamiliar"] for r in lines)
    proc = catnet_cli("predict", openset_run.best, openset_run.strange, "--json",
                      "--no-open-set")  # fmt: skip
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert all(r["unfamiliar"] is None and r["unfamiliar_score"] is None for r in lines)
    bad = catnet_cli("predict", openset_run.best, openset_run.strange, "--open-set", "off")
    assert bad.returncode == 2 and "--no-open-set" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_export_gains_the_score_as_a_second_output(openset_run: OpenSetRun, tmp_path: Path) -> None:
    from catnet.predicting.export import export, picture_batch, run_export_outputs

    pictures = sorted(openset_run.strange.iterdir())[:6]
    result = export(openset_run.best, "torchscript", tmp_path / "m.ts", pictures)
    assert result["max_abs_diff"] < 1e-3
    model = load_model(openset_run.best, device="cpu")
    _logits, scores = run_export_outputs("torchscript", tmp_path / "m.ts",
                                        picture_batch(model, pictures))  # fmt: skip
    expected = [p.unfamiliar_score for p in model.predict(pictures, tta=False)]
    np.testing.assert_allclose(scores, expected, atol=5e-3)  # BN folded in predict
    extra = {"catnet.json": ""}
    torch.jit.load(str(tmp_path / "m.ts"), _extra_files=extra)
    rule = json.loads(json.loads(extra["catnet.json"])["open_set"])
    assert rule["threshold"] == pytest.approx(model.open_set.threshold)


def test_the_check_pays_when_it_turns_away_no_more_cats_than_chance() -> None:
    from catnet.scoring.openset import Verdict, binomial_quantile

    assert binomial_quantile(160, 0.005, 0.95) == 2  # P(X <= 1) = 0.81, P(X <= 2) = 0.95
    assert binomial_quantile(10, 0.0, 0.95) == 0
    cats = torch.tensor([True] * 6 + [False] * 4)
    called = torch.tensor([True] * 5 + [False] + [True] + [False] * 3)  # one non-cat called cat
    away = torch.zeros(10, dtype=torch.bool)
    away[[0, 1]] = True  # two of the five cats the head had right
    verdict = Verdict.of(away, called, cats, quantile=0.95)  # by chance: Bin(5, 0.05) -> 1
    assert (verdict.cats_turned_away, verdict.wrong_turned_away, verdict.by_chance) == (2, 0, 1)
    assert not verdict.pays
    away[6] = True  # it also turns away the non-cat the head called cat: a net price of one
    assert Verdict.of(away, called, cats, quantile=0.95).pays


@pytest.mark.slow
def test_a_check_that_did_not_pay_is_off_by_default_and_info_says_so(
    openset_run: OpenSetRun, tmp_path: Path
) -> None:
    from catnet.models.info import describe

    payload = load_checkpoint(openset_run.best)
    assert "validation" in payload[KEY]  # training judged it
    payload[KEY].update(validation={"cats_turned_away": 5, "wrong_turned_away": 0,
                                    "by_chance": 1}, on=False)  # fmt: skip
    off = save_checkpoint(payload, tmp_path / "off.pt")
    strange = sorted(openset_run.strange.iterdir())
    model = load_model(off)
    assert not model.decision().checks and model.decision(open_set=True).checks
    assert all(p.unfamiliar is None for p in model.predict(strange))
    assert any(p.unfamiliar for p in model.predict(strange, open_set=True))
    assert describe(off)["open_set"]["on"] is False
    proc = catnet_cli("info", off)
    assert proc.returncode == 0, proc.stderr
    assert "open-set check: off by default" in proc.stdout and "turned away 5" in proc.stdout
    proc = catnet_cli("predict", off, openset_run.strange, "--open-set", "--json")
    assert proc.returncode == 0 and '"unfamiliar": true' in proc.stdout, proc.stderr
