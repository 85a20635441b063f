"""Tests for seiko_core.optimism: exact numbers on hand-made tensors, the UCB bonus against the brute-force formula."""

from __future__ import annotations

import math

import pytest
import torch

from seiko_core.config import OptimismConfig, RewardConfig
from seiko_core.optimism import (
    OPTIMISM,
    LinearUCB,
    aggregate,
    balance_factor,
    fit_bonus,
    max_over_heads,
    optimistic_reward,
    thompson_draw,
)
from seiko_core.reward import RewardEnsemble, fit_reward

PREDS = torch.tensor([[1.0, 3.0], [2.0, 0.0]])


# --- aggregations ------------------------------------------------------------------------------------------------------


def test_max_over_heads_exact():
    assert torch.equal(max_over_heads(torch.tensor([[1.0, 3.0], [2.0, 0.0]])), torch.tensor([3.0, 2.0]))
    assert torch.equal(aggregate(PREDS, "max"), torch.tensor([3.0, 2.0]))


def test_mean_exact():
    assert torch.equal(aggregate(PREDS, "mean"), torch.tensor([2.0, 1.0]))


def test_softmax_exact_and_limits():
    # row [1, 3], tau = 1: weights e^1 / (e^1 + e^3), e^3 / (e^1 + e^3)
    e1, e3 = math.exp(1.0), math.exp(3.0)
    row0 = (1.0 * e1 + 3.0 * e3) / (e1 + e3)
    row1 = (2.0 * math.exp(2.0) + 0.0) / (math.exp(2.0) + 1.0)
    torch.testing.assert_close(aggregate(PREDS, "softmax", temperature=1.0), torch.tensor([row0, row1]))
    # tau = 2 halves the logits
    e_half, e_3half = math.exp(0.5), math.exp(1.5)
    torch.testing.assert_close(aggregate(PREDS[:1], "softmax", temperature=2.0), torch.tensor([(e_half + 3 * e_3half) / (e_half + e_3half)]))
    torch.testing.assert_close(aggregate(PREDS, "softmax", temperature=1e-3), torch.tensor([3.0, 2.0]))  # -> max
    torch.testing.assert_close(aggregate(PREDS, "softmax", temperature=1e6), torch.tensor([2.0, 1.0]), atol=1e-5, rtol=0)  # -> mean


def test_ucb_heads_exact_population_std():
    # population std of [1, 3] and [2, 0] is 1 for both rows
    assert torch.equal(aggregate(PREDS, "ucb_heads", beta=1.0), torch.tensor([3.0, 2.0]))
    assert torch.equal(aggregate(PREDS, "ucb_heads", beta=0.5), torch.tensor([2.5, 1.5]))
    preds = torch.tensor([[0.0, 0.0, 3.0, 3.0]])  # mean 1.5, population std 1.5
    assert torch.equal(aggregate(preds, "ucb_heads", beta=2.0), torch.tensor([4.5]))
    assert torch.equal(aggregate(torch.tensor([[4.0]]), "ucb_heads"), torch.tensor([4.0]))  # one head: std 0, not NaN


def test_thompson_sample_is_one_fixed_function_with_the_heads_moments():
    """One draw z is one function of the input: the same on every call (a new head per micro-batch would average
    to the mean over an optimiser step). Over draws, its mean is the heads' mean and its variance the heads'
    unbiased variance (checked by Monte Carlo against the closed form)."""
    preds = torch.tensor([[10.0, 20.0, 30.0], [11.0, 25.0, 31.0], [12.0, 22.0, 50.0]])
    z = thompson_draw(3, torch.Generator().manual_seed(5))
    first = aggregate(preds, "thompson", draw=z)
    assert all(torch.equal(first, aggregate(preds, "thompson", draw=z)) for _ in range(5))
    # closed form for this z
    mean = preds.mean(1)
    torch.testing.assert_close(first, mean + (preds - mean[:, None]) @ z.float() / math.sqrt(2))
    # moments over many draws
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([aggregate(preds, "thompson", draw=thompson_draw(3, g)) for _ in range(4000)])
    torch.testing.assert_close(draws.mean(0), mean, atol=0.6, rtol=0)
    torch.testing.assert_close(draws.var(0), preds.var(1), rtol=0.1, atol=0)
    # reproducible from the seed, and refused without a draw
    assert torch.equal(thompson_draw(3, torch.Generator().manual_seed(5)), z)
    with pytest.raises(ValueError, match="posterior draw"):
        aggregate(preds, "thompson")
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        aggregate(preds, "thompson", draw=torch.zeros(2))
    assert torch.equal(aggregate(preds[:, :1], "thompson", draw=torch.ones(1)), preds[:, 0])  # one head: that head


