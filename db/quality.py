"""Repository functions for rater quality (issue 14, item 2): the ratings as (round, image, rater, score) rows,
repeated items (the offers that hand an image out again, and the scores given to it), gold items, and the
experiment's standardise-scores setting.

Same conventions as ``db.repo``: keyword-only, the caller owns the transaction, bad input raises a
``db.errors`` exception with one sentence before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from db import repo
from db.checks import MAX_ID, check_now
from db.errors import Conflict, InvalidInput
from db.models import IMAGE_KINDS, SCORE_MAX, SCORE_MIN, GoldScore, Image, Rater, Rating, RepeatOffer, RepeatRating, Round, Skip


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
        stmt = stmt.where(Rating.id <= min(up_to_rating_id, MAX_ID))  # clamped: see db.models.RowId
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


# ---------------------------------------------------------------------------------------------
# repeat offers: an image the rater rated, handed to them again (the experiment option repeat_share, app.repeats)
# ---------------------------------------------------------------------------------------------


def find_repeat_offer(*, session: Session, image_id: int, rater_id: int) -> RepeatOffer | None:
    """The offer that handed the image to the rater a second time, or None."""
    return session.scalar(select(RepeatOffer).where(RepeatOffer.image_id == image_id, RepeatOffer.rater_id == rater_id))


def repeat_offers_of(*, session: Session, rater_id: int, image_ids: list[int]) -> dict[int, RepeatOffer]:
    """image id -> the offer that handed it to the rater a second time, for those of ``image_ids`` that have one."""
    if not image_ids:
        return {}
    stmt = select(RepeatOffer).where(RepeatOffer.rater_id == rater_id, RepeatOffer.image_id.in_(list(image_ids)))
    return {o.image_id: o for o in session.scalars(stmt)}


def find_repeat_rating(*, session: Session, image_id: int, rater_id: int) -> RepeatRating | None:
    """The rater's second score for the image, or None."""
    return session.scalar(select(RepeatRating).where(RepeatRating.image_id == image_id, RepeatRating.rater_id == rater_id))


def add_repeat_offer(*, session: Session, image_id: int, rater_id: int, now: datetime | None = None) -> RepeatOffer:
    """Record that the image is handed to the rater again; they must have rated it, and it happens once per image.
    ``now``: when it is handed out (the batch's clock, which its leases' first hand-outs get too), the time by default."""
    repo.get_image(session=session, image_id=image_id)
    if repo.find_rating(session=session, image_id=image_id, rater_id=rater_id) is None:
        raise Conflict(f"rater {rater_id} has not rated image {image_id} yet, so it cannot be shown to them again")
    if find_repeat_offer(session=session, image_id=image_id, rater_id=rater_id) is not None:
        raise Conflict(f"image {image_id} was already shown to rater {rater_id} a second time")
    row = RepeatOffer(image_id=image_id, rater_id=rater_id, created_at=check_now(now, session))
    session.add(row)
    session.flush()
    return row


def _in_round(round_id: int):
    return select(Image.id).where(Image.round_id == round_id, Image.kind == "query")


def repeat_offers_in_round(*, session: Session, round_id: int, rater_id: int) -> list[RepeatOffer]:
    """The rater's repeat offers on the round's query images, oldest first."""
    stmt = (select(RepeatOffer).where(RepeatOffer.rater_id == rater_id, RepeatOffer.image_id.in_(_in_round(round_id)))
            .order_by(RepeatOffer.id))
    return list(session.scalars(stmt))


def pending_repeats(*, session: Session, round_id: int, rater_id: int) -> list[int]:
    """Image ids of the round handed to the rater again and not answered yet (neither scored nor skipped), while
    their first rating stands; oldest offer first."""
    first = select(Rating.id).where(Rating.image_id == RepeatOffer.image_id, Rating.rater_id == RepeatOffer.rater_id)
    answered = select(RepeatRating.id).where(RepeatRating.image_id == RepeatOffer.image_id,
                                             RepeatRating.rater_id == RepeatOffer.rater_id)
    stmt = (
        select(RepeatOffer.image_id)
        .where(RepeatOffer.rater_id == rater_id, RepeatOffer.image_id.in_(_in_round(round_id)),
               RepeatOffer.skipped.is_(False), first.exists(), ~answered.exists())
        .order_by(RepeatOffer.id)
    )
    return list(session.scalars(stmt))


def repeat_counts(*, session: Session, round_id: int, rater_id: int) -> tuple[int, int]:
    """(scored, pending) for the rater's repeats of the round's query images, in one query: how many they gave a second
    score, and how many are handed to them again and not answered yet (as ``pending_repeats``). The rating page's
    personal counters add them to the ordinary ratings and images, so a repeat moves them as any image does."""
    in_round = _in_round(round_id)
    first = select(Rating.id).where(Rating.image_id == RepeatOffer.image_id, Rating.rater_id == RepeatOffer.rater_id)
    answered = select(RepeatRating.id).where(RepeatRating.image_id == RepeatOffer.image_id,
                                             RepeatRating.rater_id == RepeatOffer.rater_id)
    scored = (select(func.count(RepeatRating.id))
              .where(RepeatRating.rater_id == rater_id, RepeatRating.image_id.in_(in_round)).scalar_subquery())
    pending = (select(func.count(RepeatOffer.id))
               .where(RepeatOffer.rater_id == rater_id, RepeatOffer.image_id.in_(in_round),
                      RepeatOffer.skipped.is_(False), first.exists(), ~answered.exists()).scalar_subquery())
    n_scored, n_pending = session.execute(select(scored, pending)).one()
    return int(n_scored or 0), int(n_pending or 0)


