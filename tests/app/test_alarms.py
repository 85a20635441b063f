"""Reward-hacking alarms (app.alarms): each statistic against a hand-computed value, and flags on synthetic rounds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app import alarms

RED, BLACK, WHITE = (255, 0, 0), (0, 0, 0), (255, 255, 255)


def tiny():
    # image 1: a red and a black pixel; image 2: two white pixels (a blank image)
    return np.array([[[RED, BLACK]], [[WHITE, WHITE]]], dtype=np.uint8)


def test_each_statistic_on_tiny_images_by_hand():
    stats = alarms.image_stats(tiny(), np.array([[0.0, 0.0], [3.0, 4.0]]))
    assert stats["n"] == 2
    # saturation (max-min)/max: red 1, black 0 (max 0), white 0, white 0 -> 1/4
    assert stats["saturation"] == pytest.approx(0.25)
    # luma: red 0.299 (not dark), black 0 (dark), white 1, white 1 -> 1/4
    assert stats["dark_fraction"] == pytest.approx(0.25)
    # image 1 has two colours half each (1 bit), image 2 one colour (0 bits) -> 0.5
    assert stats["colour_entropy"] == pytest.approx(0.5)
    # image 2's pixels do not vary: one blank image of two
    assert stats["blank_fraction"] == pytest.approx(0.5)
    # embeddings (0,0) and (3,4): distance 5
    assert stats["diversity_embedding"] == pytest.approx(5.0)
    # pixels [1,0,0,0,0,0] vs [1,1,1,1,1,1]: squared differences sum to 5 over 6 values -> rms sqrt(5/6)
    assert stats["diversity_pixels"] == pytest.approx(math.sqrt(5 / 6))


def test_diversity_is_the_mean_over_pairs():
    assert alarms.diversity_embedding(np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])) == pytest.approx((5 + 4 + 3) / 3)
    assert alarms.diversity_embedding(np.array([[1.0, 2.0]])) is None


def test_entropy_counts_64_bins_and_dark_uses_luma():
    # four pixels of four different quantised colours: 2 bits; a dark blue (0,0,200) has luma 0.089 < 0.1
    im = np.array([[[[0, 0, 200], [70, 0, 0], [0, 70, 0], [200, 200, 200]]]], dtype=np.uint8)
    assert alarms.colour_entropy(im / 255.0) == pytest.approx(2.0)
    # luma: (0,0,200) 0.114*200/255 = 0.089 and (70,0,0) 0.299*70/255 = 0.082 are dark;
    # (0,70,0) 0.587*70/255 = 0.161 and grey 200 are not
    assert alarms.dark_fraction(im / 255.0) == pytest.approx(2 / 4)


def _round(seed: int, n: int = 8, collapsed: bool = False):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 16, 16, 3), dtype=np.uint8)
    emb = rng.normal(size=(n, 32))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    if collapsed:
        images[:] = images[0]
        emb[:] = emb[0]
    return alarms.image_stats(images, emb)


def test_an_alarm_fires_on_a_collapsed_round_and_not_on_a_varied_one():
    rounds = {0: _round(0), 1: _round(1), 2: _round(2, collapsed=True)}
    assert rounds[2]["diversity_embedding"] == pytest.approx(0.0, abs=1e-6)
    assert rounds[2]["diversity_pixels"] == pytest.approx(0.0)
    flagged = alarms.flags(rounds)
    assert {f.round for f in flagged} == {2}
    names = {f.statistic for f in flagged}
    assert {"diversity_embedding", "diversity_pixels"} <= names
    div = next(f for f in flagged if f.statistic == "diversity_embedding")
    assert div.change == pytest.approx(-1.0, abs=1e-6)
    assert "diversity (image-encoder embeddings) fell 100%" in div.message()
    assert "round 2" in div.message()


def test_a_fall_against_the_previous_round_is_flagged_and_the_larger_change_is_reported():
    base = {"diversity_embedding": 1.0, "saturation": 0.3}
    rounds = {0: base, 1: {"diversity_embedding": 1.5, "saturation": 0.3}, 2: {"diversity_embedding": 1.05, "saturation": 0.3}}
    flagged = alarms.flags(rounds)
    assert len(flagged) == 1
    f = flagged[0]
    assert (f.round, f.statistic, f.reference_round) == (2, "diversity_embedding", 1)
    assert f.change == pytest.approx(-0.3)
    # a fall of 20% stays quiet at the default 25%, and fires at 15%
    quiet = {0: base, 1: {"diversity_embedding": 0.8}}
    assert alarms.flags(quiet) == []
    assert [f.statistic for f in alarms.flags(quiet, thresholds=alarms.Thresholds(diversity_drop=0.15))] == ["diversity_embedding"]


def test_statistic_jumps_and_large_kl_are_flagged_with_what_moved():
    rounds = {0: {"saturation": 0.2, "dark_fraction": 0.1, "colour_entropy": 4.0, "blank_fraction": 0.0},
              1: {"saturation": 0.5, "dark_fraction": 0.1, "colour_entropy": 2.5, "blank_fraction": 0.125}}
    flagged = {f.statistic: f for f in alarms.flags(rounds, {1: 3.0})}
    assert set(flagged) == {"saturation", "colour_entropy", "blank_fraction", "kl"}
    assert flagged["saturation"].change == pytest.approx(0.3)
    assert "mean saturation rose by 0.3 vs round 0" in flagged["saturation"].message()
    assert "colour entropy fell by 1.5 bits" in flagged["colour_entropy"].message()
    assert "KL to the round it was trained from is 3" in flagged["kl"].message()
    assert alarms.flags(rounds, {1: 0.5}, alarms.Thresholds(saturation_jump=0.4, entropy_jump=2, blank_jump=0.2)) == []


def test_a_rolled_back_round_is_compared_with_the_round_it_was_trained_from():
    """Round 3 trained from round 1 (a rollback): compared with round 2, the abandoned branch, a healthy round 3 was
    flagged ("fell by 0.3 vs round 2") and a drift from its true parent could hide. Found by review."""
    rounds = {0: {"saturation": 0.3}, 1: {"saturation": 0.3}, 2: {"saturation": 0.6}, 3: {"saturation": 0.3}}
    assert [(f.round, f.reference_round) for f in alarms.flags(rounds)] == [(2, 0), (3, 2)]  # without the parents
    assert [(f.round, f.reference_round) for f in alarms.flags(rounds, parents={3: 1})] == [(2, 0)]
    drifted = {**rounds, 1: {"saturation": 0.1}, 3: {"saturation": 0.3}}  # 0.2 from its parent, 0.0 from round 0
    (f,) = [f for f in alarms.flags(drifted, parents={3: 1}) if f.round == 3]
    assert f.reference_round == 1 and f.change == pytest.approx(0.2)


def test_flags_from_stored_metrics():
    metrics = {0: {"eval": {"image_stats": _round(0)}}, 1: {"eval": {"image_stats": _round(1, collapsed=True), "kl_to_prev": 0.2}},
               2: {"train": {}}, 3: None}
    assert {f.round for f in alarms.flags_from_metrics(metrics)} == {1}


def test_thresholds_from_the_environment_and_bad_input():
    t = alarms.Thresholds.from_env({"SEIKO_ALARM_DIVERSITY_DROP": "0.4", "SEIKO_ALARM_KL_MAX": ""})
    assert t.diversity_drop == 0.4 and t.kl_max == alarms.Thresholds().kl_max
    with pytest.raises(ValueError, match="SEIKO_ALARM_KL_MAX must be a number"):
        alarms.Thresholds.from_env({"SEIKO_ALARM_KL_MAX": "lots"})
    with pytest.raises(ValueError, match="at least 0"):
        alarms.Thresholds(diversity_drop=-1)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        alarms.image_stats(np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        alarms.image_stats(np.full((1, 2, 2, 3), 2.0))
    with pytest.raises(ValueError, match="2 images but 3 embeddings"):
        alarms.image_stats(tiny(), np.zeros((3, 2)))


@pytest.mark.parametrize("name", ["DIVERSITY_DROP", "SATURATION_JUMP", "DARK_JUMP", "BLANK_JUMP"])
def test_a_fraction_threshold_of_one_or_more_is_refused(name):
    """SEIKO_ALARM_DIVERSITY_DROP=25 (meant as 25%) was accepted and switched the alarm off for good: no fraction
    moves by more than 1 (found by review). Entropy (bits) and the KL limit have no such bound."""
    with pytest.raises(ValueError, match=rf"alarm threshold {name.lower()} is a fraction \(0\.25 means 25%\) below 1"):
        alarms.Thresholds.from_env({f"SEIKO_ALARM_{name}": "25"})
    alarms.Thresholds.from_env({f"SEIKO_ALARM_{name}": "0.99", "SEIKO_ALARM_ENTROPY_JUMP": "3", "SEIKO_ALARM_KL_MAX": "50"})
