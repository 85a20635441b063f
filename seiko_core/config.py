"""One typed configuration for SEIKO, with named presets (``presets()``) instead of copied config files.

Each field carries the reason for its default. ``__post_init__`` validates with a clear ValueError.
"""

from __future__ import annotations

import math
import numbers
import unicodedata
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

TRUNCATIONS = ("per_step", "per_trajectory", "stratified")  # seiko_core.finetune.attached_steps

METHODS = ("nonadaptive", "greedy", "ucb", "ucb_cov", "bootstrap", "ts")  # ucb: textbook bonus; ucb_cov: the reference code's

# seiko_core.optimism.OPTIMISM's names, written out so that a config is checked without importing torch
AGGREGATIONS = ("mean", "max", "softmax", "ucb_heads", "thompson")

# the most UTF-8 bytes a prompt (or the quality template) may have: the app's images table indexes the whole prompt,
# and PostgreSQL refuses an index row over 2,704 bytes (a 950-character CJK prompt was accepted and round 0 never
# opened; found by the fifth review). CLIP reads only a prompt's first 77 tokens, so 1,000 bytes lose nothing it
# sees. The same number as db.models.PROMPT_MAX_BYTES.
PROMPT_MAX_BYTES = 1000


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _whole(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)  # True is an int to Python, not here


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _kind_error(name: str, kind: str, value: Any) -> str | None:
    """Why ``value`` is not of the annotated ``kind`` ('int', 'float', 'bool', 'str', each maybe '| None'), or None."""
    optional = kind.endswith(" | None")
    kind = kind.removesuffix(" | None")
    if value is None:
        return None if optional else f"{name} must be a {kind}, got None"
    if kind == "int":
        return None if _whole(value) else f"{name} must be a whole number, got {value!r}"
    if kind == "float":  # finiteness comes last (_check_finite), after each field's own range check and its sentence
        return None if _number(value) else f"{name} must be a number, got {value!r}"
    if kind == "bool":
        return None if isinstance(value, bool) else f"{name} must be true or false, got {value!r}"
    if kind == "str":
        return None if isinstance(value, str) else f"{name} must be text, got {value!r}"
    if kind.startswith("tuple["):  # a JSON list; a string would be split into its characters by tuple()
        return None if isinstance(value, list | tuple) else f"{name} must be a list, got {value!r}"
    return None  # the items of lists are checked by each __post_init__, sections by their own


def _texts(name: str, values: tuple) -> None:
    """Every item of the list field ``name`` is a non-empty text (a prompt of 1 or "" would reach the text encoder)."""
    _check(all(isinstance(v, str) and v.strip() for v in values), f"{name} must be non-empty texts, got {list(values)!r}")


def prompt_key(prompt: str) -> str:
    """A prompt as CLIP's tokenizer reads it, for telling whether two prompts are the same prompt: NFC-normalised,
    lowercased, each run of whitespace made one space, and stripped ('A  small square ' is 'a small square'). The
    held-out check compared exact strings, so 'A small square' was sampled and trained on while the fixed eval grid
    scored 'a small square' as held out (found by the fifth review)."""
    return " ".join(unicodedata.normalize("NFC", prompt).lower().split())


def _prompt_sizes(name: str, values: tuple) -> None:
    """Every text of ``name`` is at most PROMPT_MAX_BYTES in UTF-8; the sentence names the first that is not."""
    for v in values:
        size = len(v.encode("utf-8", "surrogatepass"))  # a lone surrogate is the database's to refuse, in its words
        shown = repr(v) if len(v) <= 40 else repr(v[:37]) + "..."
        _check(size <= PROMPT_MAX_BYTES,
               f"{name} {shown} is {size:,} bytes in UTF-8; the limit is {PROMPT_MAX_BYTES:,} bytes per prompt (CLIP "
               "reads only a prompt's first 77 tokens, and the database indexes the whole prompt)")