def skipped_repeats(*, session: Session, round_id: int, rater_id: int) -> dict[int, tuple[int, int]]:
    """The rater's repeats of the round's query images that they skipped (their first rating standing), each as
    image id -> (ratings of it by the other raters, the other accounts that can still rate and skipped it without
    rating it after): what ``repo.wanted_after_skips`` would see of the image were the rater's skip an ordinary one."""
    first = select(Rating.id).where(Rating.image_id == RepeatOffer.image_id, Rating.rater_id == RepeatOffer.rater_id)
    images = list(session.scalars(
        select(RepeatOffer.image_id).where(RepeatOffer.rater_id == rater_id, RepeatOffer.image_id.in_(_in_round(round_id)),
                                           RepeatOffer.skipped.is_(True), first.exists())))
    if not images:
        return {}
    rated = dict(session.execute(
        select(Rating.image_id, func.count(Rating.id))
        .where(Rating.image_id.in_(images), Rating.rater_id != rater_id).group_by(Rating.image_id)).all())
    rated_after = select(Rating.id).where(Rating.image_id == Skip.image_id, Rating.rater_id == Skip.rater_id)
    skipped = dict(session.execute(
        select(Skip.image_id, func.count(Skip.id)).join(Rater, Rater.id == Skip.rater_id)
        .where(Skip.image_id.in_(images), Skip.rater_id != rater_id,
               repo.can_still_rate(repo.get_round(session=session, round_id=round_id).experiment_id),
               ~rated_after.exists())
        .group_by(Skip.image_id)).all())
    return {i: (int(rated.get(i, 0)), int(skipped.get(i, 0))) for i in images}


def rated_in_round(*, session: Session, round_id: int, rater_id: int) -> list[Rating]:
    """The rater's ratings of the round's query images, oldest first."""
    stmt = (select(Rating).where(Rating.rater_id == rater_id, Rating.image_id.in_(_in_round(round_id)))
            .order_by(Rating.created_at, Rating.id))
    return list(session.scalars(stmt))


def set_repeat_score(*, session: Session, image_id: int, rater_id: int, score: int) -> int | None:
    """The rater scores an image handed to them again (a skip of it is taken back); scoring it once more changes that
    second score. Their first rating is never touched. Returns the second score it replaced (None for a new one)."""
    score = _score(score)
    offer = find_repeat_offer(session=session, image_id=image_id, rater_id=rater_id)
    if offer is None:
        raise Conflict(f"image {image_id} was not shown to rater {rater_id} a second time")
    offer.skipped = False
    row = find_repeat_rating(session=session, image_id=image_id, rater_id=rater_id)
    if row is None:
        add_repeat_rating(session=session, image_id=image_id, rater_id=rater_id, score=score)
        return None
    previous, row.score = row.score, score
    session.flush()
    return previous


def skip_repeat(*, session: Session, image_id: int, rater_id: int) -> None:
    """The rater skips an image handed to them again: it is not handed to them again, and no second score is kept.

    Refused, as an ordinary skip (``repo.add_skip``), unless the image's round is open for labeling. The caller
    holds the image's lock (``repo.lock_image_for_rating``, as a rating does), so an undo cannot drop the offer
    meanwhile; should it be gone all the same, the refusal is a sentence, not a stale-row error."""
    image = repo.get_image(session=session, image_id=image_id)
    round_ = repo.get_round(session=session, round_id=image.round_id)
    if round_.status != "labeling":  # the sentence of an ordinary skip's refusal (repo.add_skip)
        raise Conflict(
            f"round {round_.index} is not open for labeling (it is {round_.status!r}); image {image_id} cannot be changed"
        )
    if find_repeat_rating(session=session, image_id=image_id, rater_id=rater_id) is not None:
        raise Conflict("you have already scored this image; score it again to change that score")
    skipped = session.execute(
        update(RepeatOffer).where(RepeatOffer.image_id == image_id, RepeatOffer.rater_id == rater_id)
        .values(skipped=True)
    ).rowcount
    if not skipped:
        raise Conflict(f"image {image_id} is no longer shown to you a second time; nothing was skipped")


def drop_repeat(*, session: Session, image_id: int, rater_id: int) -> int:
    """Forget the image's repeat for the rater (offer and second score): their first rating was undone, so the
    repeat no longer has anything to agree with. Returns how many rows went."""
    n = session.execute(delete(RepeatRating).where(RepeatRating.image_id == image_id,
                                                   RepeatRating.rater_id == rater_id)).rowcount
    return n + session.execute(delete(RepeatOffer).where(RepeatOffer.image_id == image_id,
                                                         RepeatOffer.rater_id == rater_id)).rowcount


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
    repo.check_author(session, "created_by", created_by)
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
