"""The reward model: a multi-head bootstrap ensemble on a shared MLP backbone (SEIKO.md, "The reward model").

``fit_reward(embeddings, scores, cfg, seed=...)`` returns a :class:`FitResult` whose ensemble maps image
embeddings (B, D) to one prediction per head (B, N) in the original score units, and exposes the shared
last-hidden features (B, F) that the linear-UCB bonus (``seiko_core.optimism``) works on.

Design, in short:

- one backbone, N heads held as one (N, F) weight matrix, so all heads run in one matmul;
- each head sees its own bootstrap resample of the data through per-sample weights (Poisson(1) or
  multinomial counts), so the whole ensemble trains in one batched pass; the loss is the sum over heads
  of each head's weighted MSE;
- targets are standardised for fitting and the ensemble holds ``y_mean``/``y_std`` buffers, so its
  outputs are in the units the person rated in;
- early stopping on a held-out split keeps the best epoch's weights; below 8 points there is no split
  and training stops when the training loss stops improving;
- every random draw (split, bootstrap weights, initialisation, dropout, shuffling, SGLD noise) comes
  from one local ``torch.Generator`` seeded by ``seed``: the same seed gives identical weights and the
  global RNG is never touched;
- artifacts are ``reward.safetensors`` + ``reward.json`` (config, input dim, target scaling, metrics).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import Tensor

from seiko_core.atomic import write_bytes
from seiko_core.config import RewardConfig

REWARD_WEIGHTS = "reward.safetensors"
REWARD_META = "reward.json"
_FORMAT = "seiko-reward-ensemble"
_VERSION = 1
_MIN_POINTS_FOR_HOLDOUT = 8  # below this, every point is needed for training
_CV_BELOW_HOLDOUT = 8  # cfg.cv_folds chooses the epoch where the held-out split would hold fewer labels than this
_MIN_DELTA = 1e-6  # improvement (in standardised squared units) that resets the patience counter
_EVAL_CHUNK = 8192  # rows per forward pass when evaluating on the whole data set

ProgressFn = Callable[[int, int, dict[str, Any]], None]


# ---------------------------------------------------------------------------------------------------------------------
# Artifact IO shared by the reward model and the UCB bonus: safetensors for tensors, JSON for everything else.
# ---------------------------------------------------------------------------------------------------------------------


def write_artifact(path_dir: str | Path, weights_name: str, meta_name: str, tensors: dict[str, Tensor], meta: dict) -> Path:
    """Write ``tensors`` as safetensors and ``meta`` as JSON into ``path_dir`` (created if needed), each file atomically."""
    out = Path(path_dir)
    out.mkdir(parents=True, exist_ok=True)
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    write_bytes(out / weights_name, save_safetensors_bytes(cpu))
    write_bytes(out / meta_name, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return out


def read_artifact(path_dir: str | Path, weights_name: str, meta_name: str, expected_format: str) -> tuple[dict[str, Tensor], dict]:
    """Read what :func:`write_artifact` wrote; a missing file is FileNotFoundError, a corrupt one ValueError."""
    src = Path(path_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"artifact directory {str(src)!r} does not exist")
    weights_path, meta_path = src / weights_name, src / meta_name
    for p in (weights_path, meta_path):
        if not p.is_file():
            raise FileNotFoundError(f"{str(p)!r} is missing; was this directory written by save()?")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{str(meta_path)!r} is not valid JSON ({err})") from err
    except RecursionError as err:  # json's parser gives up on 200,000 nested '[' (found by the fifth review)
        raise ValueError(f"{str(meta_path)!r} is not valid JSON (it is nested too deeply)") from err
    if not isinstance(meta, dict) or meta.get("format") != expected_format:
        raise ValueError(f"{str(meta_path)!r} is not a {expected_format} file")
    if meta.get("version") != _VERSION:
        raise ValueError(f"{str(meta_path)!r} has version {meta.get('version')!r}; this code reads version {_VERSION}")
    try:
        tensors = load_safetensors_bytes(weights_path.read_bytes())
    except SafetensorError as err:
        raise ValueError(f"{str(weights_path)!r} is not a valid safetensors file ({err})") from err
    return tensors, meta


# ---------------------------------------------------------------------------------------------------------------------
# The ensemble
# ---------------------------------------------------------------------------------------------------------------------


class RewardEnsemble(torch.nn.Module):
    """Shared MLP backbone (D -> cfg.hidden) and ``cfg.num_heads`` linear heads (F -> 1) in one (N, F) matrix.

    ``forward(emb)`` gives (B, N) predictions in the original score units; ``features(emb)`` the (B, F)
    last-hidden features. Both are differentiable with respect to ``emb``. Dropout follows the module's
    train/eval mode; :func:`fit_reward` and :meth:`load` return the ensemble in eval mode with its
    parameters frozen (it is the judge during fine-tuning, not something fine-tuning updates).
    """

    def __init__(
        self,
        input_dim: int,
        cfg: RewardConfig,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if input_dim < 1:
            raise ValueError(f"input_dim must be at least 1, got {input_dim}")
        if len(cfg.dropout) > len(cfg.hidden):
            raise ValueError(f"dropout has {len(cfg.dropout)} rates but hidden has only {len(cfg.hidden)} layers")
        if not all(0.0 <= p < 1.0 for p in cfg.dropout):
            raise ValueError(f"dropout rates must be in [0, 1), got {cfg.dropout}")
        self.input_dim = int(input_dim)
        self.cfg = cfg
        device = torch.device("cpu") if device is None else torch.device(device)
        widths = (self.input_dim, *cfg.hidden)
        # Built on "meta" and materialised uninitialised, so no draw from the global RNG;
        # reset_parameters fills the weights from `generator`.
        self.layers = torch.nn.ModuleList(
            torch.nn.Linear(a, b, device="meta").to_empty(device=device) for a, b in pairwise(widths)
        )
        self.head_weight = torch.nn.Parameter(torch.empty(cfg.num_heads, cfg.hidden[-1], device=device))
        self.head_bias = torch.nn.Parameter(torch.empty(cfg.num_heads, device=device))
        self.register_buffer("y_mean", torch.zeros((), device=device))
        self.register_buffer("y_std", torch.ones((), device=device))
        if cfg.prior_scale > 0:  # randomized prior functions: fixed (buffers, never trained), set by set_prior
            self.register_buffer("prior_weight", torch.zeros(cfg.num_heads, self.input_dim, device=device))
            self.register_buffer("prior_bias", torch.zeros(cfg.num_heads, device=device))
        self.metrics: dict[str, Any] = {}
        self.reset_parameters(generator)

    @property
    def num_heads(self) -> int:
        return self.head_weight.shape[0]

    @property
    def feature_dim(self) -> int:
        return self.head_weight.shape[1]

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) for every weight and bias (torch.nn.Linear's default range)."""
        for layer in self.layers:
            bound = 1.0 / math.sqrt(layer.in_features)
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)
        bound = 1.0 / math.sqrt(self.feature_dim)
        self.head_weight.uniform_(-bound, bound, generator=generator)
        self.head_bias.uniform_(-bound, bound, generator=generator)

    def _check_input(self, emb: Tensor) -> Tensor:
        if emb.dim() != 2 or emb.shape[1] != self.input_dim:
            raise ValueError(f"embeddings must have shape (B, {self.input_dim}), got {tuple(emb.shape)}")
        return emb.to(self.head_weight.dtype)

    def _hidden(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        # Linear -> (GELU unless cfg.linear) -> dropout (first len(cfg.dropout) layers, train mode only).
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if not self.cfg.linear:
                x = torch.nn.functional.gelu(x)
            p = self.cfg.dropout[i] if i < len(self.cfg.dropout) else 0.0
            if self.training and p > 0:
                keep = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) >= p
                x = x * keep / (1.0 - p)
        return x

    def _standardised_heads(self, features: Tensor) -> Tensor:
        return features @ self.head_weight.T + self.head_bias

    def prior(self, x: Tensor) -> Tensor:
        """(B, N) the heads' fixed random priors, prior_scale * (x @ P^T + b), in standardised units; 0 without a prior."""
        if self.cfg.prior_scale <= 0:
            return torch.zeros(x.shape[0], self.num_heads, device=x.device, dtype=self.head_weight.dtype)
        return self.cfg.prior_scale * (x.to(self.prior_weight.dtype) @ self.prior_weight.T + self.prior_bias)

    @torch.no_grad()
    def set_prior(self, x_fit: Tensor, generator: torch.Generator) -> float | None:
        """Set each head's fixed random prior from the fitted embeddings ``x_fit`` (n, D); returns ``lam`` (None without a prior).

        A head's prior is a random linear function ``a^T (x - mean)``, ``a ~ N(0, I / lam)``, minus what a ridge fit
        of the labels with penalty ``lam`` would take out of it: the direction ``lam (Xc^T Xc + lam I)^-1 a``. That is
        a ridge-regularised linear model started from the prior and trained to convergence, in closed form, so the
        fitted weights stay exactly the prior-free fit's. ``lam`` is the points' mean squared distance from their
        mean: a step of one such radius along a direction with no labels moves a head by ``prior_scale``
        standardised units (rating stds), and along a labelled direction with sum of squares ``s`` the prior keeps
        ``lam / (s + lam)`` of its size. With fewer points than dimensions each labelled direction has ``s`` of about
        ``lam``, so on the labels the prior is about halved, not cancelled: the penalty ``lam`` assumes label noise
        as large as the ratings' own spread (the same conservative case as the UCB bonus's rule).

        ``lam`` is floored at 1% of the points' mean squared norm (1 for all-zero embeddings, and for a single point
        the floor is all there is), so near-duplicate labels cannot blow the prior up elsewhere.
        """
        if self.cfg.prior_scale <= 0:
            return None
        x = x_fit.detach().to(torch.float64)
        mean = x.mean(dim=0)
        xc = x - mean
        floor = 0.01 * float((x * x).sum(dim=1).mean())
        lam = max(float((xc * xc).sum(dim=1).mean()), floor)
        if not lam > 1e-12:
            lam = 1.0
        a = torch.randn(self.num_heads, self.input_dim, generator=generator, device=x.device, dtype=torch.float64)
        a = a / math.sqrt(lam)
        gram = xc.T @ xc + lam * torch.eye(self.input_dim, device=x.device, dtype=torch.float64)
        w = lam * torch.linalg.solve(gram, a.T).T  # (H, D)
        self.prior_weight.copy_(w.to(self.prior_weight.dtype))
        self.prior_bias.copy_((-(w @ mean)).to(self.prior_bias.dtype))
        return lam

    def _with_prior(self, z: Tensor, x: Tensor) -> Tensor:
        """The trained heads ``z`` (B, N, standardised) of inputs ``x`` plus the fixed priors, when there are any."""
        return z + self.prior(x) if self.cfg.prior_scale > 0 else z

    def _standardised(self, x: Tensor) -> Tensor:
        """(B, N) the heads in standardised units (eval mode): trained heads on the hidden features, plus the priors."""
        return self._with_prior(self._standardised_heads(self._hidden(x)), x)

    def heads_and_features(self, emb: Tensor) -> tuple[Tensor, Tensor]:
        """(B, N) predictions in original units and the (B, F) features they were computed from, in one pass."""
        x = self._check_input(emb)
        features = self._hidden(x)
        return self._with_prior(self._standardised_heads(features), x) * self.y_std + self.y_mean, features

    def forward(self, emb: Tensor) -> Tensor:
        return self.heads_and_features(emb)[0]

    def features(self, emb: Tensor) -> Tensor:
        """The shared last-hidden features (B, F): the linear-UCB bonus's f(x)."""
        return self._hidden(self._check_input(emb))

    def save(self, path_dir: str | Path) -> Path:
        """Write ``reward.safetensors`` and ``reward.json`` into ``path_dir``; returns the directory."""
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "input_dim": self.input_dim,
            "config": asdict(self.cfg),
            "y_mean": float(self.y_mean),
            "y_std": float(self.y_std),
            "metrics": self.metrics,
        }
        return write_artifact(path_dir, REWARD_WEIGHTS, REWARD_META, self.state_dict(), meta)

    @classmethod
    def load(cls, path_dir: str | Path, *, device: torch.device | str = "cpu") -> RewardEnsemble:
        """Inverse of :meth:`save`: the ensemble in eval mode with frozen parameters."""
        tensors, meta = read_artifact(path_dir, REWARD_WEIGHTS, REWARD_META, _FORMAT)
        try:
            cfg = RewardConfig(**meta["config"])
            input_dim = int(meta["input_dim"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"{REWARD_META} in {str(path_dir)!r} has an invalid config or input_dim ({err!r})") from err
        # every size the metadata names is a dimension of some weight: a forged input_dim or width would otherwise
        # allocate a model of that size before the weights are found not to match (found by review)
        largest = max((max(t.shape) for t in tensors.values() if t.dim()), default=0)
        sizes = (input_dim, *cfg.hidden, cfg.num_heads)
        if not all(1 <= int(n) <= largest for n in sizes):
            raise ValueError(f"{REWARD_META} in {str(path_dir)!r} names sizes {list(sizes)} that its weights in "
                             f"{REWARD_WEIGHTS} do not have (their largest dimension is {largest})")
        # and the number of layers: 200 forged layers of the largest width allocated 800 MB before the mismatch was
        # found (found by review); the weights' shapes are checked against the config before anything is built
        n_layers = sum(1 for k in tensors if k.startswith("layers.") and k.endswith(".weight"))
        if n_layers != len(cfg.hidden):
            raise ValueError(f"{REWARD_WEIGHTS} in {str(path_dir)!r} does not match its {REWARD_META}: its weights "
                             f"have {n_layers} hidden layers, its {REWARD_META} names {len(cfg.hidden)}")
        widths = (input_dim, *cfg.hidden)
        expected = {"head_weight": (cfg.num_heads, cfg.hidden[-1]), "head_bias": (cfg.num_heads,), "y_mean": (),
                    "y_std": (), **{f"layers.{i}.weight": (b, a) for i, (a, b) in enumerate(pairwise(widths))},
                    **{f"layers.{i}.bias": (b,) for i, b in enumerate(cfg.hidden)}}
        if cfg.prior_scale > 0:
            expected.update(prior_weight=(cfg.num_heads, input_dim), prior_bias=(cfg.num_heads,))
        shapes = {k: tuple(t.shape) for k, t in tensors.items()}
        if shapes != expected:
            wrong = sorted(set(shapes) ^ set(expected)) or sorted(k for k in shapes if shapes[k] != expected[k])
            raise ValueError(f"{REWARD_WEIGHTS} in {str(path_dir)!r} does not match its {REWARD_META} (e.g. "
                             f"{wrong[0]}: {shapes.get(wrong[0], 'missing')}, expected {expected.get(wrong[0], 'none')})")
        if bad := [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]:
            raise ValueError(f"{REWARD_WEIGHTS} in {str(path_dir)!r} holds values that are not finite numbers ({bad[0]})")
        if not float(tensors["y_std"]) > 0:
            raise ValueError(f"{REWARD_WEIGHTS} in {str(path_dir)!r} has y_std {float(tensors['y_std'])}; the rating "
                             "scale of a reward model must be positive")
        model = cls(input_dim, cfg, generator=torch.Generator().manual_seed(0))  # weights are overwritten below
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{REWARD_WEIGHTS} in {str(path_dir)!r} does not match its {REWARD_META} ({err})") from err
        model.metrics = dict(meta.get("metrics") or {})
        return model.to(device).eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class FitResult:
    ensemble: RewardEnsemble  # eval mode, parameters frozen
    metrics: dict[str, Any] = field(default_factory=dict)  # n, n_train, n_holdout, epochs_run, best_epoch, train_mse, holdout_mse, head_spread, ...


def _validated(embeddings: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    x = torch.as_tensor(embeddings)
    y = torch.as_tensor(scores)
    if x.dim() != 2:
        raise ValueError(f"embeddings must be a 2-D tensor (N, D), got shape {tuple(x.shape)}")
    if y.dim() != 1:
        raise ValueError(f"scores must be a 1-D tensor (N,), got shape {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"embeddings and scores must have the same length, got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] == 0:
        raise ValueError("cannot fit a reward model on empty data; collect at least one rating first")
    if x.shape[1] == 0:
        raise ValueError("embeddings must have at least one dimension")
    x = x.to(torch.float32)
    y = y.to(device=x.device, dtype=torch.float64)
    bad = int((~torch.isfinite(y)).sum())
    if bad:
        raise ValueError(f"scores must be finite; found {bad} NaN or infinite value(s)")
    bad = int((~torch.isfinite(x)).any(dim=1).sum())
    if bad:
        raise ValueError(f"embeddings must be finite; found {bad} row(s) with NaN or infinite values")
    return x, y


def _bootstrap_weights(n: int, heads: int, kind: str, generator: torch.Generator, device: torch.device) -> Tensor:
    """(n, heads) per-sample weights, one bootstrap resample per head; no head is left with an empty resample."""
    if kind == "multinomial":
        # n draws with replacement per head, as counts per sample.
        draws = torch.randint(0, n, (heads, n), generator=generator, device=device)
        counts = torch.zeros(heads, n, device=device).scatter_add_(1, draws, torch.ones(heads, n, device=device))
        return counts.T.contiguous()
    if kind == "poisson":
        weights = torch.poisson(torch.ones(n, heads, device=device), generator=generator)
        # A head with all-zero weights would learn nothing (likely only for tiny n, e.g. 37% per head at n = 1):
        # redraw it, i.e. condition the resample on being non-empty.
        for _ in range(1000):
            empty = weights.sum(dim=0) == 0
            if not bool(empty.any()):
                return weights
            redraw = torch.poisson(torch.ones(n, int(empty.sum()), device=device), generator=generator)
            weights[:, empty] = redraw
        raise RuntimeError("could not draw a non-empty Poisson bootstrap resample in 1000 tries")
    raise ValueError(f"unknown bootstrap {kind!r}; choose from ['multinomial', 'poisson']")


@torch.no_grad()
def _standardised_predictions(model: RewardEnsemble, x: Tensor) -> Tensor:
    return torch.cat([model._standardised(chunk) for chunk in x.split(_EVAL_CHUNK)])


def _weighted_mse(pred: Tensor, target: Tensor, weights: Tensor | None) -> float:
    """Mean over heads of each head's (weighted) MSE; pred (n, H), target (n,), weights (n, H) or None."""
    err = (pred - target[:, None]) ** 2
    if weights is None:
        return float(err.mean())
    return float(((weights * err).sum(dim=0) / weights.sum(dim=0)).mean())


def holdout_size(n: int, cfg: RewardConfig) -> int:
    """How many of ``n`` labels are held out for early stopping: ``cfg.holdout`` of them (at least one once n >= 8),
    or none when that is fewer than ``cfg.min_holdout``. (A ratings fit that chooses its epoch by cross-validation,
    ``uses_cross_validation``, holds none out; the comparisons' fit, seiko_core.preference, always uses this split.)"""
    want = max(1, round(cfg.holdout * n)) if n >= _MIN_POINTS_FOR_HOLDOUT and cfg.holdout > 0 else 0
    return want if want >= cfg.min_holdout else 0


def _target_scaling(y: Tensor, cfg: RewardConfig) -> tuple[float, float]:
    """(mean, std) the targets are standardised by: (0, 1) without cfg.standardise; a zero spread scales by 1."""
    if not cfg.standardise:
        return 0.0, 1.0
    mean, std = float(y.mean()), float(y.std(correction=0))
    return mean, std if std > 1e-8 * max(1.0, abs(mean)) else 1.0


def uses_cross_validation(n: int, cfg: RewardConfig) -> bool:
    """Whether the fit of ``n`` labels chooses its epoch by ``cfg.cv_folds``-fold cross-validation: cv_folds is set,
    there are at least 8 labels and two a fold, and the held-out split would hold fewer than 8 (n < 150 at 5%)."""
    k = cfg.cv_folds
    return (k >= 2 and n >= max(_MIN_POINTS_FOR_HOLDOUT, 2 * k)
            and max(1, round(cfg.holdout * n)) < _CV_BELOW_HOLDOUT)


def _train_epoch(model: RewardEnsemble, opt: torch.optim.Optimizer, x_tr: Tensor, z_tr: Tensor, weights: Tensor,
                 cfg: RewardConfig, gen: torch.Generator, sgld_gen: torch.Generator | None) -> float:
    """One epoch of shuffled minibatches; loss = sum_h sum_i w_ih (pred_ih - z_i)^2 / B. Returns the mean loss."""
    model.train()
    n_train, device = len(x_tr), x_tr.device
    params = list(model.parameters())
    order = torch.randperm(n_train, generator=gen, device=device)
    loss_sum = torch.zeros((), device=device)
    for idx in order.split(cfg.batch_size):
        pred = model._standardised_heads(model._hidden(x_tr[idx], gen))  # the priors come after the fit (step 8)
        loss = (weights[idx] * (pred - z_tr[idx, None]) ** 2).sum(dim=0).div(len(idx)).sum()
        opt.zero_grad()
        loss.backward()
        if sgld_gen is not None:
            # SGLD (SEIKO-TS): gradient noise of scale base * sqrt(lr) / sqrt(batch), batch = this minibatch's size
            scale = cfg.sgld_base * math.sqrt(cfg.lr) / math.sqrt(len(idx))
            for p in params:
                p.grad.add_(torch.randn(p.shape, generator=sgld_gen, device=device, dtype=p.dtype), alpha=scale)
        opt.step()
        loss_sum += loss.detach() * len(idx)
    return float(loss_sum) / n_train


def cross_validated_epoch(x: Tensor, y: Tensor, cfg: RewardConfig, *, seed: int) -> tuple[int, float]:
    """(epoch, criterion): the number of epochs chosen by ``cfg.cv_folds``-fold cross-validation (lever N).

    The labels are split at random into K folds; K ensembles (cfg's architecture, bootstrap and learning rate, each
    standardised on its own training labels) train on the other folds in lockstep, and after every epoch the
    criterion is the squared error of each on its own fold, summed over folds (every label held out once) and divided
    by n and by the variance of all n labels. The epoch with the lowest criterion is returned; cfg.patience epochs
    without improvement, or cfg.max_epochs, end the search. Draws come from a stream of the seed's own."""
    n, dim = x.shape
    device = x.device
    gen = torch.Generator(device=device).manual_seed(int(seed) * 7_919 + 49_979_687)
    folds = torch.randperm(n, generator=gen, device=device).tensor_split(cfg.cv_folds)
    scale = float(y.var(correction=0)) * n
    if not scale > 1e-12:
        scale = float(n)
    runs = []
    for fold in folds:
        mask = torch.ones(n, dtype=torch.bool, device=device)
        mask[fold] = False
        y_tr = y[mask]
        mean, std = _target_scaling(y_tr, cfg)
        z_tr = ((y_tr - mean) / std).to(torch.float32)
        weights = _bootstrap_weights(len(y_tr), cfg.num_heads, cfg.bootstrap, gen, device)
        model = RewardEnsemble(dim, cfg, generator=gen, device=device)
        runs.append((model, torch.optim.Adam(model.parameters(), lr=cfg.lr), x[mask], z_tr, weights, x[fold],
                     y[fold].double(), mean, std))
    best, best_epoch, wait = math.inf, 0, 0
    for epoch in range(1, cfg.max_epochs + 1):
        sse = 0.0
        for model, opt, x_tr, z_tr, weights, x_ho, y_ho, mean, std in runs:
            _train_epoch(model, opt, x_tr, z_tr, weights, cfg, gen, None)
            model.eval()
            pred = _standardised_predictions(model, x_ho).double() * std + mean
            sse += float(((pred - y_ho[:, None]) ** 2).mean(dim=1).sum())
        crit = sse / scale
        if not math.isfinite(crit):
            raise FloatingPointError(f"reward cross-validation diverged at epoch {epoch} (criterion {crit}); lower cfg.lr")
        if crit < best - _MIN_DELTA:
            best, best_epoch, wait = crit, epoch, 0
        else:
            wait += 1
            if wait >= cfg.patience:
                break
    return best_epoch, best


def fit_reward(
    embeddings: Tensor,
    scores: Tensor,
    cfg: RewardConfig,
    *,
    seed: int,
    sgld: bool = False,
    on_progress: ProgressFn | None = None,
) -> FitResult:
    """Fit the bootstrap ensemble on (embeddings (N, D), scores (N,)); ``sgld=True`` gives SEIKO-TS's posterior sample.

    Runs on the device of ``embeddings``. ``on_progress(epoch, cfg.max_epochs, metrics)`` is called after every epoch.
    """
    x, y = _validated(embeddings, scores)
    n, dim = x.shape
    device = x.device
    gen = torch.Generator(device=device).manual_seed(int(seed))
    # SGLD's noise has a stream of its own: a TS fit differs from a plain one by the noise alone, never by a shifted
    # stream of split, bootstrap, init or dropout draws
    sgld_gen = torch.Generator(device=device).manual_seed(int(seed) * 7_919 + 104_729) if sgld else None

    # 1. held-out split for early stopping (none below 8 points: every point is needed for training; none when fewer
    #    than cfg.min_holdout would be held out: the training loss is the criterion then)
    cross_validate = uses_cross_validation(n, cfg)
    n_holdout = 0 if cross_validate else holdout_size(n, cfg)
    perm = torch.randperm(n, generator=gen, device=device)
    hold_idx, train_idx = perm[:n_holdout], perm[n_holdout:]
    x_tr, y_tr, x_ho, y_ho = x[train_idx], y[train_idx], x[hold_idx], y[hold_idx]
    n_train = n - n_holdout

    # 2. target standardisation on the training targets; a zero spread (one point, constant scores) scales by 1
    y_mean, y_std = _target_scaling(y_tr, cfg)
    z_tr = ((y_tr - y_mean) / y_std).to(torch.float32)
    z_ho = ((y_ho - y_mean) / y_std).to(torch.float32)

    # 3. one bootstrap resample per head, as per-sample weights (n_train, H)
    weights = _bootstrap_weights(n_train, cfg.num_heads, cfg.bootstrap, gen, device)

    # 4. model and optimiser
    model = RewardEnsemble(dim, cfg, generator=gen, device=device)
    model.y_mean.fill_(y_mean)
    model.y_std.fill_(y_std)
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)

    # 4b. lever N (cfg.cv_folds): below 150 labels the number of epochs is chosen by cross-validation on every label,
    #     and the ensemble is then trained on all of them for exactly that many epochs
    cv_epoch, cv_crit = cross_validated_epoch(x, y, cfg, seed=seed) if cross_validate else (None, None)

    best, best_epoch, best_state, wait, epochs_run = math.inf, 0, None, 0, 0
    for epoch in range(1, (cv_epoch or cfg.max_epochs) + 1):
        # 5. one epoch of minibatches; loss = sum_h sum_i w_ih (pred_ih - z_i)^2 / B
        epoch_loss = _train_epoch(model, opt, x_tr, z_tr, weights, cfg, gen, sgld_gen)
        epochs_run = epoch

        # 6. early stopping: held-out MSE, or the (eval-mode, bootstrap-weighted) training MSE when there is no split
        model.eval()
        if n_holdout:
            crit = _weighted_mse(_standardised_predictions(model, x_ho), z_ho, None)
        else:
            crit = _weighted_mse(_standardised_predictions(model, x_tr), z_tr, weights)
        if not math.isfinite(crit):
            raise FloatingPointError(f"reward fit diverged at epoch {epoch} (criterion {crit}); lower cfg.lr")
        if cv_epoch is not None:  # the epoch count is fixed: the last epoch's weights are the model
            if epoch == cv_epoch:
                best, best_epoch = crit, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif crit < best - _MIN_DELTA:
            best, best_epoch, wait = crit, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            wait += 1
        if on_progress is not None:
            on_progress(epoch, cv_epoch or cfg.max_epochs, {"loss": epoch_loss, "criterion": crit, "best_epoch": best_epoch})
        if wait > 0 and wait >= cfg.patience:  # cfg.patience epochs in a row without improvement
            break

    # 7. keep the best epoch's weights and report metrics in the original units (with the priors of step 8)
    assert best_state is not None  # the first epoch always improves on +inf
    model.load_state_dict(best_state)
    model.eval().requires_grad_(False)
    # 8. the randomized priors (cfg.prior_scale > 0), added to the fitted heads in closed form (see set_prior): the
    # trained weights are exactly the prior-free fit's, and the priors have a stream of their own
    prior_lam = model.set_prior(x_tr, torch.Generator(device=device).manual_seed(int(seed) * 7_919 + 15_485_863))
    with torch.no_grad():
        pred_tr = _standardised_predictions(model, x_tr).double() * y_std + y_mean
        pred_ho = _standardised_predictions(model, x_ho).double() * y_std + y_mean if n_holdout else None
    metrics: dict[str, Any] = {
        "n": n,
        "n_train": n_train,
        "n_holdout": n_holdout,
        "epochs_run": epochs_run,
        "best_epoch": best_epoch,
        "cv_folds": cfg.cv_folds if cv_epoch is not None else 0,  # lever N: the epoch count chosen by K-fold CV
        "cv_criterion": cv_crit,  # its held-out squared error over all labels, in units of their variance
        "train_mse": _weighted_mse(pred_tr, y_tr, None),
        "holdout_mse": _weighted_mse(pred_ho, y_ho, None) if pred_ho is not None else None,
        "head_spread": float(pred_tr.std(dim=1, correction=0).mean()),  # mean over training inputs of the std across heads
        "y_mean": y_mean,
        "y_std": y_std,
        "seed": int(seed),
        "sgld": bool(sgld),
        "prior_scale": float(cfg.prior_scale),
        "prior_lam": prior_lam,  # the prior's ridge penalty and squared radius (None without a prior)
    }
    model.metrics = metrics
    return FitResult(ensemble=model, metrics=dict(metrics))
