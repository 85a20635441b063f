"""Blind A/B comparisons between rounds, and rollback (issue 14, item 3). No Gradio here; the tab is app.ui_compare.

A/B pairs. Every generate job renders the experiment's fixed held-out eval grid (``eval_prompts`` x ``eval_seeds``)
with its round's model; round 0's grid is the base model's. When round r >= 1's grid is stored, the worker pairs each
of its images with the image of the same prompt and seed rendered by the round r was trained from (its parent: the
previous index, or the round an admin rolled back to) and, when that parent is not round 0, by the base model too.
The left/right order of each pair is drawn per cell (``new_image_left``) from a secret seed drawn for the round and
recorded in the round's metrics (``metrics["ab"]``). Eval jobs can finish out of order, so a round's
pairs are completed when its parent's (or round 0's) grid is published after its own (``add_dependent_pairs``).
No image is rendered twice: the eval grid is the A/B material, so the A/B costs no model time, and eval images are
never offered for rating (the rating paths ask for ``kind='query'``).

Rollback. ``train_next_from`` makes the next train job start from round j's adapter (j = 0: the base model) instead
of the round being closed; the worker records ``rounds.parent_round_id = round j`` on the round it publishes, and
uses round j's adapter as the KL term's previous model. Every round stays in the history: both branches are kept.
"""

from __future__ import annotations

import random
import re
import secrets
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from app.auth import Who, require_admin
from db import comparisons, repo
from db.checks import MAX_ID, shown, whole_number
from db.engine import read_session, write_session
from db.errors import Conflict, InvalidInput
from db.models import Job, Round

KIND = "ab"


def _eval_images(session, round_id: int) -> dict[tuple[str, int], int]:
    return {(im.prompt, int(im.seed)): im.id for im in repo.list_images(session=session, round_id=round_id, kind="eval")}


def new_image_left(seed: int, opponent_index: int, prompt: str, image_seed: int) -> bool:
    """Whether the newer round's image goes on the left of its pair against round ``opponent_index`` for the cell
    (``prompt``, ``image_seed``): one draw of ``random.Random`` seeded by the round's side seed, the opponent and the
    cell, so a pair's side does not depend on which other pairs exist (a pair added later gets the same side)."""
    return random.Random(f"{int(seed)}:{int(opponent_index)}:{prompt}:{int(image_seed)}").random() < 0.5


def create_round_pairs(*, session, round_id: int, seed: int | None = None) -> dict[str, Any]:
    """Add round ``round_id``'s missing A/B pairs and return what the round has:
    {"side_seed", "previous_index", "vs_previous", "vs_base"} (pair counts). Round 0 has no pairs ({}).

    A pair is made for every cell (prompt, seed) of the eval grid that both the round and the opponent have stored;
    pairs made earlier stay as they are (sides included). So it can be called again when either grid has grown: a
    round whose eval job published before its parent's (or round 0's) grid was complete gets the rest of its pairs
    when that grid is published (``add_dependent_pairs``). The round's row is locked first, so two transactions
    adding its pairs at once (two workers publishing) add each pair once.

    ``seed`` None (the worker): the round's recorded side seed, or on its first pairs a fresh one from ``secrets``,
    recorded at once. A seed derived from the experiment and round alone (the rule until 4 Dec 2026) let a rater who
    read the documented formula work out the new image's side of every pair (found by review)."""
    return _round_pairs(session, round_id, seed)[0]


def _side_seed(session, round_: Round) -> int:
    """The round's recorded side seed, or a fresh secret one, recorded in its metrics["ab"]."""
    recorded = (round_.metrics or {}).get("ab", {}).get("side_seed")
    if isinstance(recorded, int) and not isinstance(recorded, bool):
        return recorded
    seed = secrets.randbits(62)
    repo.update_round_metrics(session=session, round_id=round_.id,
                              metrics={"ab": {**(round_.metrics or {}).get("ab", {}), "side_seed": seed}})
    return seed


