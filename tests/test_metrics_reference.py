"""catnet's ranking metrics and ECE against independent implementations: scikit-learn for ROC-AUC,
average precision and the ROC / PR curves, a plain numpy loop for ECE (sklearn has no ECE).

Random scores have no ties; tied scores (a handful of distinct values shared by both classes)
are where step-wise curves and rank averages differ between careless implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from catnet.scoring.calibration import expected_calibration_error
from catnet.scoring.metrics import pr_curve, roc_auc, roc_curve

TIE_VALUES = (0.0, 0.05, 0.3, 0.5, 0.62, 0.97, 1.0)  # none on a 15-bin edge but 0 and 1


def random_scores(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Continuous scores, cats a little higher: no two scores equal."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = 1 / (1 + np.exp(-(rng.normal(size=n) + labels)))
    return scores.astype(np.float32), labels


def tied_scores(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Seven distinct scores only, so most scores are tied, within and across classes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    index = np.clip(rng.integers(0, len(TIE_VALUES) - 1, n) + labels, 0, len(TIE_VALUES) - 1)
    return np.array(TIE_VALUES, dtype=np.float32)[index], labels


CASES = [(make, seed) for make in (random_scores, tied_scores) for seed in range(3)]
CASE_IDS = [f"{make.__name__}-{seed}" for make, seed in CASES]


@pytest.fixture(params=CASES, ids=CASE_IDS)
def scores(request: pytest.FixtureRequest) -> tuple[np.ndarray, np.ndarray]:
    make, seed = request.param
    probs, labels = make(seed)
    assert 0 < labels.sum() < len(labels)
    if make is tied_scores:
        assert len(np.unique(probs)) <= len(TIE_VALUES) < len(probs) // 10
    return probs, labels


def test_roc_auc_matches_sklearn(scores: tuple[np.ndarray, np.ndarray]) -> None:
    probs, labels = scores
    got = roc_auc(torch.from_numpy(probs), torch.from_numpy(labels))
    assert got == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)


def test_roc_curve_matches_sklearn(scores: tuple[np.ndarray, np.ndarray]) -> None:
    probs, labels = scores
    curve = roc_curve(torch.from_numpy(probs), torch.from_numpy(labels))
    fpr, tpr, thresholds = sk_roc_curve(labels, probs, drop_intermediate=False)
    np.testing.assert_allclose(curve["fpr"], fpr, atol=1e-12)
    np.testing.assert_allclose(curve["tpr"], tpr, atol=1e-12)
    # Both start at (0, 0) "nothing is a cat": sklearn labels that point inf, catnet 1.0 (a
    # probability); every later point sits at one distinct score.
    assert curve["thresholds"][0] == 1.0 and thresholds[0] == np.inf
    np.testing.assert_allclose(curve["thresholds"][1:], thresholds[1:], rtol=0, atol=0)


def test_pr_curve_and_average_precision_match_sklearn(
    scores: tuple[np.ndarray, np.ndarray],
) -> None:
    probs, labels = scores
    curve = pr_curve(torch.from_numpy(probs), torch.from_numpy(labels))
    precision, recall, thresholds = precision_recall_curve(labels, probs)
    # sklearn lists thresholds rising and closes the curve with (recall 0, precision 1); catnet
    # lists them falling, one point per distinct score, without that closing point.
    np.testing.assert_allclose(curve["precision"], precision[:-1][::-1], atol=1e-12)
    np.testing.assert_allclose(curve["recall"], recall[:-1][::-1], atol=1e-12)
    np.testing.assert_allclose(curve["thresholds"], thresholds[::-1], rtol=0, atol=0)
    # Average precision is the un-interpolated step sum  sum_n (R_n - R_(n-1)) P_n, as in
    # sklearn, not the trapezoid (which is optimistic) nor the 11-point interpolated VOC one.
    assert curve["average_precision"] == pytest.approx(
        average_precision_score(labels, probs), abs=1e-12
    )


def test_average_precision_of_a_perfect_and_an_all_cat_ranking() -> None:
    labels = torch.tensor([0, 0, 1, 1, 1])
    assert pr_curve(torch.tensor([0.1, 0.2, 0.7, 0.8, 0.9]), labels)["average_precision"] == 1.0
    # Every picture a cat: precision is 1 at every threshold, whatever the scores.
    assert pr_curve(torch.tensor([0.3, 0.3, 0.9]), torch.ones(3))["average_precision"] == 1.0
    # All tied: one point, precision = the share of cats, at recall 1.
    ap = pr_curve(torch.full((5,), 0.5), labels)["average_precision"]
    assert ap == pytest.approx(3 / 5) == average_precision_score(labels.numpy(), np.full(5, 0.5))


def numpy_ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Equal-width bins [k/bins, (k+1)/bins), the last one closed at 1; weighted mean gap
    |frequency of cats - mean p(cat)| over the non-empty bins."""
    probs, labels = probs.astype(np.float64), labels.astype(np.float64)
    index = np.minimum(np.floor(probs * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = index == b
        if inside.any():
            total += inside.mean() * abs(labels[inside].mean() - probs[inside].mean())
    return total


def test_ece_matches_a_numpy_loop(scores: tuple[np.ndarray, np.ndarray]) -> None:
    probs, labels = scores
    got = expected_calibration_error(torch.from_numpy(probs), torch.from_numpy(labels))
    assert got == pytest.approx(numpy_ece(probs, labels), abs=1e-6)
    assert got > 0.01  # neither set is calibrated: a zero would mean nothing was measured


@pytest.mark.parametrize("seed", range(3))
def test_ece_matches_sklearn_calibration_curve(seed: int) -> None:
    """sklearn's calibration_curve gives each non-empty bin's frequency and mean score; weighted
    by the bin counts that is the ECE. (sklearn puts a score that falls exactly on an edge in
    the lower bin, catnet in the upper one: random scores never do.)"""
    probs, labels = random_scores(seed, n=2000)
    frequency, confidence = calibration_curve(labels, probs, n_bins=15, strategy="uniform")
    counts = np.histogram(probs, bins=15, range=(0.0, 1.0))[0]
    weights = counts[counts > 0] / len(probs)
    expected = float((weights * np.abs(frequency - confidence)).sum())
    got = expected_calibration_error(torch.from_numpy(probs), torch.from_numpy(labels))
    assert got == pytest.approx(expected, abs=1e-6)


def test_ece_puts_zero_and_one_in_the_end_bins() -> None:
    # p = 1.0 must land in the last bin (not a 16th one): sure and right costs nothing.
    assert expected_calibration_error(torch.ones(4), torch.ones(4)) == 0.0
    assert expected_calibration_error(torch.zeros(4), torch.zeros(4)) == 0.0
    # One bin holding everything: the gap between the share of cats and the mean score.
    probs = torch.tensor([0.30, 0.31, 0.32, 0.33])
    expected = abs(0.5 - float(probs.double().mean()))
    assert expected_calibration_error(probs, torch.tensor([1, 0, 1, 0])) == pytest.approx(
        expected, abs=1e-6
    )
