"""Optimism: turning the reward ensemble into the reward that fine-tuning maximises (SEIKO.md, "The reward model").

- ``OPTIMISM``: a registry of aggregations over the heads' predictions (B, H) -> (B,):
  ``mean`` (greedy), ``max`` (SEIKO-Bootstrap), ``softmax`` (smooth max), ``ucb_heads`` (mean + beta * std),
  ``thompson`` (SEIKO-TS: the reward under ONE posterior draw per round, :func:`thompson_draw`).
- :class:`LinearUCB`: the SEIKO-UCB bonus g(x) = y_std * min(c, alpha * sqrt(f(x)^T A^{-1} f(x))) on the ensemble's
  last-hidden features, in the textbook form A = lambda I + sum_j f_j f_j^T (shrinks like 1/sqrt(n)) or the
  reference code's covariance form A = Cov(f over D) + lambda I (does not shrink with n).
- :func:`optimistic_reward`: heads aggregated, plus the bonus when configured; differentiable in the embedding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from seiko_core.config import OptimismConfig
from seiko_core.reward import RewardEnsemble, read_artifact, write_artifact

UCB_WEIGHTS = "ucb.safetensors"
UCB_META = "ucb.json"
_UCB_FORMAT = "seiko-linear-ucb"
_UCB_VERSION = 1
UCB_FORMS = ("covariance", "textbook")


# ---------------------------------------------------------------------------------------------------------------------
# Aggregations over heads: (B, H) -> (B,)
# ---------------------------------------------------------------------------------------------------------------------


def _check_preds(preds: Tensor) -> None:
    if preds.dim() != 2 or preds.shape[1] < 1:
        raise ValueError(f"head predictions must have shape (B, H) with H >= 1, got {tuple(preds.shape)}")


def mean_over_heads(preds: Tensor) -> Tensor:
    """Greedy: the ensemble's mean prediction."""
    _check_preds(preds)
    return preds.mean(dim=1)


def max_over_heads(preds: Tensor) -> Tensor:
    """SEIKO-Bootstrap: the most optimistic head per sample (the gradient flows to that head)."""
    _check_preds(preds)
    return preds.max(dim=1).values


