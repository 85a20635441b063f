"""One SEIKO round as two pure steps, shared by the worker (human ratings) and the simulator (an oracle).

    generate_batch:  p_k -> images, embeddings                      (steps 1 and 3 of the outer loop)
    train_round:     D -> reward ensemble (+ UCB bonus) -> p_{k+1}   (steps 4 and 5)

Nothing here touches a database or a file the caller did not name; progress goes through ``on_progress``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from . import finetune as _finetune_module
from . import lora
from .config import SeikoConfig, with_quality_template
from .features import EMBED_BATCH, embed_images, embed_images_batched
from .finetune import FinetuneResult, finetune
from .optimism import LinearUCB, fit_bonus, optimistic_reward, thompson_draw
from .reward import RewardEnsemble, fit_reward
from .sampling import quantize, sample_batches

ProgressFn = Callable[[int, int, dict], None]


def round_prompts(cfg: SeikoConfig, n: int, seed: int) -> list[str]:
    """``n`` prompts drawn from the sampling set; a ``good_prompt_prop`` fraction gets the quality template."""
    if not cfg.prompts:
        raise ValueError("the experiment has no sampling prompts; add at least one")
    rng = np.random.default_rng(seed)
    picks = [cfg.prompts[i] for i in rng.integers(0, len(cfg.prompts), size=n)]
    if cfg.quality_template and cfg.good_prompt_prop > 0:
        good = rng.random(n) < cfg.good_prompt_prop
        picks = [with_quality_template(cfg, p) if g else p for p, g in zip(picks, good)]
    return picks


EMBED_CHUNK = EMBED_BATCH  # embed_images_batched's chunk: images are embedded in these groups, as the whole set once was


@torch.no_grad()
def generate_batch(parts, adapter: str | None, prompts: list[str], seeds: list[int], cfg: SeikoConfig,
                   on_progress: ProgressFn | None = None, *, as_uint8: bool = False,
                   pixels_out: Callable[[tuple[int, ...]], np.ndarray | None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, 3, H, W) in [0, 1] from round ``adapter``'s model (None: the base) and their embeddings (B, D).

    With ``as_uint8`` the images come back as the uint8 pixels a PNG stores (``sampling.quantize``), a quarter of
    the host memory. Each sampling batch is embedded as it comes out (in the same groups of ``EMBED_CHUNK`` from the
    start as embedding the whole set at once, so the same embeddings), and only one chunk at a time goes to the
    device: the whole round used to go to the device in one piece (48 GiB float32 at sd15's round 3) and be held
    twice as float32 on the host (fourth review).

    ``pixels_out(shape)`` may give the writable numpy array of ``shape`` (B, 3, H, W) that the pixels are written
    into, batch by batch: uint8 with ``as_uint8``, else float32 (the worker's, or a simulator's, memory map of a file
    when they are too many for the host's memory: 12 GiB of uint8 at sd15's round 3, fifth review; 48 GiB of the
    simulators' float32, sixth review); the images returned are a tensor sharing its memory, holding the same values
    as in memory. When it returns None, or without it, they are a tensor in memory."""
    if not prompts:
        raise ValueError("no prompts were given, so there are no images to generate")
    lora.activate(parts.unet, adapter)
    sc = cfg.sampling
    n = len(prompts)
    images = embeddings = None
    pending: list[torch.Tensor] = []  # decoded float batches not yet embedded (fewer than EMBED_CHUNK images)
    filled = bad_images = bad_embeddings = 0

    def flush(final: bool) -> None:
        nonlocal images, embeddings, pending, filled, bad_images, bad_embeddings
        ready = torch.cat(pending) if len(pending) > 1 else pending[0]
        take = len(ready) if final else len(ready) // EMBED_CHUNK * EMBED_CHUNK
        if take == 0:
            return
        part, rest = ready[:take], ready[take:]
        emb = embed_images_batched(parts, part, batch_size=EMBED_CHUNK)  # chunk by chunk to the device; back on host
        if images is None:
            shape = (n, *part.shape[1:])
            dtype = torch.uint8 if as_uint8 else part.dtype  # float32: sample_batches' images
            out = None if pixels_out is None else pixels_out(shape)
            want = torch.empty(0, dtype=dtype).numpy().dtype
            if out is not None and (out.shape != shape or out.dtype != want or not out.flags.writeable):
                got, out = f"a {out.dtype} array of shape {out.shape}", None
                raise ValueError(f"pixels_out gave {got}, not a writable {want} one of shape {shape}")
            images = torch.from_numpy(out) if out is not None else torch.empty(shape, dtype=dtype)
            del out  # held by ``images`` alone (see the end: a traceback keeps the frames)
            embeddings = torch.empty((n, emb.shape[1]), dtype=emb.dtype)
        # nothing non-finite is published for people to rate (a damaged adapter or model drew black images: review)
        bad_images += int((~torch.isfinite(part.reshape(take, -1))).any(dim=1).sum())
        bad_embeddings += int((~torch.isfinite(emb)).any(dim=1).sum())
        images[filled:filled + take] = quantize(part) if as_uint8 else part
        embeddings[filled:filled + take] = emb
        filled += take
        pending = [rest] if len(rest) else []

    try:
        for batch in sample_batches(parts, prompts, seeds, steps=sc.steps, guidance=sc.guidance, eta=sc.eta,
                                    batch_size=sc.batch_size, on_progress=on_progress):
            pending.append(batch)
            if sum(len(b) for b in pending) >= EMBED_CHUNK:
                flush(final=False)
        if pending:
            flush(final=True)
        for what, bad in (("images", bad_images), ("image embeddings", bad_embeddings)):
            if bad:
                source = "the base model" if adapter is None else f"adapter {adapter!r}"
                raise ValueError(f"{bad} of the {n} {what} drawn with {source} are not finite numbers: the "
                                 "model's or the adapter's weights are damaged; nothing was saved")
    except BaseException:
        # a traceback keeps this frame (and flush's): not the pixels, which may be the caller's memory map of a
        # scratch file, gigabytes of disk held until the traceback goes (fifth review)
        images = None
        raise
    return images, embeddings


