"""App-level experiment settings that are not part of the SEIKO config: which images a round asks about, and
whether a round closes by itself once its budget is rated.

They live in ``Experiment.config`` (a JSON column, so no migration) under the key ``"app"``, next to the
SeikoConfig fields; ``app.services.experiment_config`` leaves that key out before it builds the SeikoConfig.

    selection         random | uncertainty | optimistic | spread   which candidates a round shows (app.selection)
    candidate_factor  1..8                                 candidates generated per shown image, rounds >= 1
    honest_share      0..1                                 share of a non-random round's images drawn uniformly
                                                           at random from the candidates (an honest sample)
    auto_close        true | false                         close the round when its budget is rated (app.auto_close)
    feedback          scores | pairs | both                1-10 ratings, comparisons of two images, or both (app.pairwise)
    repeat_share      0..0.5                               share of the images handed to a rater that are, blind, an
                                                           image of the round they rated before (app.repeats); 0: off
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from db.errors import InvalidInput

APP_KEY = "app"
SELECTIONS = ("random", "uncertainty", "optimistic", "spread")
MAX_CANDIDATE_FACTOR = 8
MAX_REPEAT_SHARE = 0.5  # at most every other image a repeat: each repeat needs an image rated once before
FEEDBACKS = ("scores", "pairs", "both")  # what raters give: app.pairwise's setting, kept here so the options round-trip


@dataclass(frozen=True)
class ExperimentOptions:
    # new experiments show, of twice the images, the most optimistic and most varied (issue 12, lever K: adopted by a
    # rule written before its runs, BENCHMARKS.md "Levers J and K"); a factor of 1 generates no extra candidates
    selection: str = "spread"
    candidate_factor: int = 2
    honest_share: float = 0.25  # a quarter of a selected round stays a uniform random sample of the model's images
    auto_close: bool = False  # an admin closes rounds (the demo too; see docs/bench-taste.md)
    feedback: str = "scores"  # issue 14 item 1: scores | pairs | both; app.pairwise owns it (app.pairwise.set_feedback)
    repeat_share: float = 0.0  # issue 14 item 2: self-consistency from images shown again (app.repeats); 0: off

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise InvalidInput(f"unknown selection {self.selection!r}; choose from {list(SELECTIONS)}")
        factor = self.candidate_factor
        if isinstance(factor, bool) or not isinstance(factor, int) or not 1 <= factor <= MAX_CANDIDATE_FACTOR:
            raise InvalidInput(f"candidate_factor must be a whole number from 1 to {MAX_CANDIDATE_FACTOR}, got {factor!r}")
        share = self.honest_share
        if isinstance(share, bool) or not isinstance(share, int | float) or not (math.isfinite(share) and 0 <= share <= 1):
            raise InvalidInput(f"honest_share must be a number from 0 to 1, got {share!r}")
        if not isinstance(self.auto_close, bool):
            raise InvalidInput(f"auto_close must be true or false, got {self.auto_close!r}")
        if self.feedback not in FEEDBACKS:
            raise InvalidInput(f"unknown feedback {self.feedback!r}; choose from {list(FEEDBACKS)} (1-10 scores, "
                               "pairwise comparisons, or both)")
        share = self.repeat_share
        if (isinstance(share, bool) or not isinstance(share, int | float)
                or not (math.isfinite(share) and 0 <= share <= MAX_REPEAT_SHARE)):
            raise InvalidInput(f"repeat_share must be a number from 0 to {MAX_REPEAT_SHARE:g} (the share of images shown "
                               f"to a rater a second time; 0 turns repeats off), got {share!r}")

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.repeat_share:  # off: left out, so configs (and bench-taste runs) from before the option compare equal
            del out["repeat_share"]
        return out


# What an experiment created before lever K was adopted did (it stored no selection): every image shown, no extras.
# New experiments store their options when they are created (app.services.create_experiment), so they never need it.
BEFORE_SPREAD = {"selection": "random", "candidate_factor": 1}


def from_config(config: dict[str, Any] | None) -> ExperimentOptions:
    """The options stored in an experiment's config dict (defaults for those not set; a selection and candidate
    factor that were never stored are ``BEFORE_SPREAD``'s, so an older experiment keeps behaving as it did)."""
    raw = (config or {}).get(APP_KEY)
    raw = {} if raw is None else raw  # present but empty ([], 0, ""): refused below, not read as "no options"
    if not isinstance(raw, dict):
        raise InvalidInput(f"the experiment's {APP_KEY!r} settings must be a JSON object, got {type(raw).__name__}")
    known = {f.name for f in fields(ExperimentOptions)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InvalidInput(f"unknown experiment settings {unknown}; choose from {sorted(known)}")
    return ExperimentOptions(**{**BEFORE_SPREAD, **raw})


def candidate_plan(options: ExperimentOptions, round_index: int, budget: int) -> tuple[str, int]:
    """(the mode used, the number of candidates to generate) for a round: round 0 is random with no extras."""
    if round_index == 0 or options.selection == "random":
        return "random", budget
    return options.selection, budget * options.candidate_factor


def of(experiment) -> ExperimentOptions:
    return from_config(experiment.config if isinstance(experiment.config, dict) else None)


def with_options(config: dict[str, Any], options: ExperimentOptions) -> dict[str, Any]:
    """A copy of ``config`` with ``options`` stored under ``APP_KEY``."""
    return {**config, APP_KEY: options.as_dict()}


def seiko_part(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without the app-level settings: what ``seiko_core.config.from_dict`` reads."""
    return {k: v for k, v in config.items() if k != APP_KEY}


def set_options(factory, who, experiment_id: int, **changes: Any) -> ExperimentOptions:
    """An admin changes some of an experiment's options (checked, audit-logged); returns the new options.

    A change applies from the next round that is generated (selection, candidate_factor, honest_share), the
    next rating (auto_close) or the next images handed out (repeat_share); with auto_close on, a round already
    rated in full is closed at once (``save_options``)."""
    return save_options(factory, who, experiment_id, **changes).options


@dataclass(frozen=True)
class Saved:
    options: ExperimentOptions
    closed: tuple[int, int] | None  # (round index, train job id) when auto-close closed the open round on saving


def save_options(factory, who, experiment_id: int, **changes: Any) -> Saved:
    """``set_options``, and the round auto-close closed on saving, if any. With auto_close on, the open round is
    checked at once (``app.auto_close.maybe_close``, as a resume does): one already rated in full had no later
    rating, skip or account change to close it, so turning auto-close on for it never closed it (found by review).
    The options are committed first; a refusal to close says so and that they are saved."""
    from app import auto_close as closer
    from app.auth import require_admin
    from db import repo
    from db.engine import read_session, write_session
    from db.errors import DbError

    require_admin(who)
    with write_session(factory) as s:
        # locked: the config is rewritten whole, and another admin's change of it meanwhile was undone (review)
        experiment = repo.lock_experiment(session=s, experiment_id=experiment_id)
        new = ExperimentOptions(**{**of(experiment).as_dict(), **changes})
        experiment.config = with_options(dict(experiment.config), new)
        repo.add_audit(session=s, actor_id=who.rater_id, actor_name=who.name, action="experiment.options",
                       target=f"experiment {experiment_id}", detail=dict(changes))
    if not new.auto_close:
        return Saved(new, None)
    with read_session(factory) as s:
        open_ = repo.get_open_round(session=s, experiment_id=experiment_id)
        index = None if open_ is None else open_.index
    if index is None:
        return Saved(new, None)
    try:
        job_id = closer.maybe_close(factory, experiment_id, index)
    except DbError as e:
        raise type(e)(f"the options are saved, but auto-close could not close round {index}: {e}") from e
    return Saved(new, None if job_id is None else (index, job_id))