def softmax_over_heads(preds: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Smooth max: sum_h softmax(p / tau)_h * p_h; tau -> 0 gives ``max``, tau -> inf gives ``mean``."""
    _check_preds(preds)
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return (torch.softmax(preds / temperature, dim=1) * preds).sum(dim=1)


def ucb_over_heads(preds: Tensor, *, beta: float = 1.0) -> Tensor:
    """mean + beta * std across heads.

    The std is the population std (``correction=0``, i.e. unbiased=False): the spread of the heads we actually
    have, defined (as 0) for a single head, where the unbiased estimate would be NaN.
    """
    _check_preds(preds)
    return preds.mean(dim=1) + beta * preds.std(dim=1, correction=0)


def thompson_draw(num_heads: int, generator: torch.Generator) -> Tensor:
    """One posterior draw for SEIKO-TS: z ~ N(0, I_H), drawn ONCE per round from the run's seed.

    Thompson sampling fine-tunes a whole round toward one sample of the reward; drawing anew per micro-batch would
    average the draws over an optimiser step and give back the mean (Greedy).
    """
    if num_heads < 1:
        raise ValueError(f"num_heads must be at least 1, got {num_heads}")
    if generator is None:
        raise ValueError("thompson_draw needs a torch.Generator so the round's draw is reproducible")
    return torch.randn(num_heads, generator=generator, dtype=torch.float64)


def thompson_sample(preds: Tensor, draw: Tensor) -> Tensor:
    """The reward under one posterior draw ``z`` (H,): mean + sum_h z_h (p_h - mean) / sqrt(H - 1).

    The heads are bootstrap replicates, so their spread estimates the posterior's; for any input this sample has the
    ensemble's mean as its expectation and the heads' (unbiased) variance as its variance, and one draw is one smooth
    function of the image for the whole round. With one head it is that head.
    """
    _check_preds(preds)
    if draw is None:
        raise ValueError("thompson aggregation needs the round's posterior draw (seiko_core.optimism.thompson_draw)")
    heads = preds.shape[1]
    if draw.shape != (heads,):
        raise ValueError(f"the posterior draw must have shape ({heads},), one weight per head, got {tuple(draw.shape)}")
    if heads == 1:
        return preds[:, 0]
    mean = preds.mean(dim=1, keepdim=True)
    return mean[:, 0] + (preds - mean) @ draw.to(preds) / math.sqrt(heads - 1)


AggregationFn = Callable[[Tensor, float, float, "Tensor | None"], Tensor]

# name -> fn(preds, temperature, beta, draw); each uses only the options it needs.
OPTIMISM: dict[str, AggregationFn] = {
    "mean": lambda preds, temperature, beta, draw: mean_over_heads(preds),
    "max": lambda preds, temperature, beta, draw: max_over_heads(preds),
    "softmax": lambda preds, temperature, beta, draw: softmax_over_heads(preds, temperature=temperature),
    "ucb_heads": lambda preds, temperature, beta, draw: ucb_over_heads(preds, beta=beta),
    "thompson": lambda preds, temperature, beta, draw: thompson_sample(preds, draw),
}


def aggregate(
    preds: Tensor,
    name: str,
    *,
    temperature: float = 1.0,
    beta: float = 1.0,
    draw: Tensor | None = None,
) -> Tensor:
    """Aggregate (B, H) head predictions into (B,) rewards with the registered aggregation ``name``
    (``draw``: the round's posterior draw, for ``thompson``)."""
    if name not in OPTIMISM:
        raise ValueError(f"unknown optimism {name!r}; choose from {sorted(OPTIMISM)}")
    return OPTIMISM[name](preds, temperature, beta, draw)


# ---------------------------------------------------------------------------------------------------------------------
# Linear-UCB bonus on the last hidden features
# ---------------------------------------------------------------------------------------------------------------------


class LinearUCB:
    """g(f) = scale * min(clip, alpha * sqrt(f^T A^{-1} f)), with A's Cholesky factor computed once per reward refit.

    ``scale`` is the std of the ratings the reward model was fitted on (its ``y_std``): the features live in
    standardised units, so alpha and clip count rating standard deviations (config.UCB_DEFAULT_ALPHA).

    A and its factor are kept in float64 (A grows like n in the textbook form); :meth:`bonus` solves
    L z = f with one batched triangular solve, so f^T A^{-1} f = ||z||^2, and returns the input's dtype.
    """

    def __init__(self, chol: Tensor, *, form: str, lam: float, alpha: float, clip: float, n: int, scale: float = 1.0) -> None:
        if chol.dim() != 2 or chol.shape[0] != chol.shape[1]:
            raise ValueError(f"the Cholesky factor must be a square matrix, got shape {tuple(chol.shape)}")
        _check_ucb_options(form, lam, alpha, clip)
        self.chol = chol.to(torch.float64)
        self.form = form
        self.lam = float(lam)
        self.alpha = float(alpha)
        self.clip = float(clip)
        self.n = int(n)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale}")
        self.scale = float(scale)
        self.balance = 1.0  # the factor fit_bonus's bonus_balance applied to scale (1.0: none); scale includes it

    @property
    def feature_dim(self) -> int:
        return self.chol.shape[0]

    @classmethod
    def fit(
        cls,
        features: Tensor,
        *,
        form: str = "textbook",
        lam: float = 1e-3,
        alpha: float = 1.0,
        clip: float = 10.0,
        scale: float = 1.0,
    ) -> LinearUCB:
        """Fit A on the data's features (N, F).

        textbook:   A = lam I + sum_j f_j f_j^T
        covariance: A = Cov(f over D) + lam I, the population covariance (divides by N, so one point is allowed).
        """
        _check_ucb_options(form, lam, alpha, clip)
        f = torch.as_tensor(features).detach().to(torch.float64)
        if f.dim() != 2 or f.shape[0] == 0 or f.shape[1] == 0:
            raise ValueError(f"features must be a non-empty 2-D tensor (N, F), got shape {tuple(f.shape)}")
        if not bool(torch.isfinite(f).all()):
            raise ValueError("features must be finite; found NaN or infinite values")
        n, dim = f.shape
        eye = torch.eye(dim, dtype=f.dtype, device=f.device)
        if form == "textbook":
            a = lam * eye + f.T @ f
        else:
            centred = f - f.mean(dim=0, keepdim=True)
            a = centred.T @ centred / n + lam * eye
        chol, info = torch.linalg.cholesky_ex(a)
        if int(info) != 0:
            raise ValueError(f"the UCB matrix A is not positive definite (lam={lam}); increase lam")
        return cls(chol, form=form, lam=lam, alpha=alpha, clip=clip, n=n, scale=scale)

    def bonus(self, features: Tensor) -> Tensor:
        """(B, F) features -> (B,) bonus, differentiable w.r.t. ``features`` (zero gradient where clipped)."""
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"features must have shape (B, {self.feature_dim}), got {tuple(features.shape)}")
        chol = self.chol.to(features.device)
        # 1. solve L z = f for all B columns at once: f^T A^{-1} f = f^T L^{-T} L^{-1} f = ||z||^2
        z = torch.linalg.solve_triangular(chol, features.to(torch.float64).T, upper=False)
        # 2. g = scale * min(c, alpha * ||z||); vector_norm has a zero (not NaN) gradient at f = 0
        g = (self.alpha * torch.linalg.vector_norm(z, dim=0)).clamp(max=self.clip) * self.scale
        return g.to(features.dtype)

    def save(self, path_dir: str | Path) -> Path:
        """Write ``ucb.safetensors`` (the Cholesky factor) and ``ucb.json`` (form, lam, alpha, clip, n)."""
        meta = {
            "format": _UCB_FORMAT,
            "version": _UCB_VERSION,
            "form": self.form,
            "lam": self.lam,
            "alpha": self.alpha,
            "clip": self.clip,
            "n": self.n,
            "scale": self.scale,
            "balance": self.balance,
            "feature_dim": self.feature_dim,
        }
        return write_artifact(path_dir, UCB_WEIGHTS, UCB_META, {"chol": self.chol}, meta)

    @classmethod
    def load(cls, path_dir: str | Path) -> LinearUCB:
        """Inverse of :meth:`save`."""
        tensors, meta = read_artifact(path_dir, UCB_WEIGHTS, UCB_META, _UCB_FORMAT)
        try:
            ucb = cls(tensors["chol"], form=meta["form"], lam=meta["lam"], alpha=meta["alpha"], clip=meta["clip"], n=meta["n"],
                      scale=float(meta.get("scale", 1.0)))
            ucb.balance = float(meta.get("balance", 1.0))
        except KeyError as err:
            raise ValueError(f"the UCB files in {str(path_dir)!r} lack {err}") from err
        if ucb.feature_dim != meta.get("feature_dim"):
            raise ValueError(f"{UCB_WEIGHTS} in {str(path_dir)!r} does not match the feature_dim in {UCB_META}")
        return ucb


