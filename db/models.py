"""The schema, as typed SQLAlchemy 2.0 models.

The tables are created only by the Alembic migrations in ``migrations/``; ``Base.metadata`` is
what those migrations are checked against (tests fail on drift). Conventions:

- Times are timezone-aware UTC ``datetime`` objects (``UTCDateTime``), on SQLite and PostgreSQL alike.
- JSON values are stored as text (``JSONText``) so both databases store the same bytes.
- Small enumerations are strings with a CHECK constraint (easy to extend in a batch migration).
- Constraint names come from ``NAMING_CONVENTION`` so migrations can refer to them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

EXPERIMENT_STATUSES = ("active", "paused", "finished")
ROUND_STATUSES = ("generating", "labeling", "training", "done", "failed")
IMAGE_KINDS = ("query", "eval")
RATER_ROLES = ("admin", "rater")
JOB_KINDS = ("generate", "train", "eval")
JOB_STATUSES = ("queued", "running", "done", "failed")
UNDO_ACTIONS = ("rate", "skip", "repeat", "repeat_skip")
EXPORT_FORMATS = ("diffusers", "kohya", "merged", "ratings")
PROCESS_KINDS = ("server", "worker", "supervisor")  # supervisor: of `worker --processes N` (0017)
HOST_MAX = 255  # a host name (a DNS name is at most 253 characters)
SCORE_MIN, SCORE_MAX = 1, 10
NAME_MAX = 200
METHOD_MAX = 64
# a prompt's UTF-8 bytes: images(round_id, kind, prompt, seed) is a unique btree index on PostgreSQL, whose rows cannot
# exceed 2,704 bytes after compression, so a 950-character CJK prompt passed and every insert of its images failed
# (found by the fifth review). CLIP reads only a prompt's first 77 tokens, so 1,000 bytes lose nothing it sees.
# seiko_core.config.PROMPT_MAX_BYTES is the same number (db does not import seiko_core).
PROMPT_MAX_BYTES = 1000
# an image's prompt is a sampling prompt, maybe after the config's quality_template and a space (each at most
# PROMPT_MAX_BYTES): 2,001 bytes of incompressible text and the other key columns fit under PostgreSQL's 2,704
IMAGE_PROMPT_MAX_BYTES = 2 * PROMPT_MAX_BYTES + 1


def utcnow() -> datetime:
    """The current time as an aware UTC datetime (the only kind stored)."""
    return datetime.now(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime. PostgreSQL: timestamptz. SQLite: naive UTC text, made aware on load."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given; store timezone-aware UTC datetimes (db.models.utcnow())")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JSONText(TypeDecorator[Any]):
    """A JSON value stored as text (sorted keys), identical on every database.

    Mutating a loaded dict in place is not tracked: assign a new value instead.
    """

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return json.dumps(value, sort_keys=True, allow_nan=False)

    def process_result_value(self, value: str | None, dialect: Dialect) -> Any:
        return None if value is None else json.loads(value)


INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


class RowId(TypeDecorator[int]):
    """A row's id or a reference to one (an INTEGER column). An id a 32-bit column cannot hold is sent as -1, which no
    row has: looking it up finds nothing, as on SQLite, where PostgreSQL raised DataError ("integer out of range")
    from any query that named it (found by review), and SQLite's driver an OverflowError past 2**63. Safe for equality
    and ``in_``; a range (``id <= watermark``) must clamp its bound to ``db.checks.MAX_ID`` first, or -1 turns it
    around."""

    impl = Integer
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and not INT32_MIN <= value <= INT32_MAX:
            return -1
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    # every ``Mapped[int]`` without a type of its own is a primary key or a foreign key (the rest name Integer or
    # BigInteger)
    type_annotation_map = {int: RowId}


class Experiment(Base):
    """One fine-tuning run: a base model, a method and its config, and the rounds of labeling."""

    __tablename__ = "experiments"
    __table_args__ = (
        CheckConstraint(_in("status", EXPERIMENT_STATUSES), name="status"),
        CheckConstraint("overlap >= 1", name="overlap_positive"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX), unique=True)
    model_spec: Mapped[str] = mapped_column(Text)  # base model path or id
    method: Mapped[str] = mapped_column(String(METHOD_MAX))  # e.g. "seiko-ucb", "greedy"
    config: Mapped[dict[str, Any]] = mapped_column(JSONText)  # the SEIKO config dict
    budgets: Mapped[list[int]] = mapped_column(JSONText)  # labels wanted per round
    prompts: Mapped[list[str]] = mapped_column(JSONText)
    status: Mapped[str] = mapped_column(String(16), default="active")
    overlap: Mapped[int] = mapped_column(Integer, default=1)  # ratings wanted per image
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # raters see the dashboard (its plots can bias their ratings) only when an admin allows it
    raters_see_dashboard: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # archived: finished and hidden from the selector
    # rater quality (migration 0004): z-score each rater's scores before the reward fit (app.quality.standardize)
    standardize_scores: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # migration 0015: False, every rater may rate it (the default, and every experiment made before 0015); True, only
    # the accounts listed in experiment_raters (and admins) may
    raters_limited: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    rounds: Mapped[list[Round]] = relationship(back_populates="experiment", order_by="Round.index")


class Round(Base):
    """Round k: images sampled from adapter k (round 0: the base model), then rated, then trained on."""

    __tablename__ = "rounds"
    __table_args__ = (
        UniqueConstraint("experiment_id", "index"),
        CheckConstraint(_in("status", ROUND_STATUSES), name="status"),
        CheckConstraint('"index" >= 0', name="index_nonnegative"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="generating")
    adapter_path: Mapped[str | None] = mapped_column(Text)  # None for round 0 (the base model)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONText, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # migration 0005: the round whose adapter this round was trained from, when an admin rolled back to it;
    # NULL is the normal chain (round index - 1). Both branches stay in the history.
    parent_round_id: Mapped[int | None] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    # migration 0010: the labels the round wanted when it left labeling ({"query": .., "eval": .., "preference": ..}:
    # ratings per image kind, votes on its preference pairs), so its history does not change with the accounts enabled
    # later; NULL while open (or never opened), and for rounds closed before 0010 (those are counted live)
    wanted_at_close: Mapped[dict[str, int] | None] = mapped_column(JSONText)

    experiment: Mapped[Experiment] = relationship(back_populates="rounds")


class Image(Base):
    """A generated image: the file lives under the data dir, the row holds its hash and embedding."""

    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("round_id", "kind", "prompt", "seed"),
        CheckConstraint(_in("kind", IMAGE_KINDS), name="kind"),
        CheckConstraint("embedding_dim >= 1", name="embedding_dim_positive"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    prompt: Mapped[str] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(BigInteger)
    file_path: Mapped[str] = mapped_column(Text)  # relative to the data dir
    sha256: Mapped[str] = mapped_column(String(64))  # of the file's bytes
    embedding: Mapped[bytes] = mapped_column(LargeBinary)  # float32, little-endian, embedding_dim values
    embedding_dim: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16), default="query")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Rater(Base):
    """A person who rates images; admins also run experiments."""

    __tablename__ = "raters"
    __table_args__ = (CheckConstraint(_in("role", RATER_ROLES), name="role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="rater")
    password_hash: Mapped[str] = mapped_column(Text)  # hashed by the app; never a plain password
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # set: the account cannot sign in
    # when the password last changed or the account was last disabled or enabled (None: never since it was made);
    # part of app.auth.credentials_stamp, so a sign-in throttle exemption ends with any of them, across processes
    credentials_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # how many times the role changed (migration 0018): read with the role, so the page keeps the role of the answer
    # read newest (app.web_guard: ui_assets.ROLE_VERSION_HEADER), not of the request it sent last
    role_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Rating(Base):
    """One rater's score for one image. Re-rating edits this row (unique per image and rater)."""

    __tablename__ = "ratings"
    __table_args__ = (
        UniqueConstraint("image_id", "rater_id"),
        CheckConstraint(f"score BETWEEN {SCORE_MIN} AND {SCORE_MAX}", name="score_range"),
        Index(None, "rater_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"))
    score: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Skip(Base):
    """A rater chose not to rate an image; it is not offered to them again."""

    __tablename__ = "skips"
    __table_args__ = (UniqueConstraint("image_id", "rater_id"), Index(None, "rater_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ImageLease(Base):
    """An image handed out to a rater, on their page until ``expires_at`` (ended on rating, skipping or a new batch).

    A live lease counts as taken towards the experiment's overlap for every other rater while it is inside its
    reserving window, ``repo.RESERVE_S`` from ``created_at`` (its grant). Rows are ended (``expires_at`` set to the
    time), not deleted, until the round closes, so taking the image again keeps the grant (``repo.lease_images``)."""

    __tablename__ = "image_leases"
    __table_args__ = (UniqueConstraint("image_id", "rater_id"), Index(None, "rater_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # when the image was first handed to the rater: set with the row and never changed, where ``created_at`` (the
    # reserving window's start) starts again after a lease ran out ``RESERVE_S`` before (migration 0013)
    first_handed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class UndoStep(Base):
    """One rater action that undo can take back: a rating (with the score it replaced, None if new) or a skip."""

    __tablename__ = "undo_steps"
    __table_args__ = (
        CheckConstraint(_in("action", UNDO_ACTIONS), name="action"),
        Index(None, "rater_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    action: Mapped[str] = mapped_column(String(16))
    previous_score: Mapped[int | None] = mapped_column(Integer)
    # migration 0014: a new score that took back a skip of the image: when that skip was made (a repeat's skip keeps
    # no time: the score's), so that undoing the score puts the skip back even once the skip's own step has gone
    skipped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Export(Base):
    """An export an admin built in the browser: one downloadable file under ``<data_dir>/exports/``."""

    __tablename__ = "exports"
    __table_args__ = (CheckConstraint(_in("format", EXPORT_FORMATS), name="format"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    round_index: Mapped[int | None] = mapped_column(Integer)  # None for a ratings export
    format: Mapped[str] = mapped_column(String(16))
    file_path: Mapped[str] = mapped_column(Text)  # relative to the data dir
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("raters.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Job(Base):
    """Work for the background worker, claimed with a lease that heartbeats extend."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_in("kind", JOB_KINDS), name="kind"),
        CheckConstraint(_in("status", JOB_STATUSES), name="status"),
        CheckConstraint("max_attempts >= 1", name="max_attempts_positive"),
        Index("ix_jobs_status_id", "status", "id"),  # claim_job scans queued/running jobs by id
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    experiment_id: Mapped[int | None] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    round_id: Mapped[int | None] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    payload: Mapped[dict[str, Any]] = mapped_column(JSONText, default=dict)
    lease_owner: Mapped[str | None] = mapped_column(String(NAME_MAX))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    # every claim adds one and nothing takes one back (an admin's retry resets ``attempts``, a yield lowers it): the
    # number a worker's writes are checked against (db.jobs), so a claim that ended cannot write under a later one
    # by a worker with the same id (migration 0012)
    claims: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSONText)  # {"phase", "step", "total", "eta_s"}
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONText)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class LiveProcess(Base):
    """A running server, worker or worker supervisor (the parent process of `python -m app worker --processes N`,
    which starts and restarts its ranks: migration 0017) (migration 0016; ``db.presence``): registered at its start,
    its ``heartbeat_at``
    refreshed every ``db.presence.HEARTBEAT_S`` seconds, removed at a clean exit. A row whose heartbeat is older than
    ``db.presence.STALE_AFTER_S`` is a process that died (kill -9, a lost machine) and counts for nothing. `db
    downgrade` refuses while a fresh one is there: a server, or a worker between jobs, left no mark before."""

    __tablename__ = "live_processes"
    __table_args__ = (CheckConstraint(_in("kind", PROCESS_KINDS), name="kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(String(HOST_MAX))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Checkpoint(Base):
    """An adapter directory written for a round, identified by the sha256 of its manifest."""

    __tablename__ = "checkpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)  # relative to the data dir
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# ---------------------------------------------------------------------------------------------
# sign-in sessions and the audit log (migration 0002)
# ---------------------------------------------------------------------------------------------

SESSION_END_REASONS = ("logout", "password", "disabled", "admin")


class UserSession(Base):
    """A signed-in browser or API client. The cookie holds a random token; only its sha256 is stored.

    Valid while not ended, before ``expires_at`` (the absolute limit) and while ``last_seen_at`` is recent
    enough (the idle limit, a setting checked by the app)."""

    __tablename__ = "sessions"
    __table_args__ = (
        CheckConstraint(_in("end_reason", SESSION_END_REASONS), name="end_reason"),
        Index(None, "rater_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    client: Mapped[str | None] = mapped_column(String(64))  # the address it signed in from
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    end_reason: Mapped[str | None] = mapped_column(String(16))


class AuditEntry(Base):
    """One admin action: who (kept as a name too, so the entry outlives the account), what, on what, when."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("raters.id", ondelete="SET NULL"))
    actor_name: Mapped[str] = mapped_column(String(NAME_MAX))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONText)


# ---------------------------------------------------------------------------------------------
# rater quality: gold items and repeated items (migration 0004)
# ---------------------------------------------------------------------------------------------


class GoldScore(Base):
    """An image with a known answer (set by an admin): raters' scores on it measure their error (app.quality)."""

    __tablename__ = "gold_scores"
    __table_args__ = (CheckConstraint(f"score BETWEEN {SCORE_MIN} AND {SCORE_MAX}", name="score_range"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), unique=True)
    score: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("raters.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RepeatRating(Base):
    """A rater's score for an image they rated before, shown to them again: their self-consistency (app.quality).

    Kept apart from ``ratings`` so a repeat never edits the first rating nor counts twice in training."""

    __tablename__ = "repeat_ratings"
    __table_args__ = (
        UniqueConstraint("image_id", "rater_id"),
        CheckConstraint(f"score BETWEEN {SCORE_MIN} AND {SCORE_MAX}", name="score_range"),
        Index(None, "rater_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"))
    score: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RepeatOffer(Base):
    """An image the rater rated, handed to them again as a repeat (the experiment option ``repeat_share``,
    app.repeats; migration 0006). The server's record of which handed-out image is a repeat: a score the rater then
    gives it goes to ``repeat_ratings``, never to their first rating. One per image and rater, so an image is repeated
    to a rater at most once; ``skipped`` when they skipped it on the page (it is then not handed out again)."""

    __tablename__ = "repeat_offers"
    __table_args__ = (UniqueConstraint("image_id", "rater_id"), Index(None, "rater_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"))
    skipped: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# ---------------------------------------------------------------------------------------------
# comparisons: blind A/B pairs between rounds and pairwise preferences (migration 0005, issue 14 items 1 and 3)
# ---------------------------------------------------------------------------------------------

COMPARISON_KINDS = ("ab", "preference")
VOTE_CHOICES = ("a", "b", "tie")


class ComparisonPair(Base):
    """Two images shown side by side: ``image_a`` on the left, ``image_b`` on the right (randomised at creation).

    ``round_id`` is the round in which the pair is asked (for an A/B pair: the newer round's)."""

    __tablename__ = "comparison_pairs"
    __table_args__ = (
        CheckConstraint(_in("kind", COMPARISON_KINDS), name="kind"),
        CheckConstraint("image_a_id <> image_b_id", name="distinct_images"),
        Index(None, "experiment_id", "kind", "round_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    image_a_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    image_b_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PairSkip(Base):
    """A rater set a comparison pair aside ("can't judge", an image that does not load): it is not offered to them
    again and counts nowhere (no vote, no label, nothing in training)."""

    __tablename__ = "pair_skips"
    __table_args__ = (UniqueConstraint("pair_id", "rater_id"), Index(None, "rater_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("comparison_pairs.id", ondelete="CASCADE"))
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ExperimentRater(Base):
    """An account that may rate an experiment whose raters are limited (``Experiment.raters_limited``; migration 0015).
    Admins may rate every experiment whether listed or not (``app.members``)."""

    __tablename__ = "experiment_raters"
    __table_args__ = (Index(None, "rater_id"),)

    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"), primary_key=True)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PairShow(Base):
    """A comparison pair was put on a rater's screen (migration 0011). A blind A/B pair shown and not yet answered
    is offered to that rater again, first, until they vote on it or skip it, and its images count as met by them
    (``db.comparisons``): otherwise a pair added while it was on screen could be offered next with one of its images."""

    __tablename__ = "pair_shows"
    __table_args__ = (UniqueConstraint("pair_id", "rater_id"), Index(None, "rater_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("comparison_pairs.id", ondelete="CASCADE"))
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ComparisonVote(Base):
    """One rater's choice on one pair ('a' left, 'b' right, or 'tie'). Voting again edits this row."""

    __tablename__ = "comparison_votes"
    __table_args__ = (
        UniqueConstraint("pair_id", "rater_id"),
        CheckConstraint(_in("choice", VOTE_CHOICES), name="choice"),
        Index(None, "rater_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("comparison_pairs.id", ondelete="CASCADE"))
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"))
    choice: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
