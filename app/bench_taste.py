"""The product benchmark (issue 12 item 1): a simulated person uses the real app for a few rounds.

    python -m app bench-taste --person SPEC --rounds 4 --budget 32 --seeds 0,1,2 --out DIR

Per seed, on a fresh data dir (``DIR/seed_<s>/data``, a SQLite database in it):

1. the database is migrated and the experiment ``demo`` is created by ``app.services.create_experiment``, as
   ``python -m app demo`` does (preset ``shapes`` on the settings' model), with ``--budget`` images per round and
   the options given (``--selection``, ``--candidate-factor``, ``--auto-close``);
2. the real worker is started as ``python -m app demo`` starts it (a ``python -m app worker`` subprocess, its log
   in ``DIR/seed_<s>/worker.log``);
3. the person rates through the functions behind the public API (``app.ui_rate.api_batch`` is ``next_batch``,
   ``app.ui_rate.submit`` is ``submit_rating``) as the local-mode admin: every image of the round, decoded from
   the API's PNG bytes;
4. the round is closed by ``app.ui_admin.close_round`` (what the admin's "Close round and train" button runs, with
   its audit entry), unless ``--auto-close`` closed it at the last rating;
5. the wait is from closing the round to the moment ``next_batch`` returns the next round's first images.

Rounds 0 .. R are rated (R = ``--rounds`` trainings, R x budget labels); round R is rated and not trained on.

The seed: the worker derives every seed (prompts, noise, training) from the experiment's id and the round index,
so seed ``s`` is the experiment id ``s + 1`` (placeholder experiments 1 .. s are created first and deleted once
``demo`` exists; seed 0 is exactly ``make demo``'s first experiment).

Feedback (``--feedback``, the experiment option of ``app.pairwise``): ``scores`` (the default) is the above; with
``pairs`` the experiment asks for comparisons only and the person answers every pair the round offers through the
functions behind the public pair API (``app.ui_pairs.api_pair`` is ``next_pair``, ``api_vote`` is
``submit_comparison``), choosing from its own ratings of the pair's two images with logistic noise
(:class:`PairChoice`, the rule of ``seiko_core.preference.simulate_pair_choices``); with ``both`` it compares every
pair and rates every image. A round of ``--budget`` B query images offers at most B pairs (``app.pairwise`` pairs
images of one prompt, and the images alone with their prompt among themselves), so a round's labels are B comparisons where it offers B pairs and fewer where it offers
fewer; the labels actually given are recorded. With ``pairs`` the round's figures below come from the person's
rating function applied to every query image for measurement only (never submitted).

Per round: the mean rating and the share >= 6 (each with its 95% interval, ``app.taste_stats``), the same on the
honest (random) images when a selection mode picks the rest, variety (mean pairwise pixel distance: the RMS
difference of two images' RGB values in [0, 1]; mean pairwise Euclidean distance of the image-encoder embeddings
the worker stored; both also as % of round 0), the wait in seconds, the labels (ratings and comparisons) and the
reward model's held-out correlation with the ratings (on all images, and on the honest ones only).
``DIR/results.json`` is rewritten after every round (a seed that finished is skipped by a re-run; an unfinished one starts again from a
fresh data dir; a ``seed_<s>/`` that results.json does not list as unfinished is never removed: the run is
refused), and ``DIR/bench_taste.png`` plots the rounds (mean over seeds, min-max as a band).
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import math
import shutil
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app import experiment_options, pairwise, people, selection, taste_stats
from app.experiment_options import ExperimentOptions
from app.settings import Settings
from seiko_core import atomic
from seiko_core.config import from_dict, to_dict
from seiko_core.preference import logistic_temperature, simulate_pair_choices
from seiko_core.stats import number_or_none, pearson

EXPERIMENT = "demo"
POLL_S = 0.25


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says why in one sentence."""


# The simulated person's pair choice (--feedback pairs or both). Its scores are its own 1-10 ratings of the two images;
# the default temperature is the logistic equivalent (seiko_core.preference.logistic_temperature) of Gaussian rating
# noise of half a rating point: a 1-point difference is chosen right 93% of the time, 2 points 99.4%. Ties: only
# equal ratings (tie_eps 0), so two images the person rates alike are "about the same".
DEFAULT_PAIR_SIGMA = 0.5
DEFAULT_PAIR_TEMPERATURE = logistic_temperature(DEFAULT_PAIR_SIGMA)
DEFAULT_PAIR_TIE_EPS = 0.0
SIDE = {1.0: "left", 0.0: "right", 0.5: "tie"}  # simulate_pair_choices' outcome -> what submit_comparison takes


