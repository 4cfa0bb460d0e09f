"""scripts/views_out_of_fold.py: the rule that picks a scoring side from out-of-fold accuracies."""

import pytest


def test_the_smallest_side_within_one_standard_error_of_the_best_is_picked(script):
    # the 224-px recipe's scan (5,712 images): 320 px best at 98.09 %, one SE 0.18 points, 272 px at 97.97 % within
    right = {224: 0.9729, 256: 0.9755, 272: 0.9797, 288: 0.9799, 320: 0.9809, 352: 0.9800}
    side, se = script("views_out_of_fold").smallest_within_one_se(right, 5712)
    assert side == 272
    assert se == pytest.approx((0.9809 * 0.0191 / 5712) ** 0.5)


def test_fewer_images_widen_the_band_and_a_clear_best_side_stands_alone(script):
    pick = script("views_out_of_fold").smallest_within_one_se
    right = {256: 0.970, 288: 0.975, 320: 0.978}
    assert pick(right, 100)[0] == 256  # SE 1.5 points: every side is within
    assert pick(right, 100_000)[0] == 320  # SE 0.05 points: only the best
    assert pick({320: 0.98, 256: 0.98}, 5712)[0] == 256  # a tie goes to the smaller side
