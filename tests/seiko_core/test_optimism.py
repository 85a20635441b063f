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
    fit_bonus,
    max_over_heads,
    optimistic_reward,
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


def test_thompson_one_head_per_batch_and_reproducible():
    preds = torch.tensor([[10.0, 20.0, 30.0], [11.0, 21.0, 31.0], [12.0, 22.0, 32.0]])
    picks = []
    for _ in range(30):
        out = aggregate(preds, "thompson", generator=torch.Generator().manual_seed(len(picks)))
        # the same head for every row of the batch
        heads = [(preds[i] == out[i]).nonzero().item() for i in range(3)]
        assert len(set(heads)) == 1
        picks.append(heads[0])
    assert set(picks) == {0, 1, 2}  # every head gets drawn
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    seq1 = [aggregate(preds, "thompson", generator=g1) for _ in range(10)]
    seq2 = [aggregate(preds, "thompson", generator=g2) for _ in range(10)]
    assert all(torch.equal(a, b) for a, b in zip(seq1, seq2))
    with pytest.raises(ValueError, match="needs a torch.Generator"):
        aggregate(preds, "thompson")


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
        aggregate(preds, name, generator=torch.Generator().manual_seed(0)).sum().backward()
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
    out = optimistic_reward(ensemble, x, OptimismConfig(aggregation="thompson"), generator=torch.Generator().manual_seed(1))
    assert any(torch.equal(out, preds[:, h]) for h in range(3))


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