def _round_pairs(session, round_id: int, seed: int | None) -> tuple[dict[str, Any], int]:
    """``create_round_pairs``: (its report, how many pairs it added)."""
    # the lock (none on SQLite), re-reading the row: a copy loaded before it (list_rounds) may be stale
    round_ = repo.lock_round(session=session, round_id=round_id)
    parent = comparisons.parent_of(session=session, round_id=round_id)
    if parent is None:
        return {}, 0
    if seed is None:
        seed = _side_seed(session, round_)
    base = repo.get_round_by_index(session=session, experiment_id=round_.experiment_id, index=0)
    mine = _eval_images(session, round_id)
    opponents = {"vs_previous": parent} if parent.id == base.id else {"vs_previous": parent, "vs_base": base}
    existing = {frozenset((p.image_a_id, p.image_b_id))
                for p in comparisons.list_pairs(session=session, experiment_id=round_.experiment_id, kind=KIND,
                                                round_id=round_id)}
    counts = {"vs_previous": 0, "vs_base": 0}
    pairs: list[tuple[int, int]] = []
    for name, opponent in opponents.items():
        theirs = _eval_images(session, opponent.id)
        for key in sorted(mine):
            if key not in theirs:
                continue
            counts[name] += 1
            if frozenset((mine[key], theirs[key])) in existing:
                continue
            left = new_image_left(seed, opponent.index, *key)
            pairs.append((mine[key], theirs[key]) if left else (theirs[key], mine[key]))
    if pairs:
        comparisons.create_pairs(session=session, experiment_id=round_.experiment_id, round_id=round_id, kind=KIND,
                                 pairs=pairs)
    if parent.id == base.id:
        counts["vs_base"] = counts["vs_previous"]  # the same pairs answer both questions
    return {"side_seed": int(seed), "previous_index": parent.index, **counts}, len(pairs)


def dependent_rounds(*, session, round_id: int) -> list[Round]:
    """The rounds whose A/B pairs use round ``round_id``'s eval grid, lowest index first: for round 0 (the base) every
    later round of the experiment, else the rounds trained from it (``comparisons.parent_of``)."""
    round_ = repo.get_round(session=session, round_id=round_id)
    later = [r for r in repo.list_rounds(session=session, experiment_id=round_.experiment_id) if r.index > round_.index]
    if round_.index == 0:
        return later
    return [r for r in later if (p := comparisons.parent_of(session=session, round_id=r.id)) is not None and p.id == round_.id]


def add_dependent_pairs(*, session, round_id: int,
                        seed_of: Callable[[int], int | None] = lambda index: None) -> dict[int, dict[str, Any]]:
    """After round ``round_id``'s eval grid is stored: add the pairs its dependent rounds (``dependent_rounds``) could
    not have yet, because their eval jobs published first (eval jobs may finish out of order: two workers, a job that
    gave way and waited, a failed one retried later). ``seed_of(index)`` is a round's side seed (None: its recorded
    one, see ``create_round_pairs``). Returns
    {round index: ``create_round_pairs``'s report} for the rounds that got new pairs; their ``metrics["ab"]`` is
    updated here."""
    added: dict[int, dict[str, Any]] = {}
    for dependent in dependent_rounds(session=session, round_id=round_id):
        report, n = _round_pairs(session, dependent.id, seed_of(dependent.index))
        if n:
            repo.update_round_metrics(session=session, round_id=dependent.id, metrics={"ab": report})
            added[dependent.index] = report
    return added


# ---------------------------------------------------------------------------------------------
# rollback
# ---------------------------------------------------------------------------------------------


def _round_index(value: Any) -> int:
    if isinstance(value, str) and not re.fullmatch(r"\s*[+-]?[0-9]+(\.[0-9]*)?\s*", value):
        # only plain decimal numbers: float() read '1_0' and '1e1' as 10, int() an Arabic-Indic digit (review)
        raise InvalidInput(f"the round to train from must be a round number, got {shown(value)}")
    number = whole_number(value)
    if isinstance(number, str) and len(number) <= 40:
        try:
            number = whole_number(float(number))  # "-1", "1.5", "2e0": numbers, refused or taken below as such
        except ValueError:
            pass
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise InvalidInput(f"the round to train from must be a round number, got {shown(value)}")
    if not isinstance(number, int) or not 0 <= number <= MAX_ID:
        raise InvalidInput(f"the round to train from must be a whole number from 0, got {shown(value)}")
    return number


def _train_job(session, experiment_id: int, *, lock: bool = False) -> Job | None:
    """The experiment's newest train job that is waiting or running (locked FOR UPDATE with ``lock``)."""
    stmt = (select(Job).where(Job.experiment_id == experiment_id, Job.kind == "train",
                              Job.status.in_(("queued", "running"))).order_by(Job.id.desc()))
    return session.scalars(stmt.with_for_update() if lock else stmt).first()