def test_two_thompson_rounds_differ_by_the_posterior_spread_not_by_stream_shifts(fitted):
    """Two TS rounds (two seeds) on the same fitted ensemble give rewards that differ by a real fraction of the
    ensemble's spread across heads. Stated bound: mean |r_a - r_b| >= 0.3 x mean across-head std."""
    from seiko_core.config import SeikoConfig
    from seiko_core.loop import posterior_draw

    ensemble, x = fitted
    cfg = SeikoConfig(optimism=OptimismConfig(aggregation="thompson"))
    with torch.no_grad():
        spread = float(ensemble(x).std(1).mean())
        ra = optimistic_reward(ensemble, x, cfg.optimism, draw=posterior_draw(cfg, ensemble.num_heads, seed=1))
        rb = optimistic_reward(ensemble, x, cfg.optimism, draw=posterior_draw(cfg, ensemble.num_heads, seed=2))
    assert spread > 1e-3
    assert float((ra - rb).abs().mean()) >= 0.3 * spread


def test_unknown_aggregation_lists_choices():
    with pytest.raises(ValueError) as err:
        aggregate(PREDS, "median")
    assert str(err.value) == "unknown optimism 'median'; choose from ['max', 'mean', 'softmax', 'thompson', 'ucb_heads']"
    assert sorted(OPTIMISM) == ["max", "mean", "softmax", "thompson", "ucb_heads"]


def test_aggregations_reject_bad_shapes_and_are_differentiable():
    with pytest.raises(ValueError, match=r"shape \(B, H\)"):
        aggregate(torch.ones(3), "mean")
    for name in OPTIMISM:
        preds = torch.tensor([[1.0, 3.0], [2.0, 0.0]], requires_grad=True)
        aggregate(preds, name, draw=torch.tensor([0.7, -1.2])).sum().backward()
        assert preds.grad is not None and preds.grad.abs().sum() > 0, name


# --- linear UCB --------------------------------------------------------------------------------------------------------


def brute_force_bonus(features, queries, form, lam, alpha, clip):
    f = features.double()
    eye = torch.eye(f.shape[1], dtype=torch.float64)
    if form == "textbook":
        a = lam * eye + f.T @ f
    else:
        c = f - f.mean(dim=0)
        a = c.T @ c / f.shape[0] + lam * eye
    a_inv = torch.linalg.inv(a)
    q = queries.double()
    return torch.clamp(alpha * torch.sqrt(torch.einsum("bi,ij,bj->b", q, a_inv, q)), max=clip)


@pytest.mark.parametrize("form", ["textbook", "covariance"])
def test_ucb_bonus_matches_brute_force(form):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(50, 6, generator=g) @ torch.randn(6, 6, generator=g)
    queries = torch.randn(7, 6, generator=g)
    ucb = LinearUCB.fit(features, form=form, lam=1e-3, alpha=0.3, clip=1e9)
    torch.testing.assert_close(ucb.bonus(queries).double(), brute_force_bonus(features, queries, form, 1e-3, 0.3, 1e9), rtol=1e-5, atol=1e-7)
    assert ucb.bonus(queries).dtype == torch.float32 and ucb.n == 50


def test_textbook_bonus_shrinks_with_data_covariance_does_not():
    g = torch.Generator().manual_seed(0)
    pool = torch.randn(3200, 4, generator=g)
    queries = torch.randn(64, 4, generator=g)
    sizes = (50, 200, 800, 3200)
    textbook = [float(LinearUCB.fit(pool[:n], form="textbook", clip=1e9).bonus(queries).mean()) for n in sizes]
    covariance = [float(LinearUCB.fit(pool[:n], form="covariance", clip=1e9).bonus(queries).mean()) for n in sizes]
    assert all(a > b for a, b in zip(textbook, textbook[1:]))
    assert 0.09 < textbook[-1] / textbook[0] < 0.17  # ~ sqrt(50 / 3200) = 0.125
    assert 0.75 < covariance[-1] / covariance[0] < 1.33  # no systematic shrinkage