def _check_ucb_options(form: str, lam: float, alpha: float, clip: float) -> None:
    if form not in UCB_FORMS:
        raise ValueError(f"unknown bonus form {form!r}; choose from {sorted(UCB_FORMS)}")
    if not lam > 0:
        raise ValueError(f"lam must be positive, got {lam}")
    if not alpha >= 0:
        raise ValueError(f"alpha must be non-negative, got {alpha}")
    if not clip > 0:
        raise ValueError(f"clip must be positive, got {clip}")


# ---------------------------------------------------------------------------------------------------------------------
# The optimistic reward used by fine-tuning
# ---------------------------------------------------------------------------------------------------------------------


def _check_eval(ensemble: RewardEnsemble) -> None:
    if ensemble.training:
        raise ValueError("the reward ensemble is in train mode (dropout on); call ensemble.eval() first")


@torch.no_grad()
def fit_bonus(ensemble: RewardEnsemble, embeddings: Tensor, cfg: OptimismConfig) -> LinearUCB | None:
    """The linear-UCB bonus fitted on the ensemble's features of the feedback set, or None when ``cfg.bonus`` is None."""
    if cfg.bonus is None:
        return None
    _check_eval(ensemble)
    preds, features = ensemble.heads_and_features(torch.as_tensor(embeddings))
    ucb = LinearUCB.fit(features, form=cfg.bonus, lam=cfg.bonus_lambda, alpha=cfg.alpha(), clip=cfg.bonus_clip,
                        scale=float(ensemble.y_std))
    if cfg.bonus_balance is not None:
        factor = balance_factor(preds.mean(dim=1), ucb.bonus(features), cfg.bonus_balance)
        ucb.scale *= factor
        ucb.balance = factor
    return ucb