def posterior_draw(cfg: SeikoConfig, num_heads: int, seed: int) -> torch.Tensor | None:
    """SEIKO-TS's one posterior draw for the round trained with ``seed`` (None for the other aggregations)."""
    if cfg.optimism.aggregation != "thompson":
        return None
    return thompson_draw(num_heads, torch.Generator().manual_seed(seed * 1_000_003 + 17))


def make_reward_fn(parts, ensemble: RewardEnsemble, ucb: LinearUCB | None, cfg: SeikoConfig, draw: torch.Tensor | None = None):
    """r_opt as a differentiable function of decoded images: encoder embedding -> ensemble -> optimism.

    The same function for every call of the round: TS's posterior ``draw`` is fixed for the whole round."""
    ensemble = ensemble.to(parts.device)

    def reward(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        emb = embed_images(parts, images)
        return optimistic_reward(ensemble, emb.float(), cfg.optimism, ucb=ucb, draw=draw)

    return reward


@dataclass
class RoundOutcome:
    adapter: str  # the new round's adapter name on parts.unet
    ensemble: RewardEnsemble
    ucb: LinearUCB | None
    finetune: FinetuneResult
    metrics: dict = field(default_factory=dict)
    draw: torch.Tensor | None = None  # SEIKO-TS: the round's posterior draw


def train_round(parts, embeddings: torch.Tensor, scores: torch.Tensor | None, cfg: SeikoConfig, *, new_index: int,
                prev_adapter: str | None, seed: int, on_progress: ProgressFn | None = None,
                accelerator=None, pairs: torch.Tensor | None = None) -> RoundOutcome:
    """Fit the reward model on D = (embeddings, scores), then fine-tune round ``new_index``'s adapter from
    ``prev_adapter`` (None: the base model) toward the optimistic reward with the KL constraint.

    With ``pairs`` (P, 3) rows (i, j, outcome) into ``embeddings``, the reward is fitted by
    ``seiko_core.preference.fit_preference_reward`` on the comparisons and the ``scores`` (None, or NaN where an
    image was only compared); without, by ``fit_reward`` on the scores, exactly as before."""

    def fit_progress(step, total, m):
        if on_progress is not None:
            on_progress(step, total, {"phase": "reward_fit", **m})

    fit_started = _finetune_module._clock()
    if pairs is None:
        fit = fit_reward(embeddings.float(), scores.float(), cfg.reward, seed=seed, sgld=cfg.method == "ts",
                         on_progress=fit_progress)
    else:
        from .preference import fit_preference_reward

        fit = fit_preference_reward(embeddings.float(), scores=None if scores is None else scores.float(), pairs=pairs,
                                    cfg=cfg.reward, seed=seed, sgld=cfg.method == "ts", on_progress=fit_progress)
    ucb = fit_bonus(fit.ensemble, embeddings.float(), cfg.optimism)
    fit_s = _finetune_module._clock() - fit_started
    name = lora.round_adapter_name(new_index)
    if lora.has_adapter(parts.unet, name):  # a retried job: start the round again from the previous adapter
        parts.unet.delete_adapters(name)
    lora.add_adapter(parts.unet, name, cfg.finetune, init_from=prev_adapter, seed=seed)
    draw = posterior_draw(cfg, fit.ensemble.num_heads, seed)
    reward_fn = make_reward_fn(parts, fit.ensemble, ucb, cfg, draw)
    result = finetune(parts, reward_fn, list(cfg.prompts), cfg, adapter=name, reference=prev_adapter, seed=seed,
                      on_progress=on_progress, accelerator=accelerator,
                      spent_s=fit_s if cfg.finetune.max_seconds_counts_reward_fit else 0.0)
    with torch.no_grad():
        preds = fit.ensemble(embeddings.float().to(next(fit.ensemble.parameters()).device)).cpu()
    metrics = {
        "labels": int(len(scores)) if pairs is None else int(fit.metrics["n"]),  # a comparison is one label
        "reward_fit": fit.metrics,
        "reward_fit_s": round(fit_s, 3),
        "finetune": result.metrics,
        "train_pred_mean": float(preds.mean()),
        # the population sd across heads, as the eval grid's head_spread and the fit's: the dashboard's one "Spread"
        # column reads either (the sample sd here read sqrt(H/(H-1)) higher, 15% at 4 heads: found by review)
        "train_head_spread": float(preds.std(1, correction=0).mean()) if preds.shape[1] > 1 else 0.0,
        "ucb_form": ucb.form if ucb is not None else None,
        "ucb_alpha": ucb.alpha if ucb is not None else None,
        "ucb_scale": ucb.scale if ucb is not None else None,
        "ucb_balance": ucb.balance if ucb is not None else None,  # the bonus_balance factor in ucb_scale (1.0: none)
        "ts_draw": draw.tolist() if draw is not None else None,
        "finetune_steps": result.steps,
    }
    return RoundOutcome(adapter=name, ensemble=fit.ensemble, ucb=ucb, finetune=result, metrics=metrics, draw=draw)


@torch.no_grad()
def predicted_reward(parts, ensemble: RewardEnsemble, images: torch.Tensor) -> tuple[float, float]:
    """(mean prediction over images and heads, mean across-head std) of the ensemble on ``images``."""
    # the images stay where they are: embed_images_batched sends one chunk at a time to the device (fourth review)
    return predicted_reward_of_embeddings(ensemble, embed_images_batched(parts, images))


@torch.no_grad()
def predicted_reward_of_embeddings(ensemble: RewardEnsemble, emb: torch.Tensor) -> tuple[float, float]:
    """:func:`predicted_reward` from the images' embeddings (e.g. those stored with them)."""
    preds = ensemble(emb.to(next(ensemble.parameters()).device)).cpu()
    spread = float(preds.std(1, unbiased=False).mean()) if preds.shape[1] > 1 else 0.0
    return float(preds.mean()), spread