def test_ucb_clip():
    features = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    queries = torch.tensor([[1e3, 0.0, 0.0], [0.0, 0.0, 0.0]])
    ucb = LinearUCB.fit(features, form="textbook", alpha=1.0, clip=2.5)
    assert torch.equal(ucb.bonus(queries), torch.tensor([2.5, 0.0]))


def test_ucb_gradient_flows_to_features():
    ucb = LinearUCB.fit(torch.randn(20, 3, generator=torch.Generator().manual_seed(0)), form="textbook", alpha=1.0, clip=1e9)
    f = torch.tensor([[0.3, -0.2, 0.5], [0.0, 0.0, 0.0]], requires_grad=True)
    ucb.bonus(f).sum().backward()
    assert f.grad[0].abs().sum() > 0
    assert torch.equal(f.grad[1], torch.zeros(3))  # finite (zero) at f = 0, not NaN
    # analytic gradient of alpha * sqrt(f^T A^-1 f): alpha * A^-1 f / sqrt(f^T A^-1 f)
    a_inv = torch.cholesky_inverse(ucb.chol)
    f0 = f.detach()[0].double()
    expected = (a_inv @ f0) / torch.sqrt(f0 @ a_inv @ f0)
    torch.testing.assert_close(f.grad[0].double(), expected, rtol=1e-5, atol=1e-7)


def test_ucb_invalid_inputs():
    with pytest.raises(ValueError, match="unknown bonus form 'ridge'; choose from"):
        LinearUCB.fit(torch.randn(4, 2), form="ridge")
    with pytest.raises(ValueError, match="lam must be positive"):
        LinearUCB.fit(torch.randn(4, 2), lam=0.0)
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        LinearUCB.fit(torch.randn(4, 2)).bonus(torch.randn(3, 5))


