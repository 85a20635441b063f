"""Repeated items (issue 14, item 2): now and then a rater is handed, blind, an image of the open round that they
rated before; the score they give it the second time measures their self-consistency (``app.quality.self_consistency``,
the Admin tab's rater-quality table).

The experiment option ``repeat_share`` (``app.experiment_options``; 0 to 0.5, default 0: off) sets about which share of
the images handed to a rater are repeats. ``app.ui_rate.draw_batch`` (the page's batches and the API's ``next_batch``)
asks ``plan`` for them (new ones only when the option is above 0):

- only once the rater has rated ``MIN_RATED`` query images of the round;
- a repeat is one of the round's query images this rater rated before their last ``size`` ratings of the round
  (``size``: the batch being drawn; a rating counts from when it was given or last edited). So none of the images
  the rater just rated comes back: a card rated seconds ago, still on the page of a second tab or of a reloaded one,
  does not turn open again to be scored a second time with the first score in sight. An image is repeated to a
  rater at most once: the ``repeat_offers`` row written when it is handed out is the server's record (the client
  never says what is a repeat). A score the rater then gives that image goes to ``repeat_ratings``
  (``db.quality.set_repeat_score``); their first rating is left as it was;
- how many: repeats handed out so far <= share / (1 - share) x the rater's ratings of the round, i.e. at most
  ``share`` of the images handed to them (ordinary ones rated plus repeats); at most ``max(1, floor(share x batch
  size))`` in one batch; no more new ones than the ordinary ratings the rater gave since their last repeat, so
  repeats come spread out, never in a run; and no more new ones than the ordinary images new to the rater that the
  batch holds beside them (not their unanswered cards, which come back first, their lease live or run out): so none
  once those have run out and none in a batch of one (a last batch of repeats only, or a batch whose only new cards were repeats, told the
  rater what they were);
- which images: drawn with a generator seeded by (rater, round, repeats so far). Where in the batch (``mix``,
  ``left_open``): a batch is the rater's unanswered cards first, then the cards new to them; the new ones, ordinary
  images and new repeats alike, in one per-rater drawn order (``card_key``, a hash of rater, round and image), so a
  repeat lands anywhere among them and nowhere else. A repeat handed out and not answered yet comes back in the next
  batch among the rater's other unanswered cards (as many as the batch holds), until it is scored or skipped on the
  page, also once the share is set to 0 mid-round: then no new ones are handed out, and the pending ones count as
  before (below). The unanswered cards come in the order they were first handed out (an ordinary card's lease's
  first hand-out, a repeat's offer, both at the batch's clock), those of one batch in ``card_key`` order, the order
  they were shown in: so they come back in the order the rater first saw them, whatever they are. Repeats used to be
  put at drawn places anywhere in the batch while the unanswered ordinary cards came first: a new card ahead of a
  card left open meant that one of the two was a repeat (found by review). An ordinary card was ordered by its
  lease's grant, which starts again when the lease ran out 30 minutes (``repo.RESERVE_S``) before: a card left open
  that long came back behind the repeats of its batch (found by the third review; migration 0013).

Nothing on the page or in the API says that an image is a repeat, and the page's cards show no image id or seed.
The round's counters (labels, ratings, images rated) move with ordinary ratings only (a repeat is no label); the
rater's own ("You: N rated this round, M left for you", the API's ``you_rated`` and ``you_left``) count repeats as
images: a scored one as rated, a pending one as left. So every card scored moves them by one, whatever it is, and
the open cards never outnumber what is left (they used to count ordinary ratings only, which told a repeat apart,
before or after scoring it: a review's finding). "Left" rises when a batch brings new repeats: it says how many
of the batch's new cards are repeats, not which, as they come among at least as many new ordinary images. An
unanswered card comes back alone once nothing else is left, a repeat as an ordinary one does. A pending repeat stays
counted as left when the share is set to 0 mid-round (it is still handed back): dropped from the counts, scoring
it moved them unlike an ordinary card (found by review). Only while the experiment asks for comparisons only, when
nothing is handed out for 1-10 rating, is a pending repeat not counted.
The rating page shows the round's counters to a rater with that rater's own repeats counted in the same way
(``app.ui_rate.own_repeats``): "X of Y ratings" counts a scored repeat as a rating given and a pending or scored
one as a rating wanted, and a skipped one lowers Y as a skip of an ordinary image in its place would. So scoring,
skipping or undoing a card moves the whole line alike, whatever the card is (the round's true count stood still
for a repeat: alone on a round, the rater knew a card for a repeat right after scoring it; found by review). Counts
that a repeat cannot move alike are left out while repeats are on or the rater has repeats in the round, pending,
scored or skipped (with overlap above 1: the image count and "images rated at least once"; so the format does not
change when a repeat is scored after the share was set to 0). Showing the true count only as of each new batch would not do: a batch answered
but for one card (left open, skipped) and reloaded would tell by the count whether that card is a repeat. Other
raters' ratings move the line as they come; only the viewer's own repeats are counted in, and only on their page:
the API's ``progress``, the Admin tab and the dashboard show the round's true counts.
The API's items carry the image id a rating is sent with, so a script could tell a repeat by its id: the measure is
meant for people rating on the page. A repeat counts nowhere an ordinary rating does (the rating page's line
above counts the viewer's own in for that viewer only):
not in the round's progress or budget, not for auto-close, not in the reward fit (the ``ratings`` table is untouched).
Undo takes back a repeat's score or skip as it does any other (migration 0009: it used to pass over them, so 'u'
after scoring a repeat took back the rating before it): the image is pending as a repeat again, or gets its earlier
second score back. Undoing the first rating of a repeated image drops its repeat (undoing an edit of it, which
leaves a first rating, keeps it).
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from app import experiment_options
from db import quality as db_quality
from db import repo
from db.models import Round

MIN_RATED = 3  # ratings of the round a rater gives before the first repeat


def share_of(session: Session, round_: Round) -> float:
    """The experiment's ``repeat_share``; 0 when it is off or the experiment asks for comparisons only."""
    experiment = repo.get_experiment(session=session, experiment_id=round_.experiment_id)
    raw = (experiment.config if isinstance(experiment.config, dict) else {}).get(experiment_options.APP_KEY)
    if not isinstance(raw, dict) or not raw.get("repeat_share"):
        return 0.0  # off (the default): nothing more is read or checked, as before the option existed
    options = experiment_options.of(experiment)
    return 0.0 if options.feedback == "pairs" else float(options.repeat_share)