def _started(job: Job) -> Conflict:
    return Conflict(f"the worker has already started training round {job.payload.get('round_index')} (job {job.id}); "
                    "wait for it, or reopen that round after it fails")


def _source(j: int) -> str:
    return "the base model (round 0)" if j == 0 else f"round {j}'s adapter"


def _rollback_source(who: Who, experiment_id: int | None, from_index: Any) -> int:
    """The round index a rollback trains from, after the checks its question and its action share."""
    require_admin(who)
    j = _round_index(from_index)
    if experiment_id is None:
        raise InvalidInput("choose an experiment first")
    return j


def _check_source(s, experiment_id: int, j: int, k: int) -> None:
    """Round ``j`` can be the source of round ``k + 1``: trained (j <= k) and, past the base, with an adapter."""
    if j > k:
        raise InvalidInput(f"round {j} is not trained yet; the next round can start from round 0 to {k}")
    source = repo.get_round_by_index(session=s, experiment_id=experiment_id, index=j)
    if j > 0 and source.adapter_path is None:
        raise Conflict(f"round {j} has no adapter to train from")


def rollback_question(factory, who: Who, experiment_id: int | None, from_index: Any) -> tuple[str, int]:
    """What the admin is asked before a rollback, and the index of the round it is about (the open round it would
    close, or the closed round whose queued training it would change); as "Close round" asks first."""
    from app import pairwise

    j = _rollback_source(who, experiment_id, from_index)
    with read_session(factory) as s:
        experiment = repo.get_experiment(session=s, experiment_id=int(experiment_id))
        job = _train_job(s, experiment.id)
        if job is not None and job.status == "running":
            raise _started(job)
        if job is not None:
            k = int(job.payload["round_index"])
            _check_source(s, experiment.id, j, k)
            return (f"Train round {k + 1} of {experiment.name!r} from {_source(j)}? Round {k} is closed and its "
                    "training job is waiting; it will train from there instead.", k)
        round_ = repo.get_open_round(session=s, experiment_id=experiment.id)
        if round_ is None:
            raise Conflict(f"experiment {experiment.name!r} has no round open for labeling and no training waiting")
        _check_source(s, experiment.id, j, round_.index)  # asked about only a source the action would take
        labels, wanted, what = pairwise.round_labels(s, experiment, round_)
        return (f"Close round {round_.index} of {experiment.name!r} ({labels} of {wanted} {what} wanted) "
                f"and train round {round_.index + 1} from {_source(j)}?", round_.index)


def train_next_from(factory, who: Who, experiment_id: int | None, from_index: Any,
                    expected_index: int | None = None) -> str:
    """Admins only: the experiment's next round is trained from round ``from_index``'s adapter (0: the base model).

    The open round is closed for training (as "Close round and train" does), or, when it is already closed, its
    queued train job is changed; a train job the worker has started is refused. With ``expected_index`` (the round
    the admin was asked about, ``rollback_question``) any other round is refused: the open round may have changed
    since (auto-close, another admin). Written to the audit log."""
    j = _rollback_source(who, experiment_id, from_index)
    with write_session(factory) as s:
        experiment = repo.get_experiment(session=s, experiment_id=int(experiment_id))
        job = _train_job(s, experiment.id, lock=True)
        closed_now = job is None
        if job is None:  # refuses when no round is open, or (expected_index) another one
            job = repo.close_round(session=s, experiment_id=experiment.id, expected_index=expected_index)
        elif expected_index is not None and int(job.payload.get("round_index", -1)) != expected_index:
            raise Conflict(f"round {job.payload.get('round_index')} is the one waiting for training now, not round "
                           f"{expected_index}; nothing was changed: ask again")
        elif job.status == "running":
            raise _started(job)
        k = int(job.payload["round_index"])
        _check_source(s, experiment.id, j, k)
        payload = {key: value for key, value in job.payload.items() if key != "from_round"}
        if j != k:
            payload["from_round"] = j
        job.payload = payload
        repo.add_audit(session=s, actor_id=who.rater_id, actor_name=who.name, action="round.train_from",
                       target=f"experiment {experiment.id}",
                       detail={"round": k, "from_round": j, "job_id": job.id, "closed_round": closed_now})
        job_id = job.id
    closed = f"Round {k} closed; t" if closed_now else "T"
    return f"{closed}raining job {job_id} will train round {k + 1} from {_source(j)}."
