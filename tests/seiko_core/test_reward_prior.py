"""Randomized prior functions in the reward ensemble (RewardConfig.prior_scale), checked against numpy closed forms."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from seiko_core.config import RewardConfig
from seiko_core.preference import fit_preference_reward
from seiko_core.reward import REWARD_META, RewardEnsemble, fit_reward


def cfg(**overrides) -> RewardConfig:
    base = dict(num_heads=4, hidden=(16, 8), dropout=(0.1,), lr=1e-2, batch_size=64, max_epochs=40, patience=10)
    base.update(overrides)
    return RewardConfig(**base)


def subspace_data(n: int = 40, dim: int = 12, seen: int = 4, seed: int = 0):
    """Labelled points that vary only in the first `seen` coordinates; the rest are constant (0.5)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((n, dim), 0.5)
    x[:, :seen] = torch.randn(n, seen, generator=g)
    w = torch.randn(dim, generator=g)
    y = x @ w + 0.1 * torch.randn(n, generator=g)
    return x, y


def numpy_prior_std(x_fit: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The std over heads that set_prior's definition implies, written from the definition with numpy:
    a ~ N(0, I / lam), prior direction lam (Xc^T Xc + lam I)^-1 a, so Var = lam * |(Xc^T Xc + lam I)^-1 (x - mean)|^2."""
    mean = x_fit.mean(axis=0)
    xc = x_fit - mean
    lam = float((xc**2).sum(axis=1).mean())
    m = np.linalg.inv(xc.T @ xc + lam * np.eye(x_fit.shape[1]))
    return np.sqrt(lam * (((x - mean) @ m) ** 2).sum(axis=1))


def test_prior_scale_is_validated():
    with pytest.raises(ValueError, match="prior_scale must be a finite number >= 0"):
        RewardConfig(prior_scale=-0.5)
    with pytest.raises(ValueError, match="prior_scale must be a finite number >= 0"):
        RewardConfig(prior_scale=math.nan)


def test_without_a_prior_there_are_no_prior_buffers_and_the_prior_is_zero():
    model = RewardEnsemble(6, cfg(), generator=torch.Generator().manual_seed(0))
    assert not any(k.startswith("prior") for k in model.state_dict())
    assert torch.equal(model.prior(torch.randn(3, 6)), torch.zeros(3, 4))


def test_the_fit_is_the_prior_free_fit_plus_the_closed_form_prior():
    x, y = subspace_data()
    plain = fit_reward(x, y, cfg(), seed=3)
    prior = fit_reward(x, y, cfg(prior_scale=1.5), seed=3)
    a, b = plain.ensemble.state_dict(), prior.ensemble.state_dict()
    for k, v in a.items():  # every trained weight and the standardisation: bit for bit
        assert torch.equal(v, b[k]), k
    assert prior.metrics["epochs_run"] == plain.metrics["epochs_run"]
    q = torch.randn(7, x.shape[1], generator=torch.Generator().manual_seed(9))
    got = prior.ensemble(q) - plain.ensemble(q)
    want = 1.5 * prior.ensemble.y_std * (q.double() @ b["prior_weight"].double().T + b["prior_bias"].double())
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-4)


def test_the_prior_has_mean_zero_on_the_fitted_points_and_the_predicted_spread():
    # Many heads, so the std over heads estimates the prior's std; compared with numpy's closed form.
    x, _ = subspace_data(n=30, dim=10, seen=10, seed=1)
    model = RewardEnsemble(10, cfg(num_heads=4000, prior_scale=1.0), generator=torch.Generator().manual_seed(0))
    model.set_prior(x, torch.Generator().manual_seed(5))
    q = torch.cat([x[:5], x[:5] + 0.7 * torch.randn(5, 10, generator=torch.Generator().manual_seed(2))])
    with torch.no_grad():
        p = model.prior(q).double()
        centre = model.prior(x.mean(dim=0, keepdim=True)).double()
    torch.testing.assert_close(centre, torch.zeros_like(centre), atol=1e-5, rtol=0)  # zero at the points' mean
    want = numpy_prior_std(x.double().numpy(), q.double().numpy())
    got = p.std(dim=1, correction=0).numpy()
    np.testing.assert_allclose(got, want, rtol=0.06)  # 4000 draws: the std's relative error is about 1.1%


def test_heads_disagree_away_from_the_labels_and_agree_on_them():
    # The labels span 4 of 12 directions. A point one data radius away along an unseen direction gets a prior of
    # std prior_scale (the definition); on the labelled points the prior is shrunk by lam / (variance seen + lam).
    x, y = subspace_data(n=60, dim=12, seen=4, seed=2)
    fit = fit_reward(x, y, cfg(num_heads=2000, prior_scale=1.0, max_epochs=3, holdout=0.0), seed=0)
    radius = float(((x - x.mean(0)) ** 2).sum(1).mean().sqrt())
    away = x.mean(0, keepdim=True).repeat(4, 1)
    away[:, 4:] += radius * torch.eye(8)[:4]  # one radius along unseen directions 5..8
    with torch.no_grad():
        sd_away = fit.ensemble.prior(away).std(dim=1, correction=0)
        sd_on = fit.ensemble.prior(x).std(dim=1, correction=0)
    assert torch.allclose(sd_away, torch.ones(4), rtol=0.06)
    assert float(sd_on.max()) < 0.3  # each seen direction has variance ~1 x 60 points against lam ~4: shrunk ~16x
    # and the prior is measured in rating stds: the heads' own predictions spread by y_std times as much
    with torch.no_grad():
        heads_away = fit.ensemble(away)
    assert float(heads_away.std(dim=1).mean()) > 0.5 * float(fit.ensemble.y_std)


def test_the_prior_is_what_a_ridge_fit_started_from_it_leaves():
    # Claim: w = lam (Xc^T Xc + lam I)^-1 a is a + delta, where delta minimises |Xc (a + delta)|^2 + lam |delta|^2
    # (a ridge fit, penalty lam, of labels that carry no signal, started from the prior a). Solved here by numpy's
    # least squares on the augmented system [Xc; sqrt(lam) I] delta = [-Xc a; 0], with a recovered from w.
    x, _ = subspace_data(n=20, dim=9, seen=9, seed=4)
    model = RewardEnsemble(9, cfg(num_heads=3, prior_scale=1.0), generator=torch.Generator().manual_seed(0))
    lam = model.set_prior(x, torch.Generator().manual_seed(1))
    xc = (x - x.mean(0)).double().numpy()
    assert lam == pytest.approx(float((xc**2).sum(1).mean()))
    w = model.prior_weight.double().numpy()
    for wk in w:
        a = (xc.T @ xc + lam * np.eye(9)) @ wk / lam
        aug = np.vstack([xc, math.sqrt(lam) * np.eye(9)])
        delta = np.linalg.lstsq(aug, np.concatenate([-xc @ a, np.zeros(9)]), rcond=None)[0]
        np.testing.assert_allclose(a + delta, wk, rtol=1e-4, atol=1e-6)


def test_one_point_gets_the_floor_and_a_prior_of_std_distance_over_radius():
    # One point: no spread, so lam is the floor, 1% of its squared norm, and a head's prior at q has std |q - x0| / sqrt(lam).
    x, y = torch.tensor([[3.0, 4.0, 0.0, 0.0, 0.0]]), torch.tensor([3.0])
    fit = fit_reward(x, y, cfg(num_heads=4000, prior_scale=1.0, max_epochs=2), seed=0)
    assert fit.metrics["prior_lam"] == pytest.approx(0.25)  # 1% of 25
    q = torch.tensor([[3.0, 4.0, 0.0, 0.0, 0.0], [3.0, 4.0, 0.5, 0.0, 0.0], [4.0, 4.0, 0.0, 1.0, 0.0]])
    with torch.no_grad():
        sd = fit.ensemble.prior(q).double().std(dim=1, correction=0)
    want = torch.tensor([0.0, 0.5, 2**0.5], dtype=torch.float64) / 0.5
    torch.testing.assert_close(sd, want, atol=1e-5, rtol=0.06)


def test_near_duplicate_labels_cannot_blow_the_prior_up():
    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.normalize(torch.randn(1, 16, generator=g), dim=1)
    x = torch.nn.functional.normalize(base + 1e-4 * torch.randn(30, 16, generator=g), dim=1)  # cosines ~0.99999
    model = RewardEnsemble(16, cfg(num_heads=2000, prior_scale=1.0), generator=torch.Generator().manual_seed(0))
    lam = model.set_prior(x, torch.Generator().manual_seed(1))
    assert lam == pytest.approx(0.01, rel=1e-3)  # the floor: 1% of the unit embeddings' squared norm
    far = torch.nn.functional.normalize(torch.randn(1, 16, generator=g), dim=1)
    with torch.no_grad():
        sd = float(model.prior(far).std())
    assert sd < float((far - x.mean(0)).norm()) / 0.1 * 1.1  # at most distance / sqrt(floor), not distance / 1e-4


def test_save_load_round_trip_keeps_the_prior_and_old_artifacts_still_load(tmp_path):
    x, y = subspace_data()
    fit = fit_reward(x, y, cfg(prior_scale=1.0), seed=1)
    fit.ensemble.save(tmp_path / "with")
    loaded = RewardEnsemble.load(tmp_path / "with")
    q = torch.randn(5, x.shape[1])
    assert torch.equal(loaded(q), fit.ensemble(q))
    assert loaded.metrics["prior_scale"] == 1.0
    # an artifact written before prior_scale existed: its config has no such key, so it loads with no prior
    plain = fit_reward(x, y, cfg(), seed=1).ensemble
    plain.save(tmp_path / "old")
    meta_path = tmp_path / "old" / REWARD_META
    meta = json.loads(meta_path.read_text())
    del meta["config"]["prior_scale"]
    meta_path.write_text(json.dumps(meta))
    assert torch.equal(RewardEnsemble.load(tmp_path / "old")(q), plain(q))


def test_comparisons_with_a_prior_are_refused_in_one_sentence():
    x = torch.randn(6, 4)
    pairs = torch.tensor([[0, 1, 1.0], [2, 3, 0.0]])
    with pytest.raises(ValueError, match="prior_scale .* not supported by the pairwise reward fit"):
        fit_preference_reward(x, pairs=pairs, cfg=cfg(prior_scale=1.0), seed=0)
