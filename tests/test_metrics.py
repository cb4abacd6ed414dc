"""Metrics and calibration against hand computations and brute-force definitions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from catnet.scoring.calibration import expected_calibration_error, fit_temperature, nll
from catnet.scoring.metrics import binary_metrics, confusion, roc_auc


def brute_force_auc(probs: list[float], labels: list[int]) -> float:
    """P(score of a random positive > score of a random negative), ties count one half."""
    pos = [p for p, y in zip(probs, labels, strict=True) if y == 1]
    neg = [p for p, y in zip(probs, labels, strict=True) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_binary_metrics_by_hand() -> None:
    probs = torch.tensor([0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.7, 0.4])
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 0, 1])
    m = binary_metrics(probs, labels, threshold=0.5)
    # predicted cat: 0.9 0.8 0.6 0.7 -> tp=2 (0.9, 0.8), fp=2 (0.6, 0.7); fn=2 (0.3, 0.4); tn=2
    assert m["confusion"] == {"tp": 2, "fp": 2, "tn": 2, "fn": 2}
    assert m["n"] == 8
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.5)
    assert m["threshold"] == 0.5
    # positives 0.9 0.8 0.3 0.4 vs negatives 0.6 0.2 0.1 0.7: 0.9, 0.8 beat all 4; 0.3 and 0.4
    # beat 0.2 and 0.1 -> (4 + 4 + 2 + 2) / 16
    assert m["roc_auc"] == pytest.approx(12 / 16)


def test_binary_metrics_uneven_case() -> None:
    probs = torch.tensor([0.95, 0.55, 0.52, 0.45, 0.05])
    labels = torch.tensor([1, 0, 1, 1, 0])
    m = binary_metrics(probs, labels, threshold=0.5)
    assert m["confusion"] == {"tp": 2, "fp": 1, "tn": 1, "fn": 1}
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(3 / 5)


def test_threshold_is_inclusive_and_extremes() -> None:
    probs = torch.tensor([0.5, 0.49, 0.51])
    labels = torch.tensor([1, 0, 1])
    assert confusion(probs, labels, 0.5) == {"tp": 2, "fp": 0, "tn": 1, "fn": 0}
    everything = binary_metrics(probs, labels, threshold=0.0)
    assert everything["recall"] == 1.0 and everything["confusion"]["tn"] == 0
    nothing = binary_metrics(probs, labels, threshold=1.01)
    assert nothing["precision"] == 0.0 and nothing["recall"] == 0.0 and nothing["f1"] == 0.0


def test_degenerate_inputs() -> None:
    one_class = binary_metrics(torch.tensor([0.2, 0.9]), torch.tensor([1, 1]))
    assert math.isnan(one_class["roc_auc"])
    assert one_class["recall"] == 0.5
    empty = binary_metrics(torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert empty["n"] == 0 and empty["accuracy"] == 0.0


def test_roc_auc_perfect_inverted_and_constant() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    assert roc_auc(torch.tensor([0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert roc_auc(torch.tensor([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert roc_auc(torch.full((4,), 0.5), labels) == 0.5


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_with_ties_matches_the_pairwise_definition(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n = 200
    labels = torch.randint(0, 2, (n,), generator=gen)
    # 8 distinct values only, so ties within and across classes; cats score a notch higher
    probs = (torch.randint(0, 7, (n,), generator=gen) + labels).float() / 7
    expected = brute_force_auc(probs.tolist(), labels.tolist())
    assert roc_auc(probs, labels) == pytest.approx(expected, abs=1e-12)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 0.1, 0.9]), st.integers(0, 1)),
        min_size=2,
        max_size=40,
    ).filter(lambda rows: len({y for _, y in rows}) == 2)
)
def test_roc_auc_property(rows: list[tuple[float, int]]) -> None:
    probs, labels = zip(*rows, strict=True)
    got = roc_auc(torch.tensor(probs), torch.tensor(labels))
    assert got == pytest.approx(brute_force_auc(list(probs), list(labels)), abs=1e-9)


def synthetic_calibrated(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """True logits z and labels drawn with P(label=1) = sigmoid(z): calibrated by construction."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator=gen) * 2.5
    labels = (torch.rand(n, generator=gen) < torch.sigmoid(z)).long()
    return z, labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 3.0])
def test_fit_temperature_recovers_a_known_temperature(true_t: float) -> None:
    z, labels = synthetic_calibrated(5_000, seed=1)
    # An over- (T > 1) or under-confident (T < 1) network reports z * T; dividing by the
    # fitted temperature should undo it.
    fitted = fit_temperature(z * true_t, labels)
    assert fitted == pytest.approx(true_t, rel=0.1)
    assert nll(z * true_t, labels, fitted) <= nll(z * true_t, labels, 1.0) + 1e-9


def test_fit_temperature_without_information_is_one() -> None:
    assert fit_temperature(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1, 1, 1])) == 1.0
    assert fit_temperature(torch.tensor([1.0]), torch.tensor([0])) == 1.0


def test_fit_temperature_stays_in_its_range() -> None:
    logits = torch.tensor([-1.0, 1.0, -1.0, 1.0])
    labels = torch.tensor([0, 1, 0, 1])  # perfectly separable: wants T -> 0
    # ... but a handful of separable pictures does not justify sharpening below T = 0.5
    assert 0.5 <= fit_temperature(logits, labels) <= 0.53


def test_ece_of_calibrated_data_is_small() -> None:
    z, labels = synthetic_calibrated(20_000, seed=2)
    assert expected_calibration_error(torch.sigmoid(z), labels) < 0.02


def test_ece_of_overconfident_data_is_large() -> None:
    z, labels = synthetic_calibrated(20_000, seed=3)
    assert expected_calibration_error(torch.sigmoid(z * 4), labels) > 0.08


def test_ece_by_hand() -> None:
    probs = torch.tensor([0.9, 0.9, 0.1, 0.1])
    labels = torch.tensor([1, 0, 0, 0])
    # bin of 0.9: frequency 0.5, confidence 0.9 -> gap 0.4, weight 1/2; bin of 0.1: gap 0.1
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    assert expected_calibration_error(torch.zeros(0), torch.zeros(0)) == 0.0