@dataclass(frozen=True)
class PairChoice:
    """How the simulated person chooses between the two images of a pair, from its ratings s1 (left) and s2 (right):
    a tie when |s1 - s2| <= ``tie_eps``, else left with probability sigmoid((s1 - s2) / ``temperature``) (0: always
    the higher rating), drawn by ``seiko_core.preference.simulate_pair_choices`` with a generator seeded by
    (seed, round, pair id), so a re-run makes the same choices."""

    temperature: float = DEFAULT_PAIR_TEMPERATURE
    tie_eps: float = DEFAULT_PAIR_TIE_EPS

    def __post_init__(self) -> None:
        for name, value in (("temperature", self.temperature), ("tie_eps", self.tie_eps)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value >= 0):
                raise BenchError(f"the pair choice's {name} must be a finite number >= 0, got {value!r}")

    def choose(self, left: int, right: int, *, seed: int, index: int, pair_id: int) -> str:
        """'left', 'right' or 'tie' for ratings ``left`` and ``right`` of pair ``pair_id`` in round ``index``."""
        digest = hashlib.sha256(f"bench-taste-choice:{seed}:{index}:{pair_id}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)
        row = simulate_pair_choices(torch.tensor([float(left), float(right)]), torch.tensor([[0, 1]]),
                                    temperature=float(self.temperature), tie_eps=float(self.tie_eps), generator=gen)
        return SIDE[float(row[0, 2])]

    def as_dict(self) -> dict[str, Any]:
        return {"temperature": float(self.temperature), "tie_eps": float(self.tie_eps),
                "rule": "scores s1, s2: the person's own 1-10 ratings of the pair's left and right image; tie when "
                        "|s1 - s2| <= tie_eps, else left with probability sigmoid((s1 - s2) / temperature) "
                        "(seiko_core.preference.simulate_pair_choices; default temperature "
                        f"sqrt(6)/pi * {DEFAULT_PAIR_SIGMA} = {DEFAULT_PAIR_TEMPERATURE:.4f}, the logistic equivalent of "
                        f"Gaussian rating noise of {DEFAULT_PAIR_SIGMA} rating points; default tie_eps "
                        f"{DEFAULT_PAIR_TIE_EPS:g}: equal ratings)"}


@dataclass(frozen=True)
class BenchConfig:
    person: str
    rounds: int
    budget: int
    seeds: tuple[int, ...]
    out: Path
    model: str
    options: ExperimentOptions
    round_timeout_s: float = 3600.0
    tiny: bool = False  # smoke tests only: the tests' tiny training config (app.testing.tiny_worker_config)
    pair_choice: PairChoice = PairChoice()  # how the person compares (feedback pairs or both)
    overrides: tuple[str, ...] = ()  # SECTION.FIELD=VALUE on the experiment's SEIKO config (seiko_core.simulate's --set)
    # what run() found the model and the person to be (PROVENANCE's keys, as (key, value) pairs): recorded in the
    # config, and compared apart from the settings when a run is resumed
    provenance: tuple[tuple[str, str | None], ...] = ()

    def check_overrides(self) -> None:
        """Refuse a bad ``--set`` with one sentence before anything starts."""
        from seiko_core.presets import preset

        self.seiko_config(to_dict(preset("shapes")))

    def seiko_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` (an experiment's SEIKO config dict) with ``overrides`` applied, checked by SeikoConfig."""
        if not self.overrides:
            return config
        from seiko_core.config import check_prompts, check_round_limits, check_round_trajectories, check_runnable
        from seiko_core.models import scheduler_config
        from seiko_core.sampling import check_steps
        from seiko_core.simulate import SimulationError, apply_overrides

        try:
            cfg = apply_overrides(from_dict(config), self.overrides)
            check_round_limits(cfg)  # the limits the app's experiments and the simulator's --set are held to
            check_prompts(cfg)
            check_runnable(cfg)  # prompts=[] is a valid config, but the worker's first round has nothing to sample
            check_round_trajectories(cfg)  # the worker's trajectory seeds: under a million a round
            scheduler = scheduler_config(self.model)  # --set sampling.steps=2000 failed in round 0 (twentieth review)
            if scheduler is not None:
                check_steps(cfg.sampling.steps, scheduler)
            return to_dict(cfg)
        except (SimulationError, ValueError, TypeError, NotImplementedError) as exc:  # the last: diffusers' for an
            raise BenchError(str(exc)) from exc  # unknown beta_schedule in the model's scheduler config (found by review)

    @property
    def feedback(self) -> str:
        return self.options.feedback

    def as_dict(self) -> dict[str, Any]:
        out = {"person": self.person, "rounds": self.rounds, "budget": self.budget, "seeds": list(self.seeds),
               "model": self.model, "options": self.options.as_dict(), "round_timeout_s": self.round_timeout_s,
               "tiny": self.tiny}
        if self.overrides:  # absent without --set, so earlier runs still resume
            out["overrides"] = list(self.overrides)
        if pairwise.wants_pairs(self.feedback):  # absent with scores, so earlier scores runs still resume
            out["pair_choice"] = self.pair_choice.as_dict()
        out.update(dict(self.provenance))
        return out


# What a run's config records of the files it ran with, beside the settings: a resume is refused when one of them
# changed (the settings' strings alone matched a rebuilt model directory or an edited person file: found by review)
PROVENANCE = {"model_sha256": "model", "person_sha256": "person"}


def model_sha256(spec: str) -> str | None:
    """:func:`seiko_core.checkpoint.directory_sha256` of the local model directory ``spec`` (as check_model_spec
    gives it), or None for a hub id."""
    from seiko_core.checkpoint import directory_sha256

    path = Path(spec)
    if not path.is_dir():
        return None
    try:
        return directory_sha256(path)
    except OSError as exc:
        raise BenchError(f"the model directory {path} cannot be read to record its files' hash "
                         f"({exc.strerror or exc})") from exc


def person_sha256(spec: str) -> str:
    """The sha256 of the person file that ``spec`` (path/to/file.py:function) names, or a built-in person's name."""
    from seiko_core.checkpoint import sha256_file

    spec = spec.strip()
    if spec in people.BUILT_IN:
        return spec
    where = Path(spec.rsplit(":", 1)[0]).expanduser()
    try:
        return sha256_file(where)
    except OSError as exc:
        raise BenchError(f"the person file {where} cannot be read to record its hash ({exc.strerror or exc})") from exc


def git_commit() -> str | None:
    """The git commit of the checkout this module is in (``git rev-parse HEAD``), or None where there is none."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def resume_problem(path: Path, stored: Any, cfg: BenchConfig) -> tuple[str | None, str | None]:
    """(why ``path``, holding a run whose config is ``stored``, cannot be resumed with ``cfg``, or None; a warning
    to log, or None). Other settings, or a model or person whose hash is not the one recorded, are refused; a file
    written before the hashes were recorded is accepted, with the warning that they could not be checked."""
    current = cfg.as_dict()
    if not isinstance(stored, dict) or ({k: v for k, v in stored.items() if k not in PROVENANCE}
                                        != {k: v for k, v in current.items() if k not in PROVENANCE}):
        return (f"{path} holds a run with other settings; give those settings again to resume it, or another --out",
                None)
    for key, what in PROVENANCE.items():
        if key in stored and key in current and stored[key] != current[key]:
            files, name = ("model files", cfg.model) if what == "model" else ("person file", cfg.person)
            return (f"{path} was run with other {files} under the same --{what} {name} (sha256 {str(stored[key])[:12]} "
                    f"then, {str(current[key])[:12]} now), and its seeds would mix the two; restore them to resume it, or "
                    "give another --out", None)
    missing = [key for key in PROVENANCE if key not in stored]
    return None, (f"warning: {path} was written before runs recorded their model's and person's hashes, so they are "
                  "not checked; resuming it" if missing else None)


# ---------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------


as_images = people.as_images  # (H, W, 3) arrays in [0, 1] (decode_png's) as the batch a person rates


def decode_png(b64: str) -> np.ndarray:
    """A base64 PNG as (H, W, 3) float64 in [0, 1]."""
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(base64.b64decode(b64))) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0


def mean_pairwise_pixel_distance(images: list[np.ndarray]) -> float | None:
    """Mean over image pairs of the RMS difference of their RGB values (0: identical, 1: black vs white)."""
    if len(images) < 2:
        return None
    flat = np.stack([im.reshape(-1) for im in images])
    return float(np.mean([math.sqrt(np.mean((flat[i] - flat[j]) ** 2)) for i, j in itertools.combinations(range(len(flat)), 2)]))


def mean_pairwise_distance(vectors: np.ndarray) -> float | None:
    """Mean Euclidean distance over pairs of rows."""
    if len(vectors) < 2:
        return None
    return float(np.mean([np.linalg.norm(vectors[i] - vectors[j]) for i, j in itertools.combinations(range(len(vectors)), 2)]))


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 with ties given their average rank (as Spearman's rho needs)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def correlations(pred: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    """Pearson's r and Spearman's rho of two equal-length vectors; None where either is constant, and both None where a
    value is not a finite number (a reward model gone wrong): Spearman's ranks put NaN above every number and gave a
    correlation (0.8 for one NaN among four predictions, where scipy's spearmanr gives nan), and Pearson's NaN stopped
    results.json from being written (it allows no NaN); found by the tenth review."""
    pred, scores = np.asarray(pred, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if not (np.isfinite(pred).all() and np.isfinite(scores).all()):
        return {"pearson": None, "spearman": None}
    return {"pearson": pearson(pred, scores), "spearman": pearson(_ranks(pred), _ranks(scores))}


MIN_CORRELATED = 3  # images a held-out correlation is computed on at least (two points always correlate +-1)


def reward_figures(index: int, pred: np.ndarray, scores, honest: list[bool] | None = None) -> dict[str, Any]:
    """Round ``index``'s reward model figures from its predictions ``pred`` of the images the person rated ``scores``:
    Pearson and Spearman correlation on them all and, with ``honest`` (per image, whether it is of the round's honest
    sample, ``app.selection.honest_ids``), under ``"honest"`` the same on those images only (None with fewer than
    MIN_CORRELATED of them). A selection mode shows images the same ensemble predicted high (or uncertain); they
    narrow its predictions' range, which biases the correlation on all images down (found by review: 0.655 on a
    random sample, 0.546 with 24 of 32 images its top predictions); the honest images are a random sample of what
    the round's model makes. Under the random selection every image is honest and the two are equal."""
    pred, scores = np.asarray(pred, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    out: dict[str, Any] = {"labels": int(index), **correlations(pred, scores), "n": len(scores)}
    if honest is not None:
        if len(honest) != len(scores):
            raise ValueError(f"honest has {len(honest)} flags for {len(scores)} ratings")
        idx = [i for i, flag in enumerate(honest) if flag]
        out["honest"] = ({**correlations(pred[idx], scores[idx]), "n": len(idx)} if len(idx) >= MIN_CORRELATED
                         else None)
    return out


def honest_corr(reward_model: dict[str, Any] | None) -> float | None:
    """The Spearman correlation on the honest images of :func:`reward_figures`' answer, or None."""
    return ((reward_model or {}).get("honest") or {}).get("spearman")


def reward_quality(data_dir: Path, experiment_id: int, index: int, embeddings: np.ndarray,
                   scores: list[int], honest: list[bool] | None = None) -> dict[str, Any] | None:
    """How well round ``index``'s reward ensemble (fitted on the ratings of rounds 0 .. index-1) predicts the person's
    ratings of round ``index``'s images, which it never saw: held-out Pearson and Spearman correlation of the heads'
    mean with the ratings, and on the honest images (``honest``, per image) apart (:func:`reward_figures`). None for
    round 0 (no reward model yet) or when the round has no reward model on disk."""
    from app import storage
    from seiko_core.checkpoint import verify
    from seiko_core.reward import RewardEnsemble

    if index == 0 or len(scores) < MIN_CORRELATED:
        return None
    reward_dir = storage.resolve(data_dir, storage.reward_path(experiment_id, index))
    if not reward_dir.exists():
        return None
    verify(reward_dir)
    ensemble = RewardEnsemble.load(reward_dir, device="cpu")
    with torch.no_grad():
        pred = ensemble(torch.from_numpy(np.asarray(embeddings, dtype=np.float32))).mean(1).numpy()
    return reward_figures(index, pred, scores, honest)


def wait_breakdown(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """Where a round's wait went, from what the worker recorded: the train job's reward fit and fine-tuning (on the
    round that published this one) and the generate job's time to the query images."""
    train = (metrics or {}).get("train") or {}
    gen = (metrics or {}).get("generate") or {}
    return {"reward_fit_s": train.get("reward_fit_s"), "finetune_s": (train.get("finetune") or {}).get("wall_s"),
            "finetune_steps": train.get("finetune_steps"), "query_images_s": gen.get("query_wall_s"),
            "generate_s": gen.get("wall_s")}


def _pct(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else 100.0 * value / base


def liked_variety(pixels: list[np.ndarray], embeddings: np.ndarray, liked: list[bool], base: dict[str, Any]) -> dict[str, Any]:
    """The variety among the images the person liked (rated >= 6), as % of round 0's variety of all its images
    (``base``): whether a round that pleases the person shows a taste or one image over and over. Compare it with
    ``python -m app.taste_variety``, the variety the taste itself leaves. None with fewer than 2 liked images."""
    if len(liked) != len(pixels) or len(liked) != len(embeddings):
        raise ValueError(f"liked has {len(liked)} flags for {len(pixels)} images and {len(embeddings)} embeddings")
    idx = [i for i, flag in enumerate(liked) if flag]
    pix = mean_pairwise_pixel_distance([pixels[i] for i in idx])
    emb = mean_pairwise_distance(np.asarray(embeddings)[idx]) if len(idx) >= 2 else None
    return {"liked_images": len(idx),
            "variety_liked_pixels_pct_round0": _pct(pix, base["variety_pixels"]),
            "variety_liked_embedding_pct_round0": _pct(emb, base["variety_embedding"])}


def round_record(index: int, scores: list[int], honest_scores: list[int], pixels: list[np.ndarray], embeddings: np.ndarray,
                 *, wait_s: float | None, labels_trained: int, base: dict[str, Any] | None, mode: str,
                 reward_model: dict[str, Any] | None = None, wait_parts: dict[str, Any] | None = None,
                 ratings: int | None = None, comparisons: int = 0, ties: int = 0, pairs_offered: int | None = None,
                 measured_by: str = "ratings", trained_on: dict[str, Any] | None = None,
                 liked: list[bool] | None = None) -> dict[str, Any]:
    """One round's figures. ``scores`` measure the round: the ratings given (``measured_by`` "ratings") or, with
    comparisons only, the person's ratings taken for measurement and never submitted ("person"). ``ratings`` is the
    ratings given (default: as many as ``scores``), ``comparisons`` the votes given (``ties`` of them ties) on the
    round's ``pairs_offered`` pairs (None: the round asked for no comparisons). ``liked``: per image of ``pixels``
    (same order), whether the person rated it >= 6; their variety is :func:`liked_variety`'s."""
    t = taste_stats.round_taste(index, scores)
    h = taste_stats.round_taste(index, honest_scores)
    pix, emb = mean_pairwise_pixel_distance(pixels), mean_pairwise_distance(embeddings)
    base = base or {"variety_pixels": pix, "variety_embedding": emb}
    within = liked_variety(pixels, embeddings, liked, base) if liked is not None else {}
    ratings = t.n if ratings is None else ratings
    return {
        "round": index, "selection": mode, "ratings": ratings, "labels_trained": labels_trained,
        "comparisons": comparisons, "comparison_ties": ties, "pairs_offered": pairs_offered,
        "labels": ratings + comparisons, "measured_by": measured_by, "measured_images": t.n,
        # what the worker's train job that made this round's model fitted on (its snapshot), None for round 0
        "trained_on": trained_on,
        "mean_rating": t.mean, "mean_rating_ci95": [t.mean_low, t.mean_high],
        "share_ge6": t.share, "share_ge6_ci95": [t.share_low, t.share_high],
        "honest_ratings": h.n, "honest_mean_rating": h.mean, "honest_share_ge6": h.share,
        "variety_pixels": pix, "variety_embedding": emb,
        "variety_pixels_pct_round0": _pct(pix, base["variety_pixels"]),
        "variety_embedding_pct_round0": _pct(emb, base["variety_embedding"]),
        **within,
        "wait_s": wait_s, "wait_parts": wait_parts,
        # the reward model that chose this round's training signal, on this round's (unseen) images, and on its
        # honest ones only (the others were chosen by that model: reward_figures)
        "reward_model": reward_model,
        "reward_corr": None if reward_model is None else reward_model["spearman"],
        "reward_corr_honest": honest_corr(reward_model),
    }


# ---------------------------------------------------------------------------------------------
# one seed through the app
# ---------------------------------------------------------------------------------------------


def _create_experiment(factory, settings: Settings, cfg: BenchConfig, seed: int) -> int:
    from app import services
    from db import repo
    from db.engine import write_session
    from db.models import Experiment

    placeholders = []
    with write_session(factory) as s:  # the experiment id, from which the worker derives every seed, is seed + 1
        for i in range(seed):
            placeholders.append(repo.create_experiment(session=s, name=f"seed placeholder {i}", model_spec=settings.model,
                                                       method="greedy", config={}, budgets=[1], prompts=["x"]).id)
    spec = services.ExperimentSpec(name=EXPERIMENT, preset="shapes", budgets=(cfg.budget,) * (cfg.rounds + 1))
    experiment_id = services.create_experiment(factory=factory, spec=spec, default_model=settings.model)
    with write_session(factory) as s:
        for pid in placeholders:
            s.delete(s.get(Experiment, pid))
        e = repo.get_experiment(session=s, experiment_id=experiment_id)
        config = dict(e.config)
        if cfg.tiny:  # a smoke test of the plumbing: 3 sampling steps, 2 training trajectories, a 2x2 eval grid
            from app.testing import tiny_worker_config

            config = tiny_worker_config(config)
        app_part = {k: v for k, v in config.items() if k == experiment_options.APP_KEY}
        config = {**cfg.seiko_config({k: v for k, v in config.items() if k != experiment_options.APP_KEY}), **app_part}
        e.config = experiment_options.with_options(config, cfg.options)
    if experiment_id != seed + 1:
        raise BenchError(f"the experiment got id {experiment_id}, not {seed + 1}; the data dir was not fresh")
    return experiment_id


def _failed_job(factory, experiment_id: int) -> str | None:
    from db.engine import read_session
    from db.models import Job

    with read_session(factory) as s:
        job = s.query(Job).filter(Job.experiment_id == experiment_id, Job.status == "failed").first()
        return None if job is None else f"job {job.id} ({job.kind}) failed: {job.error}"


def _wait_until(fetch, ready, factory, worker: subprocess.Popen, experiment_id: int, index: int,
                timeout_s: float) -> tuple[dict[str, Any], float]:
    """Call ``fetch()`` until ``ready(answer)``; returns the answer and the time it came."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = fetch()
        if ready(answer):
            return answer, time.monotonic()
        if worker.poll() is not None:
            raise BenchError(f"the worker exited with status {worker.returncode} while round {index} was awaited; see its log")
        failed = _failed_job(factory, experiment_id)
        if failed is not None:
            raise BenchError(f"the worker could not make round {index}: {failed}")
        if time.monotonic() > deadline:
            raise BenchError(f"round {index}'s images did not come within {timeout_s:g} s")
        time.sleep(POLL_S)


def _wait_for_batch(factory, data_dir, who, worker: subprocess.Popen, experiment_id: int, index: int, limit: int,
                    timeout_s: float) -> tuple[dict[str, Any], float]:
    """Poll next_batch until round ``index``'s images come; returns the batch and the time they came."""
    from app import ui_rate

    return _wait_until(lambda: ui_rate.api_batch(factory, data_dir, who, limit=limit, experiment=EXPERIMENT),
                       lambda batch: bool(batch["items"]) and batch["round"] == index,
                       factory, worker, experiment_id, index, timeout_s)


def _wait_for_pairs(factory, data_dir, who, worker: subprocess.Popen, experiment_id: int, index: int,
                    timeout_s: float) -> tuple[dict[str, Any], float]:
    """Poll next_pair until round ``index`` is open for labeling (its pairs are made in the same transaction that
    opens it); returns next_pair's answer and the time it came."""
    from app import ui_pairs

    return _wait_until(lambda: ui_pairs.api_pair(factory, data_dir, who, experiment=EXPERIMENT),
                       lambda out: out["round"] == index, factory, worker, experiment_id, index, timeout_s)


def compare_round(factory, data_dir, who, person: people.Person, choice: PairChoice, *, seed: int,
                  index: int) -> tuple[int, int, float | None]:
    """The person answers every pair round ``index`` offers it, through next_pair and submit_comparison, as a
    browser's Pairs tab does: rates the pair's two images (decoded from the API's PNG bytes) and chooses by
    ``choice``. Returns (votes given, ties among them, the time of the last vote or None)."""
    from app import ui_pairs

    given = ties = 0
    last = None
    while True:
        out = ui_pairs.api_pair(factory, data_dir, who, experiment=EXPERIMENT)
        pair = out["pair"]
        if out["round"] != index or pair is None:
            return given, ties, last
        pixels = [decode_png(pair[side]["png_base64"]) for side in ("left", "right")]
        images = as_images(pixels)
        # each image with its own prompt: a preference pair may hold two prompts, and pair["prompt"] joins them
        left, right = person.rate(images, [pair[side]["prompt"] for side in ("left", "right")])
        side = choice.choose(left, right, seed=seed, index=index, pair_id=pair["pair_id"])
        ui_pairs.api_vote(factory, who, pair["pair_id"], side)
        given += 1
        ties += side == "tie"
        last = time.monotonic()


def _pairs_offered(session, round_id: int) -> int:
    from db.models import ComparisonPair

    return session.query(ComparisonPair).filter(ComparisonPair.round_id == round_id,
                                                ComparisonPair.kind == pairwise.KIND).count()


def trained_on(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the train job that published a round fitted its reward model on (from its recorded snapshot): the
    feedback setting, ratings, comparison votes and images, and the labels ``train_round`` counted."""
    train = (metrics or {}).get("train")
    if not train:
        return None
    snap = train.get("snapshot") or {}
    return {"feedback": snap.get("feedback", "scores"), "ratings": snap.get("ratings"), "votes": snap.get("votes", 0),
            "images": snap.get("images"), "labels": train.get("labels")}


def run_seed(cfg: BenchConfig, seed: int, person: people.Person, on_round) -> list[dict[str, Any]]:
    """Run one seed; ``on_round(rounds_so_far)`` is called after every round (results.json is rewritten there)."""
    from app import auth, ui_admin, ui_rate
    from app.cli_demo import stop_worker, worker_command, worker_env
    from db import migrate, repo
    from db.engine import make_engine, read_session, session_factory

    root = cfg.out / f"seed_{seed}"
    if root.exists() or root.is_symlink():  # run() removed an unfinished seed's directory; anything else is not ours
        raise BenchError(f"{root} already exists; give another --out")
    data_dir = root / "data"
    data_dir.mkdir(parents=True)
    settings = Settings.from_env({"data_dir": str(data_dir), "model": cfg.model}, environ={})
    migrate.upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    factory = session_factory(engine)
    experiment_id = _create_experiment(factory, settings, cfg, seed)
    who = auth.local_admin(factory)
    limit = min(64, cfg.budget)
    rounds: list[dict[str, Any]] = []
    log_file = open(root / "worker.log", "wb")
    worker = subprocess.Popen(worker_command(settings), env=worker_env(settings), stdout=log_file,
                              stderr=subprocess.STDOUT, start_new_session=True)
    want_scores, want_pairs = pairwise.wants_scores(cfg.feedback), pairwise.wants_pairs(cfg.feedback)
    labels_given = 0  # ratings and comparisons of the rounds so far: what the next round's model is trained on

    def measure(k: int, votes: int, ties: int, wait_s: float | None) -> None:
        """Round ``k``'s record from what the database holds, appended to ``rounds``."""
        nonlocal labels_given
        with read_session(factory) as s:
            round_ = repo.get_round_by_index(session=s, experiment_id=experiment_id, index=k)
            query = repo.list_images(session=s, round_id=round_.id, kind="query")
            rated = {r.image_id: r.score for r in _ratings(s, [im.id for im in query])}
            honest = set(selection.honest_ids(round_.metrics, query))
            mode = ((round_.metrics or {}).get("selection") or {}).get("selection", "random")
            pix = stored_pixels(data_dir, query)
            emb = embeddings_of(query).astype(np.float64)
            offered = _pairs_offered(s, round_.id) if want_pairs else None
            if want_scores:
                scores = rated
            else:  # the honest measure: the person's ratings of every query image, taken here and never submitted
                images = as_images(pix)
                scores = dict(zip([im.id for im in query], person.rate(images, [im.prompt for im in query])))
            quality = round_reward_quality(s, data_dir, experiment_id, k, query, scores=scores, honest=honest)
            parts = wait_breakdown(round_.metrics) if k else None
            fitted = trained_on(round_.metrics) if k else None
            liked = liked_flags(scores, query)
        rounds.append(round_record(k, [scores[i] for i in scores], [scores[i] for i in scores if i in honest], pix, emb,
                                   wait_s=wait_s, labels_trained=labels_given, base=rounds[0] if rounds else None,
                                   mode=mode, reward_model=quality, wait_parts=parts, ratings=len(rated),
                                   comparisons=votes, ties=ties, pairs_offered=offered,
                                   measured_by="ratings" if want_scores else "person", trained_on=fitted,
                                   liked=liked))
        labels_given += rounds[-1]["labels"]
        if k < cfg.rounds and not rounds[-1]["labels"]:
            raise BenchError(f"round {k} offers no pairs to compare (no two of its {len(query)} images share a "
                             "prompt), so it has nothing to train on; give a larger --budget")

    try:
        closed_at: float | None = None
        # With auto-close, a round closes at its last label and the worker trains at once: its record is taken after
        # the next round's images have come, so the bench's own work neither takes CPU from the fine-tuning (which
        # stops at its time limit) nor delays noticing the images. Without it the record comes before the close.
        unmeasured: tuple[int, int, int, float | None] | None = None
        for k in range(cfg.rounds + 1):
            if want_scores:
                batch, came = _wait_for_batch(factory, data_dir, who, worker, experiment_id, k, limit, cfg.round_timeout_s)
            else:  # comparisons only: next_batch offers nothing, next_pair says when the round is open
                batch, came = _wait_for_pairs(factory, data_dir, who, worker, experiment_id, k, cfg.round_timeout_s)
                batch = {"items": []}
            wait_s = None if closed_at is None else came - closed_at
            if unmeasured is not None:
                measure(*unmeasured)
                on_round(rounds)
                unmeasured = None
            last_label_at = None
            votes = ties = 0
            if want_pairs:  # before the ratings: with "both", auto-close closes the round at its last rating
                votes, ties, last_label_at = compare_round(factory, data_dir, who, person, cfg.pair_choice, seed=seed, index=k)
            while batch["items"]:
                items = batch["items"]
                pixels = [decode_png(it["png_base64"]) for it in items]
                images = as_images(pixels)
                ratings = person.rate(images, [it["prompt"] for it in items])
                for it, score in zip(items, ratings):
                    ui_rate.submit(factory, who, it["image_id"], score)
                last_label_at = time.monotonic()
                batch = ui_rate.api_batch(factory, data_dir, who, limit=limit, experiment=EXPERIMENT)
                if batch["round"] != k:
                    break
            if k < cfg.rounds and cfg.options.auto_close:
                with read_session(factory) as s:
                    status = repo.get_round_by_index(session=s, experiment_id=experiment_id, index=k).status
                if status == "labeling":
                    measure(k, votes, ties, wait_s)  # says so if the round had nothing to label
                    raise BenchError(f"auto_close is on but round {k} stayed open after its last label")
                closed_at = last_label_at
                unmeasured = (k, votes, ties, wait_s)
                continue
            measure(k, votes, ties, wait_s)
            if k < cfg.rounds:
                ui_admin.close_round(factory, who, experiment_id, expected_index=k)
                closed_at = time.monotonic()
            on_round(rounds)
        return rounds
    finally:
        stop_worker(worker, 30.0)
        log_file.close()
        engine.dispose()


def embeddings_of(images) -> np.ndarray:
    """The worker's stored image-encoder embeddings of ``images`` as an (N, D) float32 array."""
    return np.stack([np.frombuffer(im.embedding, dtype="<f4") for im in images])


def round_reward_quality(session, data_dir: Path, experiment_id: int, index: int, query,
                         scores: dict[int, int] | None = None, honest=None) -> dict[str, Any] | None:
    """:func:`reward_quality` of round ``index`` on its rated query images (the live run and ``--rescore`` share it);
    ``scores`` (image id -> rating) instead of the stored ratings: the person's measurement with comparisons only;
    ``honest``: the ids of the round's honest images (``app.selection.honest_ids``), measured apart as well."""
    if scores is None:
        scores = {r.image_id: r.score for r in _ratings(session, [im.id for im in query])}
    rated = [im for im in query if im.id in scores]
    if not rated:
        return None
    honest = None if honest is None else set(honest)
    flags = None if honest is None else [im.id in honest for im in rated]
    return reward_quality(data_dir, experiment_id, index, embeddings_of(rated), [scores[im.id] for im in rated], flags)


def _ratings(session, image_ids: list[int]):
    from db.models import Rating

    return session.query(Rating).filter(Rating.image_id.in_(image_ids)).all() if image_ids else []


def stored_pixels(data_dir: Path, images) -> list[np.ndarray]:
    """The stored PNG files of ``images`` as :func:`decode_png` arrays, in their order."""
    return [decode_png(base64.b64encode(_file(data_dir, im)).decode()) for im in images]


def liked_flags(scores: dict[int, int], images) -> list[bool]:
    """Per image of ``images`` (in their order, as :func:`stored_pixels`), whether ``scores`` rates it >= 6."""
    return [scores.get(im.id, 0) >= taste_stats.LIKED for im in images]


def _file(data_dir, image) -> bytes:
    from app import storage

    return storage.resolve(data_dir, image.file_path).read_bytes()


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------

FEEDBACK_NOTES = {
    "scores": "the person rates every query image 1-10 (next_batch, submit_rating); the app trains on the ratings",
    "pairs": "the experiment asks for comparisons only: the person answers every pair the round offers (next_pair, "
             "submit_comparison) and rates nothing; the app trains on the comparisons (Bradley-Terry)",
    "both": "the person answers every pair the round offers (next_pair, submit_comparison) and rates every query image "
            "(next_batch, submit_rating); the app trains on both",
}
BUDGET_RULE = ("--budget B is the round's B query images; app.pairwise pairs images of one prompt (a prompt with m >= 3 "
               "images: a cycle of m pairs, 2 images: 1 pair) and the images alone with their prompt the same way "
               "among themselves (one such image: none), so a round offers at most B pairs and the "
               "person answers every one: B comparisons where the round offers B pairs, fewer where it offers fewer. "
               "Per round: pairs_offered, comparisons (votes given), ratings, labels (ratings + comparisons); "
               "labels_trained sums the labels of the earlier rounds")
MEASURE_NOTE = ("mean_rating, share_ge6 (and their honest_ and reward_model figures) are the person's own ratings of every "
                "query image, taken by the benchmark for measurement only and never submitted to the app: the app "
                "saw only the comparisons")

SUMMARY_KEYS = ("mean_rating", "share_ge6", "honest_share_ge6", "variety_pixels_pct_round0", "variety_embedding_pct_round0",
                "wait_s", "reward_corr", "reward_corr_honest")


def _record_problem(record: Any, rounds: int) -> str | None:
    """Why ``record`` (one seed's entry in results.json) is not a seed record of a run with ``rounds`` trainings, or
    None: a finished one holds rounds 0 .. ``rounds``, each with numbers (or null) where :func:`summarise` reads them."""
    if not isinstance(record, dict) or not isinstance(record.get("complete"), bool):
        return "its record is not an object with complete true or false"
    if not record["complete"]:
        return None  # started again from a fresh data dir, its rounds are not read
    got = record.get("rounds")
    if not isinstance(got, list) or len(got) != rounds + 1 or not all(isinstance(r, dict) for r in got):
        return f"rounds must be a list of {rounds + 1} round records, got {json.dumps(got)[:60]}"
    for k, r in enumerate(got):
        bad = [key for key in SUMMARY_KEYS if not number_or_none(r.get(key))]
        if bad:
            return f"round {k}'s {bad[0]} is {json.dumps(r.get(bad[0]))[:40]}, not a number"
    return None


def previous_seeds(path: Path, previous: dict[str, Any], cfg: BenchConfig) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """The seeds of ``previous`` (results.json at ``path`` of a run with ``cfg``'s settings): the finished ones'
    records, kept, and the unfinished ones' names, whose ``seed_<s>/`` run() may start again. BenchError (one
    sentence naming the file) when a record is not a bench-taste seed record: a kept one is summarised."""
    names = {str(s) for s in cfg.seeds}
    kept, unfinished = {}, set()
    for key, record in previous.get("seeds", {}).items():
        problem = (f"it lists seed {key!r}, not one of --seeds" if key not in names
                   else _record_problem(record, cfg.rounds))
        if problem:
            raise BenchError(f"{path} is not a bench-taste results file (seed {key}: {problem}); give another --out")
        if record["complete"]:
            kept[key] = record
        else:
            unfinished.add(key)
    return kept, unfinished


def summarise(seeds: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per round over the seeds that reached it: mean, min and max of each SUMMARY_KEYS value."""
    out = []
    n_rounds = max((len(v["rounds"]) for v in seeds.values()), default=0)
    for k in range(n_rounds):
        row: dict[str, Any] = {"round": k}
        for key in SUMMARY_KEYS:
            vals = [v["rounds"][k].get(key) for v in seeds.values() if len(v["rounds"]) > k]
            vals = [x for x in vals if x is not None]
            row[key] = ({"mean": float(np.mean(vals)), "min": float(min(vals)), "max": float(max(vals)), "n": len(vals)}
                        if vals else None)
        out.append(row)
    return out


def write_results(path: Path, cfg: BenchConfig, seeds: dict[str, dict[str, Any]], command: list[str],
                  invocations: list[dict[str, Any]] | None = None) -> None:
    """results.json; ``invocations``: every command that worked on it, with its time and git commit."""
    doc = {"benchmark": "bench-taste", "command": command, "config": cfg.as_dict(),
           "rating_rule": "built-in people: rating = min(10, max(1, floor(1 + 0.9 * r + 0.5))), r the oracle's reward",
           "feedback": FEEDBACK_NOTES[cfg.feedback], "seeds": seeds, "summary": summarise(seeds)}
    if pairwise.wants_pairs(cfg.feedback):
        doc["pair_choice_rule"] = cfg.pair_choice.as_dict()["rule"]
        doc["budget_rule"] = BUDGET_RULE
    if not pairwise.wants_scores(cfg.feedback):
        doc["measure"] = MEASURE_NOTE
    if invocations is not None:
        doc["invocations"] = invocations
    atomic.write_text(path, json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n")


def plot(path: Path, cfg: BenchConfig, summary: list[dict[str, Any]]) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.4), dpi=100, layout="constrained")
    axes = fig.subplots(1, 3)
    x = [r["round"] for r in summary]

    def draw(ax, key, scale, label, color):
        pts = [(r["round"], r[key]) for r in summary if r.get(key)]
        if not pts:
            return
        xs = [p[0] for p in pts]
        ax.plot(xs, [scale * p[1]["mean"] for p in pts], "o-", color=color, label=label)
        ax.fill_between(xs, [scale * p[1]["min"] for p in pts], [scale * p[1]["max"] for p in pts], color=color, alpha=0.15)

    draw(axes[0], "share_ge6", 100, "all images", "#c2410c")
    draw(axes[0], "honest_share_ge6", 100, "honest (random) images", "#2563eb")
    axes[0].set_title(f"% rated >= {taste_stats.LIKED}")
    axes[0].set_ylim(0, 100)
    draw(axes[1], "mean_rating", 1, "mean rating", "#15803d")
    axes[1].set_title("mean rating (1-10)")
    draw(axes[2], "variety_pixels_pct_round0", 1, "pixels", "#9333ea")
    draw(axes[2], "variety_embedding_pct_round0", 1, "embeddings", "#0f766e")
    axes[2].axhline(80, color="#64748b", lw=0.8, ls=":")
    axes[2].set_title("variety, % of round 0")
    for ax in axes:
        ax.set_xlabel("round")
        if x:
            ax.set_xticks(x)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"bench-taste: person {cfg.person}, feedback {cfg.feedback}, selection {cfg.options.selection}, "
                 f"{len(cfg.seeds)} seed(s) "
                 f"(mean; band: min-max)", fontsize=10)
    # a temporary name renamed into place: a write that fails half-way leaves the earlier plot whole (seventh review)
    atomic.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def _num(value: float | None, fmt: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{unit}"


def round_line(r: dict[str, Any]) -> str:
    share = None if r["share_ge6"] is None else 100 * r["share_ge6"]
    return (f"round {r['round']}: mean {_num(r['mean_rating'], '.2f')}, share>=6 {_num(share, '.0f', '%')}, "
            f"variety {_num(r['variety_pixels_pct_round0'], '.0f', '%')} px / {_num(r['variety_embedding_pct_round0'], '.0f', '%')} emb, "
            f"wait {_num(r['wait_s'], '.1f', ' s')}, labels trained {r['labels_trained']}, "
            f"reward model rho {_num(r.get('reward_corr'), '.2f')}"
            + ("" if r.get("pairs_offered") is None else f", {r['comparisons']} of {r['pairs_offered']} pairs compared"))


def run(cfg: BenchConfig, command: list[str], log=print) -> dict[str, Any]:
    person = people.load_person(cfg.person)
    from app.services import check_model_spec

    model = check_model_spec(cfg.model)  # a mistyped --model: one sentence, before any seed's data dir is made
    people.check_person(person, people.model_image_size(cfg.model))
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"the output directory {cfg.out} cannot be made ({exc.strerror or exc}); give another --out") from exc
    try:  # an existing folder that takes no new file: results.json's first write was a traceback (seventh review)
        atomic.check_can_write(cfg.out / "results.json")
    except OSError as exc:
        raise BenchError(f"the output directory {cfg.out} cannot be written ({exc.strerror or exc}); give another "
                         "--out") from exc
    cfg = replace(cfg, provenance=(("model_sha256", model_sha256(model)), ("person_sha256", person_sha256(cfg.person))))
    # per invocation, not part of the settings: a resume may run other code (the commit tells which)
    invocations = [{"command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git_commit()}]
    results_path = cfg.out / "results.json"
    seeds: dict[str, dict[str, Any]] = {}
    unfinished: set[str] = set()
    # Never "remove results.json": without it no seed_<s>/ is known to be this benchmark's, and none is removed
    if results_path.exists() or results_path.is_symlink():
        try:
            previous = json.loads(results_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
            previous = exc
        if not isinstance(previous, dict) or not isinstance(previous.get("seeds", {}), dict):
            raise BenchError(f"{results_path} is not a bench-taste results file; give another --out")
        problem, warning = resume_problem(results_path, previous.get("config"), cfg)
        if problem:
            raise BenchError(problem)
        if warning:
            log(warning)
        seeds, unfinished = previous_seeds(results_path, previous, cfg)
        earlier = previous.get("invocations")
        invocations = [*(earlier if isinstance(earlier, list) else []), *invocations]
    # A seed's directory is removed only when results.json lists it as an unfinished seed of these settings: an
    # --out that holds anything else under that name is refused before any seed starts, and nothing is touched
    for seed in cfg.seeds:
        root = cfg.out / f"seed_{seed}"
        if str(seed) not in seeds and (root.exists() or root.is_symlink()) and (
                str(seed) not in unfinished or root.is_symlink() or not root.is_dir()):
            raise BenchError(f"{root} exists but {results_path.name} there does not list seed {seed} as unfinished, so "
                             "it is not this benchmark's to start again; give another --out")
    for k in seeds:
        log(f"seed {k}: finished in an earlier run, kept")
    for k in sorted(unfinished, key=int):  # still listed (their directories are still there) until each starts again
        seeds[k] = {"rounds": [], "complete": False, "wall_s": 0.0}
    for seed in cfg.seeds:
        if seeds.get(str(seed), {}).get("complete"):
            continue
        started = time.monotonic()
        root = cfg.out / f"seed_{seed}"
        # listed as unfinished before its directory is made, so that a run stopped in round 0 is resumed, not refused
        seeds[str(seed)] = {"rounds": [], "complete": False, "wall_s": 0.0}
        write_results(results_path, cfg, seeds, command, invocations)
        if root.exists():
            shutil.rmtree(root)  # an unfinished seed (checked above) starts again on a fresh data dir

        def on_round(rounds, seed=seed, started=started):
            seeds[str(seed)] = {"rounds": rounds, "complete": False, "wall_s": round(time.monotonic() - started, 1)}
            write_results(results_path, cfg, seeds, command, invocations)
            log(f"seed {seed} " + round_line(rounds[-1]))

        rounds = run_seed(cfg, seed, person, on_round)
        seeds[str(seed)] = {"rounds": rounds, "complete": True, "wall_s": round(time.monotonic() - started, 1)}
        write_results(results_path, cfg, seeds, command, invocations)
    plot(cfg.out / "bench_taste.png", cfg, summarise(seeds))
    return {"seeds": seeds, "summary": summarise(seeds)}
