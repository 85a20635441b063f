"""KL-constrained fine-tuning by direct reward backpropagation through DDIM sampling (SEIKO step 5).

Maximise E_{x ~ p}[r_opt(x)] - beta * KL(p || p_prev) over a LoRA adapter. The model being trained and
the previous round's model are the same UNet with a different adapter active; the previous model's
prediction is computed only at the steps whose gradient is kept, on the same graph-carrying x_t, with its
adapter frozen.

Per denoising step t (same x_t for both models, same sigma_t):
    KL_t = || mu_new - mu_prev ||^2 / (2 sigma_t^2), averaged over the latent's elements, summed over t.
Loss = loss_coeff * |r_opt(x_0) - target| (or -loss_coeff * r_opt when target is None) + kl_weight * KL
       - loss_coeff * diversity_weight * V, where V is the mean pairwise distance of the micro-batch's image-encoder
       embeddings (:func:`batch_variety`; the term is off at its default diversity_weight = 0). With diversity_balance
       = rho > 0 the weight is instead set per micro-batch so that the term's gradient with respect to the images is
       rho times the reward term's (:func:`balanced_diversity_weight`).
With anchor_balance = rho > 0 (issue 12, lever R; off by default) each micro-batch also adds w * D, the standard
denoising loss on a few reward-ranked anchor images the round's starting model drew (:func:`reward_ranked_anchors`,
:func:`denoising_loss`), w set so that w * D's gradient on the adapter has rho times the norm of the rest of the loss's
(:func:`balanced_anchor_weight`): a mode-covering pull toward several good images against the reward gradient's pull
toward one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint

from . import lora
from .config import MAX_ROUND_TRAJECTORIES, TRUNCATIONS, trajectory_limit_message, with_quality_template
from .features import embed_images
from .sampling import (
    DDIMSchedule,
    DeviceSchedule,
    SeedNoise,
    ddim_mean,
    ddim_sigma,
    decode,
    encode_prompts,
    model_eps,
    to_eps,
    trajectory_noise,
)

RewardFn = Callable[[torch.Tensor, list[str]], torch.Tensor]  # (images in [0,1], prompts) -> (B,), differentiable
ProgressFn = Callable[[int, int, dict], None]

log = logging.getLogger(__name__)


def gaussian_kl(mu_new: torch.Tensor, mu_prev: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """KL(N(mu_new, s^2 I) || N(mu_prev, s^2 I)) per sample, averaged over elements: mean ||d||^2 / (2 s^2)."""
    d = (mu_new - mu_prev).flatten(1)
    return (d**2).mean(1) / (2 * torch.as_tensor(sigma, dtype=d.dtype, device=d.device) ** 2)


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 if it is in a narrower float type (bf16/fp16 under autocast); float64 stays float64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def attached_steps(n_steps: int, mode: str, k: int, generator: torch.Generator) -> torch.Tensor:
    """Bool mask (n_steps,): which denoising steps keep the UNet's gradient.

    per_step (reference): at step i a fresh k_i ~ U{0..n_steps} is drawn; the step is detached if i < k_i.
    per_trajectory (AlignProp/DRaFT): only the last k steps are attached.
    stratified: the steps are cut into k contiguous parts as equal as they can be (earliest to latest) and one step,
    drawn uniformly, is attached in each: per_trajectory's cost (k attached steps), but every step, the early ones
    that settle the background and the layout included, gets a gradient now and then (each with probability 1 / the
    size of its part, about k / n_steps; under per_step step i is attached with probability (i + 1) / (n_steps + 1),
    about n_steps / 2 steps in all).
    """
    idx = torch.arange(n_steps)
    if mode == "per_step":
        return idx >= torch.randint(0, n_steps + 1, (n_steps,), generator=generator)
    if mode == "per_trajectory":
        return idx >= n_steps - min(k, n_steps)
    if mode == "stratified":
        mask = torch.zeros(n_steps, dtype=torch.bool)
        for part in torch.tensor_split(idx, min(k, n_steps)):
            mask[part[int(torch.randint(0, len(part), (1,), generator=generator))]] = True
        return mask
    raise ValueError(f"unknown truncation {mode!r}; choose from {list(TRUNCATIONS)}")


def _check_kl_reachable(ft, schedule, eta: float) -> None:
    """A KL weight with no step where the KL is counted is refused (ValueError, one sentence): the KL is taken at
    attached, stochastic steps, and the last step of a schedule with set_alpha_to_one has sigma = 0. With
    per_trajectory truncation of k = 1 (DRaFT-1) that was the only attached step, so kl_weight did nothing, silently
    (found by review: 0 KL terms against a whole-trajectory KL of 1.6)."""
    if ft.kl_weight <= 0:
        return
    stochastic = ddim_sigma(schedule.alpha, schedule.alpha_prev, eta) > 0
    n = len(stochastic)
    if ft.truncation == "per_trajectory":  # a fixed mask (no draw); per_step and stratified may attach any step
        stochastic = stochastic & attached_steps(n, "per_trajectory", ft.truncation_k, None).to(stochastic.device)
    if not bool(stochastic.any()):
        where = (f"the last {min(ft.truncation_k, n)} step(s) that per_trajectory truncation attaches are"
                 if ft.truncation == "per_trajectory" else "every step of the schedule is")
        raise ValueError(f"kl_weight {ft.kl_weight} would do nothing: {where} deterministic (sigma = 0, the scheduler's "
                         "set_alpha_to_one); attach more steps (finetune.truncation_k) or set kl_weight to 0")


@dataclass
class Trajectory:
    images: torch.Tensor  # (B, 3, H, W) in [0, 1], attached to the graph through the kept steps
    kl: torch.Tensor  # (B,) summed over the steps where it was computed
    kl_steps: int  # how many steps contributed
    diversity_weight: torch.Tensor | float = 0.0  # the variety term's weight in this batch's loss (trajectory_loss)
    latents: torch.Tensor | None = None  # (B, C, S, S) the final latents x_0 the images were decoded from


def rollout(parts, prompts: list[str], seeds: list[int], *, schedule: DDIMSchedule, eta: float, guidance: float,
            attached: torch.Tensor, adapter: str | None, reference: str | None | object = "skip",
            trainable: list[torch.nn.Parameter] | None = None, kl_every_step: bool = False, autocast=None) -> Trajectory:
    """One batch of DDIM trajectories with ``adapter`` active, keeping the graph at ``attached`` steps.

    ``reference`` is the previous model's adapter (None = base model) for the KL term, or "skip" for no KL.
    The KL is computed at attached steps (where it has a gradient), or at every step if ``kl_every_step``.
    """
    cond, uncond = encode_prompts(parts, prompts)
    # all of the trajectory's noise and the schedule go to the device once: no host-to-device copy inside the loop
    z = trajectory_noise(parts, SeedNoise(seeds, parts.device, parts.dtype), len(schedule), eta)
    dev = DeviceSchedule.of(schedule, eta, parts.device)
    # a step with sigma = 0 (the last one when set_alpha_to_one) is deterministic for both models: no KL term there
    stochastic = [bool(s > 0) for s in ddim_sigma(schedule.alpha, schedule.alpha_prev, eta).tolist()]
    attached = [bool(k) for k in attached.tolist()]
    pred = schedule.prediction_type
    grad_on = torch.is_grad_enabled()
    x = z[0]
    kl = torch.zeros(len(prompts), device=parts.device)
    kl_steps = 0
    ctx = autocast or _null
    for i in range(len(dev)):
        # 1. alphas and sigma of this step (DDIM eq. 12, 16)
        a, ap, sigma = dev.alpha[i], dev.alpha_prev[i], dev.sigma[i]
        t_dev = dev.timesteps[i]
        keep = attached[i]
        # 2. the trained model's noise prediction, with a graph only at attached steps
        with torch.set_grad_enabled(keep and grad_on), ctx():
            eps = at_least_fp32(model_eps(parts.unet, x, t_dev, cond, uncond, guidance, a, pred))
        # 3. posterior mean; at a detached step the gradient still flows through x_t, not through the UNet
        mean = ddim_mean(x, eps, a, ap, sigma)
        # 4. the previous model's mean at the SAME graph-carrying x_t, its adapter frozen (not in the optimiser, no
        #    requires_grad). Both means are functions of x_t, so the x_t terms cancel in the KL's gradient as they do
        #    in its value; evaluating it at a detached x_t would add a spurious pull of the trajectory toward the
        #    previous model's fixed mean (tests/seiko_core/test_finetune.py checks the gradient by finite differences).
        if reference != "skip" and (keep or kl_every_step) and stochastic[i]:
            def prev_eps(x_in, t_dev=t_dev, a=a):
                with lora.using(parts.unet, reference, restore=adapter, trainable=trainable), ctx():
                    return at_least_fp32(model_eps(parts.unet, x_in, t_dev, cond, uncond, guidance, a, pred))

            # Its graph is needed only where x_t carries one (an earlier step was attached): at the first attached
            # step x_t is a constant and eps_prev is too, so the KL's gradient flows through eps alone.
            eps_prev = previous_eps(parts.unet, prev_eps, x, graph=keep and grad_on and x.requires_grad)
            mean_prev = ddim_mean(x, eps_prev, a, ap, sigma)
            kl = kl + gaussian_kl(mean, mean_prev, sigma)
            kl_steps += 1
        # 5. x_{t-1} = mean + sigma * z, with per-image seeded noise
        x = mean + sigma * z[i + 1].to(x.dtype) if eta > 0 else mean
    with ctx():
        images = at_least_fp32(decode(parts, x.to(parts.dtype)))
    return Trajectory(images=images, kl=kl, kl_steps=kl_steps, latents=x)


def previous_eps(unet, prev_eps, x: torch.Tensor, *, graph: bool) -> torch.Tensor:
    """``prev_eps(x)``, the previous model's prediction (``prev_eps`` switches to its adapter itself), with a graph
    to ``x`` only if ``graph``. Under the UNet's gradient checkpointing its blocks would be recomputed in backward
    with whatever adapter is active then (the trained one): wrong values. So there the whole call is one checkpoint
    whose recomputation switches adapters itself, with the inner block checkpointing off: it keeps only ``x`` until
    backward, which recomputes the call's full graph (seiko_core.memory counts both)."""
    if graph and getattr(unet, "is_gradient_checkpointing", False):
        return checkpoint(_without_block_checkpointing(unet, prev_eps), x, use_reentrant=False)
    with torch.set_grad_enabled(graph):
        return prev_eps(x)