def _rng(rater_id: int, round_id: int, key: object) -> random.Random:
    digest = hashlib.sha256(f"repeat:{rater_id}:{round_id}:{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


@dataclass(frozen=True)
class Planned:
    """The repeats of a batch (``plan``): ``pending``, handed out before and not answered yet (all of them, oldest offer
    first: they go among the rater's unanswered cards, ``left_open``), and ``new``, offered now (``mix``)."""

    pending: list[int] = field(default_factory=list)
    new: list[int] = field(default_factory=list)


def plan(session: Session, round_: Round, rater_id: int, size: int, share: float, *,
         now: datetime | None = None) -> Planned:
    """The repeats of a batch of ``size`` for the rater: the unanswered ones, and new ones, whose offers are recorded
    here (in the caller's write transaction) with ``now`` as the time they are handed out. ``now``: the batch's clock
    (leases), the time by default."""
    if size < 1:
        return Planned()
    # the round first, as every write that locks it (lease_images locks it next anyway): two batches drawn at once for
    # the same rater do not both offer the same image
    repo.lock_round(session=session, round_id=round_.id)
    # the unanswered ones come back as the rater's other unanswered cards do, as many as the batch holds, with the
    # share 0 too (turned off mid-round: no new ones). Dropped, they left "left for you" lower by them, and a repeat
    # still on the page moved the counters unlike any other card when scored (found by review); held back by the cap,
    # they vanished from a reloaded page while its ordinary cards came back
    pending = db_quality.pending_repeats(session=session, round_id=round_.id, rater_id=rater_id)
    out = pending[:size]
    if share <= 0:
        return Planned(pending)
    cap = min(size, max(1, math.floor(share * size + 1e-9)))
    room = cap - len(out)
    if room <= 0:
        return Planned(pending)
    ratings = db_quality.rated_in_round(session=session, round_id=round_.id, rater_id=rater_id)
    if len(ratings) < MIN_RATED:
        return Planned(pending)
    offers = db_quality.repeat_offers_in_round(session=session, round_id=round_.id, rater_id=rater_id)
    allowed = math.floor(share / (1.0 - share) * len(ratings) + 1e-9) - len(offers)
    last = max((o.created_at for o in offers), default=None)
    since = len(ratings) if last is None else sum(1 for r in ratings if r.created_at > last)
    n_new = min(room, allowed, since)
    if n_new <= 0:
        return Planned(pending)
    # no more new ones than the ordinary images new to the rater that the batch will hold beside them: not their
    # unanswered cards (leased to them, the lease live or not: they come back first, app.ui_rate.draw_batch, and the
    # rater knows them), and at least as many as the new repeats. "Left for you" rises by the new repeats, so a batch
    # whose only new cards were repeats (a batch of one; the rater's unanswered cards and a repeat; the last ordinary
    # images gone) told the rater which cards they were (found by review; a card left open past its lease counted as
    # new, so it came back with a repeat beside it: found by review too). So none once those run out, and none in a
    # batch of one
    held = len(repo.unanswered_image_ids(session=session, round_id=round_.id, rater_id=rater_id, kind="query", now=now))
    fresh = repo.count_images_for_rater(session=session, round_id=round_.id, rater_id=rater_id, kind="query",
                                        now=now) - held
    n_new = min(n_new, fresh, (size - len(out) - held) // 2)
    if n_new <= 0:
        return Planned(pending)
    offered = {o.image_id for o in offers}
    # the images they rated (or edited) last, as many as the batch holds: maybe still on a page, so not repeated yet
    recent = {r.image_id for r in sorted(ratings, key=lambda r: (r.updated_at, r.id))[-size:]}
    candidates = sorted(r.image_id for r in ratings if r.image_id not in offered and r.image_id not in recent)
    chosen = _rng(rater_id, round_.id, len(offers)).sample(candidates, min(n_new, len(candidates)))
    for image_id in chosen:
        db_quality.add_repeat_offer(session=session, image_id=image_id, rater_id=rater_id, now=now)
    return Planned(pending, chosen)


def card_key(rater_id: int, round_id: int, image_id: int) -> str:
    """Where a card goes among the cards handed to the rater at the same time: a per-rater drawn order, the same
    for an ordinary image and a repeat."""
    return hashlib.sha256(f"card:{rater_id}:{round_id}:{image_id}".encode()).hexdigest()


def mix(ordinary: list[int], again: list[int], rater_id: int, round_id: int) -> list[int]:
    """A batch's cards new to the rater: the ordinary images and the new repeats ``again`` in one order
    (``card_key``), which does not depend on which of them are repeats."""
    return sorted([*ordinary, *again], key=lambda image_id: card_key(rater_id, round_id, image_id))


def left_open(session: Session, round_id: int, rater_id: int, ordinary: list[int], pending: list[int]) -> list[int]:
    """The rater's unanswered cards in the order a batch shows them: ``ordinary`` (``repo.unanswered_image_ids``) and
    the ``pending`` repeats alike, by when they were first handed out (an ordinary card's lease's first hand-out,
    ``repo.lease_grants``; a repeat's offer), those handed out together in ``card_key`` order: the order ``mix``
    showed them in."""
    handed = repo.lease_grants(session=session, rater_id=rater_id, image_ids=ordinary)
    offers = db_quality.repeat_offers_of(session=session, rater_id=rater_id, image_ids=pending)
    handed.update({image_id: offers[image_id].created_at for image_id in pending})
    return sorted([*ordinary, *pending], key=lambda image_id: (handed[image_id], card_key(rater_id, round_id, image_id)))