def balance_factor(predicted: Tensor, bonus: Tensor, kappa: float) -> float:
    """The factor in (0, 1] that brings the bonus's spread (std over the feedback set) down to at most ``kappa`` times
    the predicted reward's spread there; 1 when it is already within, or when the bonus does not vary at all."""
    if predicted.shape != bonus.shape or predicted.dim() != 1:
        raise ValueError(f"predicted reward and bonus must be two (N,) tensors, got {tuple(predicted.shape)} and "
                         f"{tuple(bonus.shape)}")
    if len(predicted) < 2:
        return 1.0
    s_reward = float(predicted.double().std())
    s_bonus = float(bonus.double().std())
    if s_bonus <= kappa * s_reward:  # also a bonus that does not vary (both stds are >= 0)
        return 1.0
    return max(kappa * s_reward / s_bonus, 1e-12)  # > 0: LinearUCB's scale must stay positive


def optimistic_reward(
    ensemble: RewardEnsemble,
    emb: Tensor,
    cfg: OptimismConfig,
    *,
    ucb: LinearUCB | None = None,
    draw: Tensor | None = None,
) -> Tensor:
    """r_opt(x) (B,): the heads aggregated per ``cfg.aggregation``, plus ``ucb.bonus(features)`` when ``cfg.bonus`` is set.

    ``draw`` is the round's posterior draw for the ``thompson`` aggregation (:func:`thompson_draw`)."""
    _check_eval(ensemble)
    if cfg.bonus is not None and ucb is None:
        raise ValueError(f"optimism config asks for the {cfg.bonus!r} UCB bonus but no LinearUCB was given; use fit_bonus()")
    if cfg.bonus is None and ucb is not None:
        raise ValueError("a LinearUCB was given but the optimism config has no bonus (cfg.bonus is None)")
    if cfg.bonus is not None and ucb is not None and ucb.form != cfg.bonus:
        raise ValueError(f"optimism config asks for the {cfg.bonus!r} UCB bonus but the LinearUCB given is {ucb.form!r}")
    preds, features = ensemble.heads_and_features(emb)
    # softmax's temperature counts rating stds (y_std, the fitted ratings' spread), as the UCB bonus's alpha does: in
    # raw units, ratings 10x larger turned tau = 1 from nearly the mean into nearly the max (found by review)
    temperature = cfg.temperature * float(ensemble.y_std)
    reward = aggregate(preds, cfg.aggregation, temperature=temperature, beta=cfg.ucb_beta, draw=draw)
    if cfg.bonus is not None and ucb is not None:
        reward = reward + ucb.bonus(features)
    return reward