def _without_block_checkpointing(unet, fn):
    """``fn`` run with the UNet's gradient checkpointing off (turned back on afterwards, also in a recomputation)."""
    def run(*args):
        unet.disable_gradient_checkpointing()
        try:
            return fn(*args)
        finally:
            unet.enable_gradient_checkpointing()
    return run


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@dataclass
class FinetuneResult:
    adapter: str
    steps: int
    metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)


def reward_loss(r: torch.Tensor, coeff: float, target: float | None) -> torch.Tensor:
    """coeff * |r - target| averaged (reference), or -coeff * r when there is no target."""
    if target is None:
        return -coeff * r.mean()
    return coeff * (r - target).abs().mean()


def batch_variety(embeddings: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mean Euclidean distance over the unordered pairs of rows of ``embeddings`` (B, D); 0 for fewer than 2 rows.

    Differentiable everywhere: each distance is sqrt(|e_i - e_j|^2 + eps), so two identical rows give a zero
    gradient instead of NaN."""
    b = embeddings.shape[0]
    if b < 2:
        return embeddings.sum() * 0.0
    i, j = torch.triu_indices(b, b, offset=1, device=embeddings.device)
    diff = embeddings[i] - embeddings[j]
    return torch.sqrt((diff * diff).sum(dim=-1) + eps).mean()


def balanced_diversity_weight(reward_term: torch.Tensor, variety_term: torch.Tensor, images: torch.Tensor,
                              balance: float) -> torch.Tensor:
    """The weight w (a detached scalar tensor) for which |d(w * variety_term)/d images| = balance * |d reward_term/d images|.

    Both terms are scalar losses computed from ``images``; the two gradients stop at ``images`` (the reward model and
    the encoder are differentiated, the sampling chain is not), so the balance costs two backward passes through
    those, not through the UNet. With balance < 1 the combined image gradient keeps a component along the reward
    term's of at least (1 - balance) times its squared norm, whatever the two directions. w is 0 when ``images``
    carry no graph or either gradient is zero (identical images, a flat reward). With several processes each rank
    balances its own slice of the batch."""
    zero = images.new_zeros((), dtype=torch.float32)
    if not (images.requires_grad and reward_term.requires_grad and variety_term.requires_grad):
        return zero
    g_r = torch.autograd.grad(reward_term, images, retain_graph=True, allow_unused=True)[0]
    g_v = torch.autograd.grad(variety_term, images, retain_graph=True, allow_unused=True)[0]
    if g_r is None or g_v is None:
        return zero
    n_r, n_v = g_r.float().norm(), g_v.float().norm()
    return torch.where((n_v > 0) & (n_r > 0), balance * n_r / n_v.clamp_min(torch.finfo(torch.float32).tiny), zero)


def trajectory_loss(parts, reward_fn: RewardFn, prompts: list[str], seeds: list[int], ft, *, schedule: DDIMSchedule,
                    eta: float, guidance: float, attached: torch.Tensor, adapter: str | None, reference: str | None | object,
                    trainable: list[torch.nn.Parameter] | None, autocast=None, kl_every_step: bool = False,
                    ) -> tuple[torch.Tensor, torch.Tensor, Trajectory]:
    """(loss, rewards (B,), trajectory) of one batch: what :func:`finetune` backpropagates for each micro-batch.

    ``ft`` is a FinetuneConfig (loss_coeff, reward_target, kl_weight, diversity_weight, diversity_balance); the
    variety term's weight is left in ``trajectory.diversity_weight``."""
    traj = rollout(parts, prompts, seeds, schedule=schedule, eta=eta, guidance=guidance, attached=attached, adapter=adapter,
                   reference=reference, trainable=trainable, kl_every_step=kl_every_step, autocast=autocast)
    r = reward_fn(traj.images, prompts)
    reward_term = reward_loss(r, ft.loss_coeff, ft.reward_target)
    loss = reward_term + ft.kl_weight * traj.kl.mean()
    if ft.diversity_weight or ft.diversity_balance:
        variety_term = -ft.loss_coeff * batch_variety(embed_images(parts, traj.images).float())
        traj.diversity_weight = (balanced_diversity_weight(reward_term, variety_term, traj.images, ft.diversity_balance)
                                 if ft.diversity_balance else ft.diversity_weight)
        loss = loss + traj.diversity_weight * variety_term
    return loss, r, traj


@dataclass
class Anchors:
    """The denoising anchor's images (lever R): the kept samples' final latents and their prompts' text states."""
    latents: torch.Tensor  # (K, C, S, S)
    cond: torch.Tensor  # (K, L, D)
    prompts: list[str]
    rewards: torch.Tensor  # (K,) the optimistic reward each was kept for
    candidates: int  # how many were drawn


@torch.no_grad()
def reward_ranked_anchors(parts, reward_fn: RewardFn, prompts: list[str], cfg, *, schedule: DDIMSchedule,
                          adapter: str | None, generator: torch.Generator, autocast=None,
                          on_progress: ProgressFn | None = None) -> Anchors:
    """``cfg.finetune.anchor_candidates`` samples of the active model (prompts drawn uniformly from ``prompts`` and
    templated as the trajectories' are, seeds from ``generator``), of which the ``anchor_keep`` fraction (at least one)
    with the highest ``reward_fn`` is kept: reward-ranked filtering as in RAFT, drawn once, before the round's first
    optimiser step. With several processes every rank draws all of them alike (the same anchors everywhere).
    ``on_progress(done, candidates, {"phase": "anchor"})`` after each batch."""
    ft, sc = cfg.finetune, cfg.sampling
    n = ft.anchor_candidates
    idx = torch.randint(0, len(prompts), (n,), generator=generator).tolist()
    seeds = torch.randint(0, 2**62, (n,), generator=generator).tolist()
    chosen = templated(prompts, idx, generator, cfg)
    none_attached = torch.zeros(len(schedule), dtype=torch.bool)
    latents, rewards = [], []
    for lo in range(0, n, ft.batch_size):
        traj = rollout(parts, chosen[lo:lo + ft.batch_size], seeds[lo:lo + ft.batch_size], schedule=schedule, eta=sc.eta,
                       guidance=sc.guidance, attached=none_attached, adapter=adapter, autocast=autocast)
        latents.append(traj.latents)
        rewards.append(reward_fn(traj.images, chosen[lo:lo + ft.batch_size]).float())
        if on_progress is not None:
            on_progress(min(lo + ft.batch_size, n), n, {"phase": "anchor"})
    r = torch.cat(rewards)
    keep = max(1, int(round(ft.anchor_keep * n)))
    top = torch.topk(r, keep).indices.tolist()
    kept = [chosen[i] for i in top]
    cond, _ = encode_prompts(parts, kept)
    return Anchors(latents=torch.cat(latents)[top].detach(), cond=cond.detach(), prompts=kept, rewards=r[top].cpu(),
                   candidates=n)


def denoising_loss(unet, x0: torch.Tensor, cond: torch.Tensor, timesteps: torch.Tensor, alpha: torch.Tensor,
                   noise: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The diffusion training loss in noise space on clean latents ``x0`` (B, C, S, S): x_t = sqrt(a_t) x0 +
    sqrt(1 - a_t) noise at the (B,) integer ``timesteps`` whose alpha-bar values are ``alpha`` (B,), and the mean
    squared error between the noise the UNet implies at x_t (conditional, no guidance) and ``noise``. For an epsilon
    model that is the standard loss; for a v-prediction model it is a_t times the squared error of v (the noise-space
    error is sqrt(a_t) times the v error), so its noisiest steps weigh less than under the usual v loss."""
    a = alpha.to(x0.device).float().view(-1, 1, 1, 1)
    x_t = (a.sqrt() * x0.float() + (1 - a).sqrt() * noise.float()).to(x0.dtype)
    out = unet(x_t, timesteps.to(x0.device), encoder_hidden_states=cond).sample
    eps = at_least_fp32(to_eps(out, x_t, a.to(out.dtype), prediction_type))
    return ((eps - noise.float()) ** 2).mean()


def balanced_anchor_weight(rest: list[torch.Tensor | None], anchor: list[torch.Tensor | None], balance: float) -> float:
    """w with |w * anchor| = balance * |rest| over the adapter's gradients (two lists, one entry per parameter; None
    is zero). 0 when either gradient is zero or not finite (an fp16 overflow: the loss scaler skips that step)."""
    n_r, n_a = _norm(rest), _norm(anchor)
    if not (math.isfinite(n_r) and math.isfinite(n_a)) or n_r <= 0 or n_a <= 0:
        return 0.0
    return balance * n_r / n_a


def _norm(grads: list[torch.Tensor | None]) -> float:
    """The Euclidean norm of a list of gradients (None is zero), read back from the device once."""
    present = [g.float() for g in grads if g is not None]
    if not present:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in present])))


def templated(prompts: list[str], idx: list[int], gen: torch.Generator, cfg, *, rank: int = 0, world: int = 1) -> list[str]:
    """The prompts ``idx`` of ``prompts``, a ``good_prompt_prop`` fraction prefixed with ``quality_template``: the same
    prompt distribution as the round's images (``loop.round_prompts``), so the model is fine-tuned on the prompts it is
    asked (SEIKO.md's outer loop, step 1). ``idx`` is this rank's slice of the global micro-batch of ``len(idx) *
    world``; the prefix draw is global too (from ``gen``, shared by all ranks), so N ranks draw as one process would.
    Without a template (the shapes preset) nothing is drawn from ``gen``: its stream is the one it always was."""
    chosen = [prompts[i] for i in idx]
    if not cfg.quality_template or cfg.good_prompt_prop <= 0:
        return chosen
    b = len(idx)
    good = (torch.rand(b * world, generator=gen) < cfg.good_prompt_prop).tolist()[rank * b:(rank + 1) * b]
    return [with_quality_template(cfg, p) if g else p for p, g in zip(chosen, good)]


def finetune(parts, reward_fn: RewardFn, prompts: list[str], cfg, *, adapter: str, reference: str | None, seed: int,
             on_progress: ProgressFn | None = None, accelerator=None, spent_s: float = 0.0) -> FinetuneResult:
    """Train LoRA adapter ``adapter`` (already added, initialised from ``reference``) toward ``reward_fn``.

    ``spent_s``: seconds of the round's time limit (``finetune.max_seconds``) already used before fine-tuning (the
    reward fit, with ``max_seconds_counts_reward_fit``).

    ``cfg`` is a SeikoConfig (its ``finetune`` and ``sampling`` parts are used). ``reference`` is the previous
    round's adapter name, None for the base model.

    ``accelerator``: the process's Accelerator (default :func:`seiko_core.accel.shared_accelerator` for
    ``finetune.mixed_precision``, made once per process). Data parallel over its N processes: every optimiser step
    draws one GLOBAL batch of ``batch_size * N`` trajectories per micro-batch (prompts, seeds and truncation mask
    from a generator shared by all ranks) and rank r renders the r-th slice of it, so N processes with
    ``batch_size`` b train as one process with ``batch_size`` N*b would (up to floating-point differences).
    Gradients are averaged across ranks in one flat collective before clipping, so all ranks stay identical.
    With ``anchor_balance`` each rank weighs its denoising anchor against its own slice's gradient (the anchors and their
    noise are drawn as one process would), so N processes then train close to, not exactly as, one.
    fp16 scales the loss through ``accelerator.backward`` and unscales before clipping; a step whose gradients
    overflowed is skipped on every rank alike (the reduced gradients are the same everywhere).
    """
    from .accel import reduce_gradients, restart_loss_scale, shared_accelerator

    ft, sc = cfg.finetune, cfg.sampling
    if ft.kl_weight > 0 and sc.eta <= 0:
        raise ValueError("the KL term needs a stochastic sampler: set sampling.eta > 0 (reference 1.0)")
    schedule = DDIMSchedule.from_scheduler(parts.scheduler, sc.steps)
    _check_kl_reachable(ft, schedule, sc.eta)  # before the UNet is touched (train mode, checkpointing): review
    if not prompts:
        raise ValueError("fine-tuning needs at least one prompt")
    acc = accelerator or shared_accelerator(ft.mixed_precision, cpu=parts.device.type == "cpu")
    world = acc.num_processes
    n_round = ft.steps_per_epoch(world) * ft.epochs * ft.grad_accum * ft.batch_size * world
    if n_round >= MAX_ROUND_TRAJECTORIES:  # seed_base below: more would take the next train seed's trajectory seeds
        raise ValueError(trajectory_limit_message(n_round, "this round"))
    restart_loss_scale(acc)
    scaler = getattr(acc, "scaler", None)
    unet = parts.unet
    params = lora.lora_parameters(unet, adapter)
    if not params:
        raise ValueError(f"adapter {adapter!r} has no LoRA parameters on this UNet; add it first")
    if reference is not None:  # the previous round's adapter is the KL's fixed reference: never a leaf with a gradient
        for p in lora.lora_parameters(unet, reference):
            p.requires_grad_(False)
    lora.activate(unet, adapter)
    anchors, anchor_s = None, 0.0
    if ft.anchor_balance > 0:  # drawn by the starting model (the adapter still equals its reference), timed in the limit
        anchor_started = _clock()
        anchors = reward_ranked_anchors(parts, reward_fn, prompts, cfg, schedule=schedule, adapter=adapter,
                                        generator=torch.Generator().manual_seed(seed * 7919 + 1), autocast=acc.autocast,
                                        on_progress=on_progress)
        anchor_s = _clock() - anchor_started
        spent_s += anchor_s
    # the anchor's own draws (which anchors, timesteps, noise): the trajectories' stream ``gen`` stays as without it
    anchor_gen = torch.Generator().manual_seed(seed * 7919 + 2)
    for p in params:
        p.requires_grad_(True)
    if ft.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    opt = torch.optim.AdamW(params, lr=ft.lr, weight_decay=ft.weight_decay)
    # with a zero KL weight the previous model is not run at all: its passes (and their graph) cost 2-3x the step
    # for a term multiplied by 0 (found by review); the history's "kl" is then None, not a 0 that was never measured
    kl_reference = reference if ft.kl_weight > 0 else "skip"
    rank, world = acc.process_index, acc.num_processes
    gen = torch.Generator().manual_seed(seed * 7919)  # the same on every rank: it draws the global batch
    total = ft.steps_per_epoch(world) * ft.epochs
    history: list[dict] = []
    skipped = 0  # steps the fp16 loss scaler skipped (their gradients overflowed)
    start = time.time()
    clock_start = _clock()
    stopped_by_time = False
    seed_base = (seed + 1) * 1_000_000
    n_traj = 0  # trajectories of the global batches so far (all ranks)
    b = ft.batch_size
    try:
        for step in range(1, total + 1):
            opt.zero_grad(set_to_none=True)
            # metrics stay on the device until the optimiser step: one host sync per step, not three per micro-batch
            sums = torch.zeros(3, device=parts.device)  # reward, kl, loss summed over micro-batches
            # the balanced variety weight, summed over micro-batches; tracked only when the balance is on
            weight_sum = torch.zeros((), device=parts.device) if ft.diversity_balance else None
            anchor_weight_sum = 0.0
            any_attached = False  # drawn from ``gen``, which every rank shares: every rank skips a step alike
            for _ in range(ft.grad_accum):
                # the global micro-batch of b * world trajectories; this rank renders its slice [rank*b, (rank+1)*b)
                idx = torch.randint(0, len(prompts), (b * world,), generator=gen).tolist()[rank * b:(rank + 1) * b]
                batch_prompts = templated(prompts, idx, gen, cfg, rank=rank, world=world)
                seeds = [seed_base + n_traj + rank * b + j for j in range(b)]
                n_traj += b * world
                attached = attached_steps(len(schedule), ft.truncation, ft.truncation_k, gen)
                any_attached = any_attached or bool(attached.any())
                loss, r, traj = trajectory_loss(parts, reward_fn, batch_prompts, seeds, ft, schedule=schedule, eta=sc.eta,
                                                guidance=sc.guidance, attached=attached, adapter=adapter,
                                                reference=kl_reference, trainable=params, autocast=acc.autocast)
                if anchors is None:
                    if loss.requires_grad:  # per_step truncation attaches no step at all now and then (3.8% at 4 steps)
                        acc.backward(loss / ft.grad_accum)  # scales the loss when fp16 has a loss scaler
                else:
                    weight = _backward_with_anchor(acc, unet, params, loss, anchors, anchor_gen, ft, schedule,
                                                   rank=rank, world=world)
                    anchor_weight_sum += weight
                sums += torch.stack([r.detach().float().mean(), traj.kl.detach().float().mean(), loss.detach().float()])
                if weight_sum is not None:
                    weight_sum += traj.diversity_weight
            if any_attached:
                reduce_gradients(acc, params)  # one all-reduce of one flat buffer (no-op on one process)
            # no micro-batch attached a step: nothing to learn from. With several processes the all-reduce made the
            # missing gradients zeros, and AdamW's decay and momentum then moved the weights (found by review).
            if not any_attached or all(p.grad is None for p in params):
                grad_norm = torch.zeros((), device=parts.device)
            else:
                if scaler is not None:
                    scaler.unscale_(opt)  # clip the true gradients, not the scaled ones
                grad_norm = torch.nn.utils.clip_grad_norm_(params, ft.grad_clip)
                if scaler is not None:
                    scale = scaler.get_scale()
                    scaler.step(opt)  # skipped when the gradients hold inf/NaN (the same on every rank)
                    scaler.update()
                    # the scaler lowers its scale exactly when it found inf/NaN and skipped the step: say so, or a
                    # round whose steps all overflowed would publish its start unchanged without a word (review)
                    if (now := scaler.get_scale()) < scale:
                        skipped += 1
                        log.warning("fine-tuning step %d was skipped: its fp16 gradients overflowed (loss scale %g -> "
                                    "%g)", step, scale, now)
                else:
                    opt.step()
            own = sums / ft.grad_accum
            # the metrics of the global batch: each rank rendered its slice, so its sums were its share alone, and the
            # published reward, KL and loss of a multi-process round were rank 0's (found by review)
            means = acc.reduce(own, "mean") if world > 1 else own
            reward_m, kl_m, loss_m, gnorm = (torch.cat([means, grad_norm.reshape(1).to(sums)])).tolist()
            rec = {"step": step, "reward": reward_m, "kl": kl_m if kl_reference != "skip" else None, "loss": loss_m,
                   "grad_norm": gnorm,
                   "elapsed_s": time.time() - start}
            if world > 1:  # this rank's own share, which tells that the ranks drew different trajectories
                rec["rank_reward"] = float(own[0])
            if weight_sum is not None:  # the mean weight the balance gave this step's micro-batches (all ranks')
                weight_mean = weight_sum / ft.grad_accum
                rec["diversity_weight"] = float(acc.reduce(weight_mean, "mean") if world > 1 else weight_mean)
            if anchors is not None:  # this rank's mean anchor weight over the step's micro-batches
                rec["anchor_weight"] = anchor_weight_sum / ft.grad_accum
            if scaler is not None:
                rec["loss_scale"] = float(scaler.get_scale())
            history.append(rec)
            elapsed = _clock() - clock_start
            if on_progress is not None:  # under a time limit the total shown is the steps that fit at this pace
                on_progress(step, _steps_that_fit(total, step, elapsed, ft.max_seconds, spent_s),
                            {"phase": "finetune", **rec})
            if ft.max_seconds is not None and step < total and _next_step_too_late(acc, elapsed, step, ft.max_seconds,
                                                                                     parts.device, spent_s):
                stopped_by_time = True
                break
    finally:
        unet.eval()
        if ft.gradient_checkpointing:
            unet.disable_gradient_checkpointing()
        for p in params:
            p.requires_grad_(False)
    first, last = history[0] if history else {}, history[-1] if history else {}
    done = len(history)
    metrics = {"steps": done, "steps_planned": total, "stopped_by_time": stopped_by_time, "trajectories": n_traj,
               "processes": world, "reward_first": first.get("reward"), "reward_last": last.get("reward"),
               "kl_last": last.get("kl"), "wall_s": time.time() - start,
               "mixed_precision": getattr(acc, "mixed_precision", None)}
    if scaler is not None:  # fp16: the steps the loss scaler skipped (counted in "steps") and where its scale ended
        metrics["skipped_steps"], metrics["loss_scale_last"] = skipped, last.get("loss_scale")
    if ft.diversity_balance and history:
        metrics["diversity_weight_mean"] = sum(h["diversity_weight"] for h in history) / done
    if anchors is not None:
        metrics["anchor"] = {"kept": len(anchors.prompts), "candidates": anchors.candidates, "seconds": round(anchor_s, 3),
                             "reward_kept_mean": float(anchors.rewards.mean()),
                             "weight_mean": sum(h["anchor_weight"] for h in history) / done if history else None}
    return FinetuneResult(adapter=adapter, steps=done, metrics=metrics, history=history)


def _backward_with_anchor(acc, unet, params, loss, anchors: Anchors, gen: torch.Generator, ft,
                          schedule: DDIMSchedule, *, rank: int = 0, world: int = 1) -> float:
    """Backpropagate one micro-batch's ``loss`` plus w times the denoising loss on this rank's anchors, adding both to
    the gradients already accumulated; w from :func:`balanced_anchor_weight`. The two gradients are taken apart (the
    adapter's parameters are few), so the balance costs no extra UNet pass. The anchors, timesteps and noise are drawn
    for the global micro-batch (``batch_size * world`` anchors, fewer if there are fewer) from ``gen``, which every
    rank shares, and rank r takes the r-th slice, as the trajectories are split: N processes draw as one would. A rank
    whose slice is empty adds its loss's gradient alone. An anchor gradient that overflowed under fp16's loss scaler
    is added unweighted, so that the scaler skips the step and lowers its scale, as for any overflow."""
    before = [p.grad for p in params]
    for p in params:
        p.grad = None
    if loss.requires_grad:
        acc.backward(loss / ft.grad_accum)
    rest = [p.grad for p in params]
    b = ft.batch_size
    k = min(b * world, len(anchors.prompts))
    pick = torch.randperm(len(anchors.prompts), generator=gen)[:k]
    at = torch.randint(0, len(schedule), (k,), generator=gen)  # one of the sampler's own steps for each anchor
    noise = torch.randn((k, *anchors.latents.shape[1:]), generator=gen).to(anchors.latents)
    mine = slice(rank * b, (rank + 1) * b)
    pick, at, noise = pick[mine], at[mine], noise[mine]
    weight, anchor = 0.0, [None] * len(params)
    if len(pick):
        for p in params:
            p.grad = None
        with acc.autocast():
            d = denoising_loss(unet, anchors.latents[pick], anchors.cond[pick], schedule.timesteps[at].long(),
                               schedule.alpha[at], noise, schedule.prediction_type)
        acc.backward(d / ft.grad_accum)
        anchor = [p.grad for p in params]
        weight = balanced_anchor_weight(rest, anchor, ft.anchor_balance)
        # a weight of 0 is also how an overflow shows; only then are the anchor's gradients read again
        if weight == 0 and not all(bool(torch.isfinite(g).all()) for g in anchor if g is not None):
            if getattr(acc, "scaler", None) is not None:
                weight = 1.0  # the overflow reaches the scaler, which skips this step and backs off
            else:
                log.warning("the denoising anchor's gradient is not finite; this micro-batch leaves it out")
    for p, old, r, a in zip(params, before, rest, anchor):
        total = [g for g in (old, r, None if a is None or weight == 0 else weight * a) if g is not None]
        p.grad = sum(total[1:], total[0]) if total else None
    return weight


_clock = time.monotonic  # the time limit's clock (a module attribute, so a test can drive it)


def _steps_that_fit(total: int, steps_done: int, elapsed: float, max_seconds: float | None, spent: float = 0.0) -> int:
    """The steps a round will take: all ``total`` without a limit, else as many as fit at the mean pace so far in
    what ``spent`` seconds (before fine-tuning) left of ``max_seconds``."""
    if max_seconds is None or elapsed <= 0:
        return total
    return min(total, max(steps_done, int((max_seconds - spent) * steps_done / elapsed)))


def _next_step_too_late(acc, elapsed: float, steps_done: int, max_seconds: float, device, spent: float = 0.0) -> bool:
    """Whether one more step, at the mean step time so far, would end after ``max_seconds`` (``spent`` seconds of it
    used before fine-tuning). With several processes the latest projected end decides for all of them (one gather of
    one number), so every rank stops at the same step."""
    projected = spent + elapsed + elapsed / steps_done
    if acc.num_processes > 1:
        projected = float(acc.gather(torch.tensor([projected], device=device, dtype=torch.float64)).max())
    return projected > max_seconds


@torch.no_grad()
def trajectory_kl(parts, prompts: list[str], seeds: list[int], *, adapter: str | None, reference: str | None,
                  steps: int, eta: float, guidance: float, batch_size: int = 16) -> torch.Tensor:
    """The full trajectory KL (every step) of ``adapter``'s model to ``reference``'s, per prompt; for reporting."""
    schedule = DDIMSchedule.from_scheduler(parts.scheduler, steps)
    lora.activate(parts.unet, adapter)
    out = []
    try:
        for lo in range(0, len(prompts), batch_size):
            traj = rollout(parts, prompts[lo:lo + batch_size], seeds[lo:lo + batch_size], schedule=schedule, eta=eta,
                           guidance=guidance, attached=torch.zeros(steps, dtype=torch.bool), adapter=adapter,
                           reference=reference, kl_every_step=True)
            out.append(traj.kl.cpu())
    finally:
        lora.activate(parts.unet, adapter)
    return torch.cat(out)
