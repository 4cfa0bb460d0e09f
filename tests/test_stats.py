"""Bootstrap intervals, paired comparisons and split-conformal prediction sets on known cases."""

import math

import numpy as np
import pytest

from brainlib import calibration, stats

CLASSES = ("a", "b", "c", "d")


def test_accuracy_interval_matches_the_binomial_width_and_is_seeded():
    y = np.zeros(1000, int)
    y_hat = np.where(np.arange(1000) < 900, 0, 1)  # exactly 90 % right
    conf = np.full(1000, 0.9)
    first = stats.metric_intervals(y, y_hat, conf, CLASSES, seed=3)
    low, high = first["accuracy"]
    half_width = 1.96 * math.sqrt(0.9 * 0.1 / 1000)  # normal approximation: 1.86 points
    assert low < 0.9 < high
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.15)
    assert stats.metric_intervals(y, y_hat, conf, CLASSES, seed=3) == first
    assert first["recall_a"] == pytest.approx([low, high])  # one class: recall is accuracy
    assert first["ece"][0] < 0.02  # confidence 0.9, accuracy 0.9
    shuffled = np.random.default_rng(0).permutation(y_hat)  # the same count in another order
    assert stats.metric_intervals(y, shuffled, conf, CLASSES, seed=3)["accuracy"] == pytest.approx(
        [low, high], abs=0.003
    )


def test_a_perfect_class_has_a_degenerate_interval_and_the_leakage_free_subset_is_resampled_alone():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 500)
    y_hat = np.where((y == 3) | (rng.random(500) < 0.8), y, (y + 1) % 3)
    clean = y == 3  # only the perfect class
    out = stats.metric_intervals(y, y_hat, rng.random(500), CLASSES, leakage_free=clean)
    assert out["recall_d"] == [1.0, 1.0] and out["accuracy_leakage_free"] == [1.0, 1.0]
    assert out["accuracy"][1] < 0.95


def test_vectorised_ece_equals_the_binned_table():
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.25, 1, 700)
    correct = rng.random(700) < conf**2
    bins = calibration.calibration_bins(conf, correct)
    used = bins[bins["count"] > 0]
    expected = (used["count"] * (used["accuracy"] - used["confidence"]).abs()).sum() / len(conf)
    assert stats.ece(conf, correct) == pytest.approx(expected)


def test_mcnemar_exact_and_the_paired_difference():
    a = np.ones(100, bool)
    b = np.ones(100, bool)
    b[:10] = False  # ten images only a gets right
    out = stats.paired_comparison(a, b)
    assert out["only_a_correct"] == 10 and out["only_b_correct"] == 0
    assert out["mcnemar_exact_p"] == pytest.approx(2 * 0.5**10)
    assert out["difference"] == pytest.approx(0.1) and out["difference_interval"][0] > 0
    same = stats.paired_comparison(a, a)
    assert same["mcnemar_exact_p"] == 1.0 and same["difference_interval"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="same images"):
        stats.paired_comparison(a, a[:50])
    # one image has no interval, but still a difference and a test (a part of a split can be that small)
    one = stats.paired_comparison(a[:1], b[:1])
    assert one["difference"] == 1.0 and np.isnan(one["difference_interval"]).all() and one["only_a_correct"] == 1


def _calibrated_scores(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities from a Dirichlet and labels drawn from them: a calibrated classifier."""
    probs = rng.dirichlet([0.3] * 4, size=n)
    labels = (rng.random((n, 1)) > probs.cumsum(1)).sum(1).clip(0, 3)
    return probs, labels


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2])
def test_split_conformal_sets_cover_at_the_promised_rate(alpha):
    rng = np.random.default_rng(7)
    cal_p, cal_y = _calibrated_scores(3000, rng)
    test_p, test_y = _calibrated_scores(30_000, rng)
    threshold = calibration.conformal_threshold(cal_p, cal_y, alpha)
    sets = calibration.prediction_sets(test_p, threshold)
    covered = calibration.set_coverage(sets, test_y)
    # coverage 1 - alpha <= E[cov] <= 1 - alpha + 1/(n+1); the rest is sampling noise of 30,000 images
    assert 1 - alpha - 0.006 <= covered["coverage"] <= 1 - alpha + 1 / 3001 + 0.006
    assert sets.sum(1).min() >= 1
    assert covered["mean_set_size"] > 1 and 0 < covered["share_uncertain"] < 1


def test_too_few_calibration_images_give_every_class():
    probs = np.array([[0.7, 0.1, 0.1, 0.1]] * 50)
    assert calibration.conformal_threshold(probs, np.zeros(50, int), 0.01) == 1.0  # rank 51 of 50
    assert calibration.prediction_sets(probs, 1.0).all()
    assert calibration.set_coverage(np.zeros((0, 4), bool), np.zeros(0, int))["coverage"] is None


def test_coverage_by_class_counts_each_class_with_an_exact_interval():
    labels = np.array([0] * 10 + [1] * 4 + [3] * 6)  # no image of class 2
    sets = np.zeros((len(labels), 4), bool)
    sets[np.arange(len(labels)), labels] = True
    sets[:3, 0] = False  # three glioma sets miss their class
    rows = calibration.coverage_by_class(sets, labels)
    assert [r["class"] for r in rows] == ["glioma", "meningioma", "notumor", "pituitary"]
    assert [(r["n"], r["covered"]) for r in rows] == [(10, 7), (4, 4), (0, 0), (6, 6)]
    assert rows[0]["coverage"] == 0.7 and rows[2]["coverage"] is None and rows[2]["interval"] is None
    low, high = rows[0]["interval"]
    assert low < 0.7 < high and math.isclose(low, 0.3475, abs_tol=1e-4) and math.isclose(high, 0.9333, abs_tol=1e-4)
    # all 4 covered: the exact lower bound is (0.025)^(1/4), not the point a bootstrap collapses to
    assert rows[1]["interval"][1] == 1.0 and math.isclose(rows[1]["interval"][0], 0.025 ** (1 / 4))


def test_coverage_text_gives_every_class_each_class_and_the_set_sizes_in_one_line():
    labels = np.array([0] * 10 + [1] * 4 + [3] * 6)  # no image of class 2
    sets = np.zeros((len(labels), 4), bool)
    sets[np.arange(len(labels)), labels] = True
    sets[:3, 0] = False  # three glioma sets miss their class
    sets[10:12, 2] = True  # two meningioma sets also hold "no tumour"
    text = calibration.coverage_text(sets, labels)
    assert text.startswith("every class 0.8500 [")
    assert "(n=20); glioma 0.7000 [0.348, 0.933] (n=10); meningioma 1.0000" in text
    assert "; notumor - (n=0); pituitary 1.0000" in text
    assert text.endswith("; mean size 0.950, 10.0% uncertain")  # 3 empty sets, 2 of two classes
    assert calibration.coverage_text(np.zeros((0, 4), bool), np.zeros(0, int)).endswith("no sets")