def test_ucb_save_load_round_trip_and_corrupt(tmp_path):
    ucb = LinearUCB.fit(torch.randn(30, 5, generator=torch.Generator().manual_seed(0)), form="covariance", alpha=0.2, clip=3.0)
    ucb.save(tmp_path / "ucb")
    loaded = LinearUCB.load(tmp_path / "ucb")
    q = torch.randn(4, 5)
    assert torch.equal(loaded.bonus(q), ucb.bonus(q))
    assert (loaded.form, loaded.lam, loaded.alpha, loaded.clip, loaded.n) == ("covariance", 1e-3, 0.2, 3.0, 30)
    (tmp_path / "ucb" / "ucb.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        LinearUCB.load(tmp_path / "ucb")


# --- the optimistic reward ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 8, generator=g)
    y = x.sum(dim=1) + 0.1 * torch.randn(40, generator=g)
    cfg = RewardConfig(num_heads=3, hidden=(16, 4), dropout=(0.1,), lr=1e-2, batch_size=16, max_epochs=10, patience=5)
    return fit_reward(x, y, cfg, seed=0).ensemble, x


def test_optimistic_reward_aggregates_heads(fitted):
    ensemble, x = fitted
    preds = ensemble(x)
    torch.testing.assert_close(optimistic_reward(ensemble, x, OptimismConfig(aggregation="max")), preds.max(dim=1).values)
    torch.testing.assert_close(optimistic_reward(ensemble, x, OptimismConfig(aggregation="mean")), preds.mean(dim=1))
    z = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    out = optimistic_reward(ensemble, x, OptimismConfig(aggregation="thompson"), draw=z)
    m = preds.mean(dim=1)
    torch.testing.assert_close(out, m + ((preds[:, 0] - m) - (preds[:, 2] - m)) / math.sqrt(2))


def test_optimistic_reward_with_bonus_is_differentiable(fitted):
    ensemble, x = fitted
    cfg = OptimismConfig(aggregation="mean", bonus="textbook", bonus_alpha=0.5)
    ucb = fit_bonus(ensemble, x, cfg)
    assert isinstance(ucb, LinearUCB) and ucb.form == "textbook" and ucb.feature_dim == 4
    emb = torch.randn(5, 8, requires_grad=True)
    reward = optimistic_reward(ensemble, emb, cfg, ucb=ucb)
    expected = ensemble(emb).mean(dim=1) + ucb.bonus(ensemble.features(emb))
    torch.testing.assert_close(reward, expected)
    reward.sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_optimistic_reward_bonus_errors(fitted):
    ensemble, x = fitted
    assert fit_bonus(ensemble, x, OptimismConfig(bonus=None)) is None
    with pytest.raises(ValueError, match="no LinearUCB was given"):
        optimistic_reward(ensemble, x, OptimismConfig(bonus="textbook"))
    cov = fit_bonus(ensemble, x, OptimismConfig(bonus="covariance"))
    with pytest.raises(ValueError, match="the LinearUCB given is 'covariance'"):
        optimistic_reward(ensemble, x, OptimismConfig(bonus="textbook"), ucb=cov)
    with pytest.raises(ValueError, match="has no bonus"):
        optimistic_reward(ensemble, x, OptimismConfig(bonus=None), ucb=cov)


def test_train_mode_ensemble_is_refused():
    ensemble = RewardEnsemble(8, RewardConfig(num_heads=2, hidden=(4,), dropout=(0.5,)), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="train mode"):
        optimistic_reward(ensemble.train(), torch.randn(2, 8), OptimismConfig(aggregation="mean"))


# --- the bonus's calibration -------------------------------------------------------------------------------------------


def _fit_on_scale(scale: float, n: int, seed: int = 0):
    """An ensemble fitted on n ratings that are ``scale`` times a fixed function of 16-d embeddings, plus noise."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, generator=torch.Generator().manual_seed(99))
    x = torch.nn.functional.normalize(torch.randn(n, 16, generator=g), dim=1)
    y = scale * (x @ w + 0.3 * torch.randn(n, generator=g))
    cfg = RewardConfig(num_heads=4, hidden=(64, 16), dropout=(0.1,), max_epochs=100, patience=10)
    return fit_reward(x, y, cfg, seed=seed).ensemble, x, y


def test_textbook_bonus_at_32_labels_is_a_stated_share_of_the_reward_spread_and_shrinks_with_n():
    """Stated: with the calibrated default (alpha = 1 rating std), the mean textbook bonus on fresh images at
    n = 32 labels lies between 0.2 and 1.5 stds of the ratings (non-negligible against the reward's spread, not
    larger than a few stds), and at n = 512 it is less than half of that at n = 32 (it shrinks like 1/sqrt(n))."""
    cfg = OptimismConfig(aggregation="mean", bonus="textbook")
    assert cfg.alpha() == 1.0
    fresh = torch.nn.functional.normalize(torch.randn(256, 16, generator=torch.Generator().manual_seed(7)), dim=1)
    share = {}
    for n in (32, 512):
        ens, x, y = _fit_on_scale(1.0, n)
        ucb = fit_bonus(ens, x, cfg)
        with torch.no_grad():
            share[n] = float(ucb.bonus(ens.features(fresh)).mean()) / float(y.std(correction=0))
    assert 0.2 <= share[32] <= 1.5, share
    assert share[512] < 0.5 * share[32], share


@pytest.mark.parametrize("form", ["textbook", "covariance"])
def test_bonus_is_in_rating_units_the_same_on_any_scale(form):
    """The bonus counts rating stds: ratings 10x larger (a 1-10 scale against an oracle's 0-1) give a bonus 10x
    larger, so optimism means the same against the predicted reward whatever the rater's scale."""
    cfg = OptimismConfig(aggregation="mean", bonus=form)
    bonuses = []
    for scale in (1.0, 10.0):
        ens, x, _ = _fit_on_scale(scale, 64)
        ucb = fit_bonus(ens, x, cfg)
        with torch.no_grad():
            bonuses.append(ucb.bonus(ens.features(x)))
    torch.testing.assert_close(bonuses[1], 10 * bonuses[0], rtol=2e-3, atol=0)


def test_softmax_optimism_is_the_same_on_any_rating_scale():
    """The softmax temperature was in raw rating units: ratings x1, x10, x100 made tau = 1 give 5%, 47% and 96% of
    max-over-heads' optimism (found by review). It counts rating stds now: where softmax lies between the mean and
    the max is the same on every scale."""
    shares = []
    for scale in (1.0, 10.0, 100.0):
        ens, x, _ = _fit_on_scale(scale, 64)
        with torch.no_grad():
            soft, mean, top = (optimistic_reward(ens, x, OptimismConfig(aggregation=a)) for a in ("softmax", "mean", "max"))
        shares.append(float((soft - mean).sum() / (top - mean).sum()))
    assert 0.05 < shares[0] < 0.95  # between the two, not at either end
    assert shares[1] == pytest.approx(shares[0], rel=1e-3) and shares[2] == pytest.approx(shares[0], rel=1e-3)


# --- the bonus bounded by the predicted reward's spread (bonus_balance) -----------------------------------------------


def test_balance_factor_hand_computed():
    pred = torch.tensor([0.0, 2.0])  # std (n - 1) = sqrt(2)
    wide = torch.tensor([0.0, 8.0])  # std = 4 sqrt(2)
    assert balance_factor(pred, wide, 1.0) == pytest.approx(0.25)
    assert balance_factor(pred, wide, 0.5) == pytest.approx(0.125)
    assert balance_factor(pred, torch.tensor([1.0, 2.0]), 1.0) == 1.0  # already within: never scaled up
    assert balance_factor(pred, torch.tensor([3.0, 3.0]), 1.0) == 1.0  # a constant bonus has no spread to bound
    assert balance_factor(torch.tensor([1.0]), torch.tensor([5.0]), 1.0) == 1.0  # one point: no spread is defined
    with pytest.raises(ValueError, match=r"two \(N,\) tensors"):
        balance_factor(pred, torch.zeros(3), 1.0)


@pytest.mark.parametrize("form", ["textbook", "covariance"])
def test_balanced_bonus_spread_is_kappa_times_the_predicted_spread(form):
    """Measured independently on the fitted objects: with bonus_balance = kappa, the bonus's std over the feedback set
    is min(its unbalanced std, kappa * std of the mean prediction there); the bonus keeps its shape (one factor)."""
    ens, x, _ = _fit_on_scale(1.0, 32)
    plain = fit_bonus(ens, x, OptimismConfig(aggregation="mean", bonus=form))
    with torch.no_grad():
        s_pred = float(ens(x).mean(dim=1).std())
        g_plain = plain.bonus(ens.features(x))
    assert float(g_plain.std()) > 0.05 * s_pred  # so that the small kappa below binds
    for kappa in (0.05, 1e6):
        bal = fit_bonus(ens, x, OptimismConfig(aggregation="mean", bonus=form, bonus_balance=kappa))
        with torch.no_grad():
            g = bal.bonus(ens.features(x))
        expected_std = min(float(g_plain.std()), kappa * s_pred)
        assert float(g.std()) == pytest.approx(expected_std, rel=1e-4)
        torch.testing.assert_close(g, g_plain * bal.balance, rtol=1e-5, atol=1e-7)
    assert bal.balance == 1.0  # kappa = 1e6: within, untouched


def test_balance_survives_save_and_load(tmp_path):
    ens, x, _ = _fit_on_scale(1.0, 32)
    ucb = fit_bonus(ens, x, OptimismConfig(aggregation="mean", bonus="textbook", bonus_balance=0.05))
    assert ucb.balance < 1.0
    ucb.save(tmp_path / "ucb")
    loaded = LinearUCB.load(tmp_path / "ucb")
    q = torch.randn(4, 16)
    assert loaded.balance == ucb.balance
    assert torch.equal(loaded.bonus(q), ucb.bonus(q))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_bonus_balance_must_be_positive(bad):
    with pytest.raises(ValueError, match="bonus_balance must be positive"):
        OptimismConfig(bonus="textbook", bonus_balance=bad)