def _check_finite(obj: Any) -> None:
    """No number field holds nan or infinity (``kl_weight=Infinity`` passes a ``>= 0`` check); called last, so a field
    whose own check already speaks of finiteness keeps its sentence."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if str(f.type).removesuffix(" | None") == "float" and value is not None:
            _check(math.isfinite(value), f"{f.name} must be a finite number, got {value!r}")


def _check_kinds(obj: Any) -> None:
    """Every scalar field of a config dataclass holds a value of its annotated kind (a JSON override such as
    ``--set finetune.epochs=2.5`` or ``sampling.guidance=NaN`` is refused here, with the field's name), so the range
    checks after it compare numbers."""
    for f in fields(obj):
        problem = _kind_error(f.name, str(f.type), getattr(obj, f.name))
        _check(problem is None, problem or "")


@dataclass
class RewardConfig:
    num_heads: int = 4  # bootstrap heads on one shared backbone (the authors found 4 enough)
    hidden: tuple[int, ...] = (1024, 128, 64, 16)  # LAION-aesthetic MLP shape; the last width is the UCB feature size
    dropout: tuple[float, ...] = (0.2, 0.2, 0.1)  # after the first three hidden layers, as in the reference
    linear: bool = True  # the reference MLP has no non-linearities
    lr: float = 1e-3  # Adam, as in the reference
    batch_size: int = 512  # reference batch; smaller data sets are fitted in one batch
    max_epochs: int = 300  # reference cap; early stopping usually ends sooner
    patience: int = 30  # epochs without held-out improvement before stopping
    holdout: float = 0.05  # held-out fraction for early stopping (at least one point once n >= 8)
    # the fewest held-out labels early stopping is judged on; with fewer (n < ~150 at 5%) no labels are held out and
    # the fit stops on the training loss. 1 = always split once n >= 8 (a review found 1-2 held-out labels choosing
    # an epoch-1 model in 4 of 12 fits of 20 labels: seiko_core.reward.fit_reward)
    min_holdout: int = 1
    # lever N (BENCHMARKS.md): where the held-out split would hold fewer than 8 labels (n < 150 at 5%), choose the
    # number of epochs by this many-fold cross-validation on every label, then train on all of them for that many
    # epochs. 0 = off (the held-out split above). Ratings fits only: a fit of comparisons refuses it
    cv_folds: int = 0
    bootstrap: str = "poisson"  # per-sample weights per head: "poisson" (Poisson(1)) or "multinomial"
    standardise: bool = True  # fit on (y - mean) / std, predict in the original units
    # TS: gradient noise of scale base * sqrt(lr) / sqrt(batch), as in the reference. At this default the noise (about
    # 2e-8 a coordinate, added before Adam normalises the step) moves predictions by ~2e-6, against 0.07 between two
    # seeds' fits (a review's measurement, 3 Dec 2026): TS's spread comes from its posterior head draw
    # (seiko_core.optimism.thompson_draw), not from this noise
    sgld_base: float = 1e-5
    # Randomized prior functions (Osband et al. 2018): each head adds prior_scale times a fixed random linear function
    # of the embedding (standardised rating units), in closed form the part of a random prior that a ridge fit of the
    # labels would leave (RewardEnsemble.set_prior): about halved on the labels, whole away from them, where the
    # heads then disagree. 0 = no prior.
    prior_scale: float = 0.0

    def __post_init__(self) -> None:
        _check_kinds(self)
        self.hidden = tuple(self.hidden)
        self.dropout = tuple(self.dropout)
        _check(all(_whole(w) and w >= 1 for w in self.hidden),
               f"hidden must be whole layer widths of at least 1, got {list(self.hidden)}")
        _check(all(_number(d) and 0 <= d < 1 for d in self.dropout),
               f"dropout must be rates in [0, 1), got {list(self.dropout)}")
        _check(self.patience >= 1 and self.sgld_base >= 0, "patience must be at least 1 and sgld_base non-negative")
        _check(self.num_heads >= 1, f"num_heads must be at least 1, got {self.num_heads}")
        _check(len(self.hidden) >= 1, "hidden needs at least one layer width")
        _check(0 <= self.holdout < 0.5, f"holdout must be in [0, 0.5), got {self.holdout}")
        _check(_whole(self.min_holdout) and self.min_holdout >= 1, f"min_holdout must be a whole number >= 1, got {self.min_holdout}")
        _check(_whole(self.cv_folds) and (self.cv_folds == 0 or 2 <= self.cv_folds <= 20),
               f"cv_folds must be 0 (off) or a whole number from 2 to 20, got {self.cv_folds}")
        _check(self.bootstrap in ("poisson", "multinomial"), f"unknown bootstrap {self.bootstrap!r}; choose from ['multinomial', 'poisson']")
        _check(self.lr > 0 and self.batch_size > 0 and self.max_epochs > 0, "lr, batch_size and max_epochs must be positive")
        _check(math.isfinite(self.prior_scale) and self.prior_scale >= 0,
               f"prior_scale must be a finite number >= 0 (0 = no prior), got {self.prior_scale}")
        _check_finite(self)


# The UCB bonus is g(x) = alpha * y_std * sqrt(f^T A^{-1} f): alpha counts standard deviations of the ratings on D,
# so it means the same on a 1-10 human scale and on an oracle's. The scale of each form, fixed by a rule written
# down before any benchmark (BENCHMARKS.md, "How the UCB bonus scale was chosen"), never tuned per oracle:
# - textbook (A = lambda I + sum f f^T): alpha = 1, one standard error of a ridge-regression head on the features
#   when the residual noise is as large as the ratings' own spread (the conservative case); it shrinks like
#   sqrt(F_eff / n), about 0.5-0.7 std at n = 32 and half that at n = 128;
# - covariance (reference code, A = Cov(f) + lambda I, does not shrink): alpha = 0.5 / sqrt(F) with F = 16 features,
#   so a point at the data's typical Mahalanobis distance (sqrt(F)) gets half a standard deviation. (A review found
#   the bonus dominated by the uncentred features' mean, as in the reference code: about 1.4 stds on rated and new
#   images alike; BENCHMARKS.md, "Correction".) Both forms also move with the learned features' scale through the
#   absolute lambda the spec fixes (a sixth review: 0.38 / 0.67 / 0.85 stds for the textbook form at 32 labels with the
#   features x 0.1 / x 1 / x 10, the same predictions; BENCHMARKS.md, "Second correction").
UCB_DEFAULT_ALPHA: dict[str, float] = {"textbook": 1.0, "covariance": 0.125}


@dataclass
class OptimismConfig:
    aggregation: str = "max"  # how heads become one reward: mean, max, softmax, ucb_heads, thompson (seiko_core.optimism)
    # softmax aggregation's temperature tau, in stds of the ratings fitted (the ensemble's y_std; 1 when the reward
    # fit does not standardise). Before 4 Dec 2026 it was in raw rating units: an experiment made before then and
    # set to softmax is less optimistic at the same tau from that day
    temperature: float = 1.0
    ucb_beta: float = 1.0  # ucb_heads: mean + beta * std across heads
    bonus: str | None = None  # linear-UCB bonus on the last hidden features: None, "textbook" or "covariance"
    bonus_alpha: float | None = None  # in rating stds; None: the form's calibrated default (UCB_DEFAULT_ALPHA)
    bonus_lambda: float = 1e-3  # reference lambda (ridge)
    bonus_clip: float = 10.0  # reference clip c
    # None: off. kappa > 0: after each refit the bonus is scaled down (never up) so that its spread over the feedback
    # set is at most kappa times the spread of the predicted reward there: optimism may not drown the reward signal it
    # is meant to explore around (issue 11's measured reason; the rule is in BENCHMARKS.md, "A bonus bounded by ...")
    bonus_balance: float | None = None

    def __post_init__(self) -> None:
        _check_kinds(self)
        _check(self.aggregation in AGGREGATIONS,
               f"unknown aggregation {self.aggregation!r}; choose from {sorted(AGGREGATIONS)}")
        _check(self.ucb_beta >= 0 and self.bonus_clip > 0, "ucb_beta must be non-negative and bonus_clip positive")
        _check(self.temperature > 0, f"temperature must be positive, got {self.temperature}")
        _check(self.bonus in (None, "textbook", "covariance"), f"unknown bonus {self.bonus!r}; choose from [None, 'covariance', 'textbook']")
        _check(self.bonus_lambda > 0, f"bonus_lambda must be positive, got {self.bonus_lambda}")
        _check(self.bonus_alpha is None or self.bonus_alpha >= 0, f"bonus_alpha must be non-negative, got {self.bonus_alpha}")
        _check(self.bonus_balance is None or self.bonus_balance > 0,
               f"bonus_balance must be positive (or None for off), got {self.bonus_balance}")
        _check_finite(self)

    def alpha(self) -> float:
        """The bonus scale in use: ``bonus_alpha``, or the calibrated default of the configured form."""
        if self.bonus_alpha is not None:
            return float(self.bonus_alpha)
        return UCB_DEFAULT_ALPHA.get(self.bonus or "textbook", 1.0)


@dataclass
class SamplingConfig:
    steps: int = 50  # DDIM steps (reference 50)
    eta: float = 1.0  # DDIM eta (reference 1.0): stochastic, so the per-step KL is defined
    guidance: float = 7.5  # classifier-free guidance scale (reference 7.5)
    batch_size: int = 16  # images per sampling batch

    def __post_init__(self) -> None:
        _check_kinds(self)
        _check(self.steps >= 1, f"steps must be at least 1, got {self.steps}")
        _check(self.guidance >= 0, f"guidance must be non-negative (1: no guidance), got {self.guidance}")
        _check(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        # above 1 the DDIM step's sigma exceeds what 1 - alpha_prev leaves for the direction term: diffusers' step
        # returns NaN there, and a clamp would silently sample something that is not DDIM (a sixth review)
        _check(0 <= self.eta <= 1, f"eta must be between 0 (deterministic DDIM) and 1 (the reference's stochastic DDIM), "
                                   f"got {self.eta}")
        _check_finite(self)


@dataclass
class FinetuneConfig:
    lora_rank: int = 4  # adapter rank on the attention projections
    lora_alpha: float = 4.0
    # how a fresh adapter's A matrices are drawn (B starts at 0 either way): "kaiming" (peft's default: uniform, std
    # 1/sqrt(3 fan_in)) or "gaussian" (the reference's diffusers LoRALinearLayer: N(0, 1/r^2), 8-15x larger at SD 1.5's
    # widths, so an Adam step at the same lr moves the model that much further)
    lora_init: str = "kaiming"
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")  # reference targets
    lr: float = 1e-3  # AdamW (reference)
    weight_decay: float = 0.1  # reference
    grad_clip: float = 5.0  # reference
    epochs: int = 5  # per round (reference)
    trajectories_per_epoch: int = 128  # sampled trajectories per epoch (reference)
    batch_size: int = 4  # trajectories per forward/backward pass
    grad_accum: int = 16  # passes per optimiser step (reference: 64 trajectories per step at batch 4)
    kl_weight: float = 0.01  # weight of the trajectory KL to the previous round (reference)
    loss_coeff: float = 0.01  # reward term coefficient (reference)
    # loss = loss_coeff * |r_opt - target| (reference); None maximises r_opt directly (loss = -loss_coeff * r_opt).
    # A target the optimistic reward can pass (10 on a 1-10 rating scale) pulls the best images' reward back down:
    # the presets use None
    reward_target: float | None = 10.0
    # rating units per unit of mean pairwise distance between the micro-batch's (L2-normalised) image-encoder
    # embeddings, subtracted from the loss (times loss_coeff): a reward for keeping each batch's images apart. 0: off
    diversity_weight: float = 0.0
    # > 0: the diversity term's weight is set per micro-batch so that its gradient with respect to the images is this
    # fraction of the reward term's (:func:`seiko_core.finetune.balanced_diversity_weight`); replaces diversity_weight
    diversity_balance: float = 0.0
    # > 0: a denoising anchor (issue 12, lever R; :func:`seiko_core.finetune.reward_ranked_anchors`). Before the
    # round's first step the model draws anchor_candidates images, keeps the anchor_keep fraction with the highest
    # optimistic reward, and every micro-batch adds the standard denoising loss on those kept images, weighted so that
    # its gradient on the adapter has this fraction of the norm of the rest of the loss's. 0: off
    anchor_balance: float = 0.0
    anchor_candidates: int = 32
    anchor_keep: float = 0.25
    # "per_step" (reference: fresh k ~ U[0, steps] each step), "per_trajectory" (AlignProp/DRaFT: the last K steps) or
    # "stratified" (one step drawn in each of K equal parts of the trajectory); seiko_core.finetune.attached_steps
    truncation: str = "per_step"
    truncation_k: int = 10  # per_trajectory and stratified: how many steps keep the UNet's gradient
    gradient_checkpointing: bool = False  # recompute UNet activations in backward (memory for time)
    mixed_precision: str = "no"  # accelerate: "no", "fp16" or "bf16"
    # a time limit per round: no optimiser step starts that would, at the round's mean step time so far, end after
    # max_seconds (at least one step is taken); None: all epochs. A slower machine then does fewer steps, not a longer wait
    max_seconds: float | None = None
    # True: the round's reward fit counts against max_seconds too (fine-tuning gets what the fit left, at least one
    # step), so a slower fit (reward.cv_folds) shortens the fine-tuning instead of the wait. False: fine-tuning alone.
    # (Non-adaptive's one round has K times the limit and pays for one fit, the K-round methods for K of them.)
    max_seconds_counts_reward_fit: bool = False

    def steps_per_epoch(self, processes: int = 1) -> int:
        """Optimiser steps in one epoch: its trajectories over the trajectories of one step (at least one)."""
        return max(1, math.ceil(self.trajectories_per_epoch / (self.batch_size * self.grad_accum * processes)))

    def __post_init__(self) -> None:
        _check_kinds(self)
        self.target_modules = tuple(self.target_modules)
        _check(self.target_modules and all(isinstance(m, str) and m for m in self.target_modules),
               f"target_modules must be module names, got {list(self.target_modules)}")
        _check(self.lr > 0 and self.lora_alpha > 0 and self.grad_clip > 0,
               f"lr, lora_alpha and grad_clip must be positive, got {self.lr}, {self.lora_alpha} and {self.grad_clip}")
        _check(self.weight_decay >= 0 and self.loss_coeff >= 0,
               f"weight_decay and loss_coeff must be non-negative, got {self.weight_decay} and {self.loss_coeff}")
        _check(self.trajectories_per_epoch >= 1, f"trajectories_per_epoch must be at least 1, got {self.trajectories_per_epoch}")
        if self.max_seconds is not None:
            self.max_seconds = float(self.max_seconds)
            _check(math.isfinite(self.max_seconds) and self.max_seconds > 0,
                   f"max_seconds must be a positive number of seconds or None, got {self.max_seconds!r}")
        _check(self.lora_rank >= 1, f"lora_rank must be at least 1, got {self.lora_rank}")
        _check(self.truncation in TRUNCATIONS, f"unknown truncation {self.truncation!r}; choose from {list(TRUNCATIONS)}")
        _check(self.truncation_k >= 1, f"truncation_k must be at least 1, got {self.truncation_k}")
        _check(self.kl_weight >= 0, f"kl_weight must be non-negative, got {self.kl_weight}")
        _check(math.isfinite(self.diversity_weight) and self.diversity_weight >= 0,
               f"diversity_weight must be a non-negative number, got {self.diversity_weight!r}")
        _check(math.isfinite(self.diversity_balance) and self.diversity_balance >= 0,
               f"diversity_balance must be a non-negative number, got {self.diversity_balance!r}")
        _check(math.isfinite(self.anchor_balance) and self.anchor_balance >= 0,
               f"anchor_balance must be a non-negative number, got {self.anchor_balance!r}")
        _check(self.anchor_candidates >= 1, f"anchor_candidates must be at least 1, got {self.anchor_candidates}")
        _check(math.isfinite(self.anchor_keep) and 0 < self.anchor_keep <= 1,
               f"anchor_keep must be a fraction in (0, 1], got {self.anchor_keep!r}")
        _check(not (self.diversity_weight and self.diversity_balance),
               "set diversity_weight (a fixed weight) or diversity_balance (a gradient ratio), not both")
        _check(self.lora_init in ("kaiming", "gaussian"),
               f"unknown lora_init {self.lora_init!r}; choose from ['gaussian', 'kaiming']")
        _check(self.mixed_precision in ("no", "fp16", "bf16"), f"unknown mixed_precision {self.mixed_precision!r}; choose from ['bf16', 'fp16', 'no']")
        _check(self.batch_size >= 1 and self.grad_accum >= 1 and self.epochs >= 0, "batch_size and grad_accum must be at least 1, epochs non-negative")
        _check_finite(self)


def with_quality_template(cfg, prompt: str) -> str:
    """``prompt`` prefixed with ``cfg.quality_template`` (the reference's form: the template, a space, the prompt)."""
    return f"{cfg.quality_template} {prompt}"


@dataclass
class SeikoConfig:
    method: str = "bootstrap"  # nonadaptive, greedy, ucb, bootstrap or ts (see METHOD_OPTIMISM)
    budgets: tuple[int, ...] = (1024, 2048, 4096, 8192)  # feedback per round (reference); nonadaptive uses the sum in one round
    prompts: tuple[str, ...] = ()  # sampling prompt set
    good_prompt_prop: float = 0.2  # fraction of prompts prefixed with quality_template (reference)
    quality_template: str = ""  # prefix for that fraction; empty means none
    eval_prompts: tuple[str, ...] = ()  # fixed held-out prompts for per-round evaluation
    eval_seeds: tuple[int, ...] = tuple(range(8))
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    optimism: OptimismConfig = field(default_factory=OptimismConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        _check_kinds(self)
        for name, section in SECTIONS.items():  # from_dict makes them from JSON objects; a number here fails later
            _check(isinstance(getattr(self, name), section),
                   f"{name} must be a {section.__name__} section, got {getattr(self, name)!r}")
        _check(all(_whole(b) for b in self.budgets),
               f"budgets must be whole numbers, got {list(self.budgets)}")
        self.budgets = tuple(int(b) for b in self.budgets)
        self.prompts = tuple(self.prompts)
        self.eval_prompts = tuple(self.eval_prompts)
        _texts("prompts", self.prompts)
        _texts("eval_prompts", self.eval_prompts)
        _check(all(_whole(s) for s in self.eval_seeds), f"eval_seeds must be whole numbers, got {list(self.eval_seeds)!r}")
        self.eval_seeds = tuple(int(s) for s in self.eval_seeds)
        _check(self.method in METHODS, f"unknown method {self.method!r}; choose from {sorted(METHODS)}")
        _check(len(self.budgets) >= 1 and all(b >= 1 for b in self.budgets), f"budgets must be positive integers, got {self.budgets}")
        _check(0 <= self.good_prompt_prop <= 1, f"good_prompt_prop must be in [0, 1], got {self.good_prompt_prop}")
        shared = sorted(set(self.eval_prompts) & set(self.prompts))
        _check(not shared, f"eval prompts must be held out from the sampling prompts, but {shared} appear in both; "
                           "evaluate on prompts that no round samples")
        _check_finite(self)

    def for_method(self, method: str) -> SeikoConfig:
        """This config with ``method`` and the optimism it implies (METHOD_OPTIMISM).

        Non-adaptive gets the K budgets in one round and K times the epochs (SEIKO.md: equal compute), so that it
        takes as many optimiser steps as the K-round methods, and K times the round's time limit (``max_seconds``)
        when there is one, so the limit does not take those steps back. Call it once on a per-round config."""
        _check(method in METHODS, f"unknown method {method!r}; choose from {sorted(METHODS)}")
        cfg = from_dict(to_dict(self))
        cfg.method = method
        agg, bonus = METHOD_OPTIMISM[method]
        cfg.optimism.aggregation = agg
        cfg.optimism.bonus = bonus
        if method == "nonadaptive":
            # one round holding the whole budget, with K times the epochs: the same optimiser steps as K rounds
            cfg.budgets = (sum(self.budgets),)
            cfg.finetune.epochs = self.finetune.epochs * len(self.budgets)
            if self.finetune.max_seconds is not None:
                cfg.finetune.max_seconds = self.finetune.max_seconds * len(self.budgets)
        return cfg


# method -> (aggregation of heads, linear-UCB bonus form). TS: one posterior draw per round from the heads (fitted with
# SGLD noise as in the reference), used for the whole round's fine-tuning (seiko_core.optimism.thompson_draw).
METHOD_OPTIMISM: dict[str, tuple[str, str | None]] = {
    "nonadaptive": ("mean", None),
    "greedy": ("mean", None),
    "ucb": ("mean", "textbook"),
    "ucb_cov": ("mean", "covariance"),
    "bootstrap": ("max", None),
    "ts": ("thompson", None),
}


# the sections of a SeikoConfig: a JSON object each in a config dict (from_dict)
SECTIONS: dict[str, type] = {"sampling": SamplingConfig, "reward": RewardConfig, "optimism": OptimismConfig,
                             "finetune": FinetuneConfig}


def check_runnable(cfg: SeikoConfig) -> None:
    """What a config needs before a run trains with it, beyond what makes it a valid config (the bare default, with no
    prompts, is one): prompts to sample from and held-out prompts to evaluate on. A ValueError with one sentence."""
    _check(len(cfg.prompts) >= 1, f"prompts must hold at least one prompt to sample from, got {list(cfg.prompts)}")
    _check(len(cfg.eval_prompts) >= 1, f"eval_prompts must hold at least one held-out prompt, got {list(cfg.eval_prompts)}")


# The most one round may ask for. A larger value is a typo or a unit slip, not an experiment: the new-experiment form
# took 1e30 epochs, a time limit of 1e300 s and a KL weight of 1e308 (found by review). Per round, as a person gives
# them: Non-adaptive's one round then gets K times the epochs and the time limit (SeikoConfig.for_method), so these
# are checked before that, by check_round_limits, not by each config's __post_init__ (a stored Non-adaptive config may
# hold more).
MAX_BUDGET = 100_000  # labels (images) per round: 12x the reference's largest round (8192)
MAX_EPOCHS = 1000  # fine-tuning epochs per round: 200x the reference's 5
MAX_SECONDS = 7 * 24 * 3600  # a round's fine-tuning time limit, seconds: one week
MAX_KL_WEIGHT = 1e3  # 100,000x the reference's 0.01: the KL term then outweighs any reward by far


def _number_shown(value: float) -> str:
    return str(value) if _whole(value) and abs(value) < 10**15 else f"{value:.6g}"


def check_prompts(cfg: SeikoConfig) -> None:
    """The prompts a person chose are ones the app can store: each prompt, eval prompt and the quality template at
    most :data:`PROMPT_MAX_BYTES` in UTF-8; a ValueError with one sentence naming the first too long and the limit.
    Called where check_round_limits is (a new experiment, the simulator's and bench-taste's ``--set``), not by
    ``__post_init__``: an experiment stored before the limit keeps loading.

    And the eval prompts are held out as CLIP reads them (``prompt_key``): 'A small square' sampled is 'a small
    square' trained on, refused as ``__post_init__`` refuses an exact overlap (which stays exact there, so that an
    experiment stored with such a pair still loads)."""
    _prompt_sizes("prompt", cfg.prompts)
    _prompt_sizes("eval prompt", cfg.eval_prompts)
    _prompt_sizes("quality_template", (cfg.quality_template,))
    sampled = {prompt_key(p): p for p in cfg.prompts}
    shared = sorted({p for p in cfg.eval_prompts if prompt_key(p) in sampled})
    _check(not shared, f"eval prompts must be held out from the sampling prompts, but {shared} appear in both (as "
                       f"{[sampled[prompt_key(p)] for p in shared]}: CLIP's tokenizer ignores case and runs of "
                       "whitespace); evaluate on prompts that no round samples")


def check_round_limits(cfg: SeikoConfig) -> None:
    """The per-round values a person chose (each round's budget, its fine-tuning epochs, time limit and KL weight) are
    within :data:`MAX_BUDGET`, :data:`MAX_EPOCHS`, :data:`MAX_SECONDS` and :data:`MAX_KL_WEIGHT`; a ValueError with one
    sentence naming the field and its limit. Call it on the per-round config, before ``for_method``: the app's
    experiments (app.services.build_config: the new-experiment form and every other way one is created), the
    simulator's campaigns and bench-taste (``--set``) do."""
    ft = cfg.finetune
    big = [b for b in cfg.budgets if b > MAX_BUDGET]
    _check(not big, f"budgets (labels per round) must be at most {MAX_BUDGET:,} each, got {_number_shown(big[0]) if big else ''}")
    _check(ft.epochs <= MAX_EPOCHS,
           f"finetune.epochs (fine-tuning epochs per round) must be at most {MAX_EPOCHS:,}, got {_number_shown(ft.epochs)}")
    _check(ft.max_seconds is None or ft.max_seconds <= MAX_SECONDS,
           f"finetune.max_seconds (the fine-tuning time limit per round) must be at most {MAX_SECONDS:,} s (7 days), "
           f"got {_number_shown(ft.max_seconds or 0)}")
    _check(math.isfinite(ft.kl_weight) and ft.kl_weight <= MAX_KL_WEIGHT,
           f"finetune.kl_weight (the KL weight) must be at most {MAX_KL_WEIGHT:g}, got {_number_shown(ft.kl_weight)}")


# Fine-tuning draws trajectory n of the round trained with seed T from the seed (T + 1) * 10^6 + n
# (seiko_core.finetune), so one round's trajectories must stay under a million, or its last ones take the first seeds
# of the round trained with T + 1 (the simulator's next round). `--set finetune.epochs=1000
# finetune.trajectories_per_epoch=2000` passed every check (found by review). Checked on the config a round trains
# with, after for_method (Non-adaptive's one round has K times the epochs): check_round_trajectories.
MAX_ROUND_TRAJECTORIES = 10**6


def round_trajectories(ft: FinetuneConfig) -> int:
    """The trajectories one round's fine-tuning renders, all processes together: ``epochs`` epochs of whole optimiser
    steps of ``batch_size * grad_accum`` trajectories (``batch_size`` is the global batch: app.train_dist splits it)."""
    return ft.epochs * ft.steps_per_epoch() * ft.batch_size * ft.grad_accum


def trajectory_limit_message(n: int, what: str) -> str:
    """The sentence that refuses ``n`` trajectories in one round (``what`` names the round)."""
    return (f"{what} would fine-tune on {n:,} trajectories, but a round's trajectory seeds have room for fewer than "
            f"{MAX_ROUND_TRAJECTORIES:,} before the next round's (seiko_core.finetune); lower finetune.epochs or "
            "finetune.trajectories_per_epoch")


def check_round_trajectories(cfg: SeikoConfig) -> None:
    """A round of ``cfg`` (the config a round trains with: after ``for_method``) renders fewer than
    :data:`MAX_ROUND_TRAJECTORIES` trajectories; a ValueError with one sentence if not."""
    ft = cfg.finetune
    n = round_trajectories(ft)
    if cfg.method == "nonadaptive":
        what = f"Non-adaptive's one round ({ft.epochs:,} epochs: K times the epochs per round)"
    else:
        what = f"each round ({ft.epochs:,} epochs)"
    _check(n < MAX_ROUND_TRAJECTORIES, trajectory_limit_message(n, what))


def to_dict(cfg: Any) -> dict:
    """JSON-ready dict of a config (tuples become lists)."""
    return asdict(cfg)


def from_dict(data: dict) -> SeikoConfig:
    """Inverse of :func:`to_dict`; unknown keys are an error, missing keys take defaults."""
    sub = SECTIONS
    _check(isinstance(data, dict), f"a SEIKO config must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in fields(SeikoConfig)}
    unknown = set(data) - known
    _check(not unknown, f"unknown config keys {sorted(unknown)}; choose from {sorted(known)}")
    kwargs = {}
    for k, v in data.items():
        if k in sub and not is_dataclass(v):
            _check(isinstance(v, dict), f"{k} must be a JSON object, got {v!r}")
            names = {f.name for f in fields(sub[k])}
            bad = set(v) - names
            _check(not bad, f"unknown {k} config keys {sorted(bad)}; choose from {sorted(names)}")
            v = sub[k](**v)
        kwargs[k] = v
    return SeikoConfig(**kwargs)
