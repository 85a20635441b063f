"""Repository functions for rater quality (issue 14, item 2): the ratings as (round, image, rater, score) rows,
repeated items, gold items, and the experiment's standardise-scores setting.

Same conventions as ``db.repo``: keyword-only, the caller owns the transaction, bad input raises a
``db.errors`` exception with one sentence before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from db import repo
from db.errors import Conflict, InvalidInput
from db.models import IMAGE_KINDS, SCORE_MAX, SCORE_MIN, GoldScore, Image, Rating, RepeatRating, Round


def _score(score: object) -> int:
    if isinstance(score, bool) or not isinstance(score, int) or not SCORE_MIN <= score <= SCORE_MAX:
        raise InvalidInput(f"a score must be a whole number from {SCORE_MIN} to {SCORE_MAX}, got {score!r}")
    return score


@dataclass(frozen=True)
class RatingRow:
    round_index: int
    image_id: int
    rater_id: int
    score: int


def rating_rows(*, session: Session, experiment_id: int, up_to_rating_id: int | None = None,
                kind: str | None = "query") -> list[RatingRow]:
    """Every rating of the experiment's images (``kind``: query, eval or None for both), by image and rater.

    Only ratings with ``id <= up_to_rating_id`` count (all when None): the watermark of a training job."""
    repo.get_experiment(session=session, experiment_id=experiment_id)
    stmt = (
        select(Round.index, Rating.image_id, Rating.rater_id, Rating.score)
        .join(Image, Image.id == Rating.image_id)
        .join(Round, Round.id == Image.round_id)
        .where(Round.experiment_id == experiment_id)
        .order_by(Rating.image_id, Rating.rater_id)
    )
    if up_to_rating_id is not None:
        if isinstance(up_to_rating_id, bool) or not isinstance(up_to_rating_id, int) or up_to_rating_id < 0:
            raise InvalidInput(f"up_to_rating_id must be a whole number of at least 0, got {up_to_rating_id!r}")
        stmt = stmt.where(Rating.id <= up_to_rating_id)
    if kind is not None:
        if kind not in IMAGE_KINDS:
            raise InvalidInput(f"unknown image kind {kind!r}; choose from {list(IMAGE_KINDS)}")
        stmt = stmt.where(Image.kind == kind)
    return [RatingRow(*row) for row in session.execute(stmt).tuples()]


def repeat_rows(*, session: Session, experiment_id: int) -> list[tuple[int, int, int]]:
    """(rater id, first score, repeat score) for every repeated item of the experiment."""
    repo.get_experiment(session=session, experiment_id=experiment_id)
    stmt = (
        select(RepeatRating.rater_id, Rating.score, RepeatRating.score)
        .join(Rating, (Rating.image_id == RepeatRating.image_id) & (Rating.rater_id == RepeatRating.rater_id))
        .join(Image, Image.id == RepeatRating.image_id)
        .join(Round, Round.id == Image.round_id)
        .where(Round.experiment_id == experiment_id)
        .order_by(RepeatRating.id)
    )
    return [tuple(row) for row in session.execute(stmt).tuples()]


def add_repeat_rating(*, session: Session, image_id: int, rater_id: int, score: int) -> RepeatRating:
    """Record the rater's score for an image shown to them again; they must have rated it before (once per image)."""
    score = _score(score)
    repo.get_image(session=session, image_id=image_id)
    if repo.find_rating(session=session, image_id=image_id, rater_id=rater_id) is None:
        raise Conflict(f"rater {rater_id} has not rated image {image_id} yet, so a repeat of it cannot be recorded")
    row = session.scalar(select(RepeatRating).where(RepeatRating.image_id == image_id, RepeatRating.rater_id == rater_id))
    if row is not None:
        raise Conflict(f"rater {rater_id} already rated image {image_id} a second time")
    row = RepeatRating(image_id=image_id, rater_id=rater_id, score=score)
    session.add(row)
    session.flush()
    return row


def gold_scores(*, session: Session, experiment_id: int) -> dict[int, int]:
    """image id -> known score, for the experiment's gold items."""
    repo.get_experiment(session=session, experiment_id=experiment_id)
    stmt = (
        select(GoldScore.image_id, GoldScore.score)
        .join(Image, Image.id == GoldScore.image_id)
        .join(Round, Round.id == Image.round_id)
        .where(Round.experiment_id == experiment_id)
    )
    return dict(session.execute(stmt).tuples().all())


def set_gold_score(*, session: Session, image_id: int, score: int | None, created_by: int | None = None) -> GoldScore | None:
    """Make an image a gold item with a known score, change its score, or (``score=None``) make it ordinary again."""
    if isinstance(image_id, bool) or not isinstance(image_id, int):
        raise InvalidInput(f"an image id must be a whole number, got {image_id!r}")
    repo.get_image(session=session, image_id=image_id)
    if score is None:
        session.execute(delete(GoldScore).where(GoldScore.image_id == image_id))
        return None
    score = _score(score)
    row = session.scalar(select(GoldScore).where(GoldScore.image_id == image_id))
    if row is None:
        row = GoldScore(image_id=image_id, score=score, created_by=created_by)
        session.add(row)
    else:
        row.score, row.created_by = score, created_by
    session.flush()
    return row


def set_standardize_scores(*, session: Session, experiment_id: int, enabled: bool) -> None:
    """Turn on or off z-scoring each rater's scores before the experiment's next reward fits."""
    if not isinstance(enabled, bool):
        raise InvalidInput(f"standardize must be true or false, got {enabled!r}")
    repo.get_experiment(session=session, experiment_id=experiment_id).standardize_scores = enabled
    session.flush()
