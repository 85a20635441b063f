"""A Hypothesis state machine of the rating page (rate, re-rate, skip, undo, new batch) for one rater, with a
second rater rating through the API and an admin who may close the round, checked step by step against a
plain in-memory model of what the database and the page's undo history must hold.

The model's rules are the documented ones (app/ui_rate.py): a rater may rate an image of their current batch
that is still offered to them (fewer ratings than the overlap; one they skipped too, which takes the skip back)
or that they rated before (an edit, taken after the image left the batch too); a skipped image is not offered again; undo takes back the rater's newest
rating or skip of the open round (a new rating is removed, an edit gets its previous score back, a skip is
lifted, a rating that took back a skip gives the skip back), from a history kept in the database; nothing changes once the round is closed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from app import services, storage, ui_rate
from app.auth import Who
from db import repo
from db import testing as dbt
from db.engine import make_engine, read_session, session_factory, write_session
from db.errors import Conflict, InvalidInput, NotFound
from db.models import Rating, Skip, UndoStep

N_IMAGES, OVERLAP, BATCH = 6, 2, 3
TEMPLATE: dict[str, Path] = {}


class RatingPage(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="seiko-stateful-"))
        url = dbt.copy_sqlite(TEMPLATE["db"], self.tmp / "seiko.db")
        self.engine = make_engine(url)
        self.factory = session_factory(self.engine)
        self.data_dir = self.tmp / "data"
        with write_session(self.factory) as s:
            exp = repo.create_experiment(session=s, name="sm", model_spec="m", method="greedy", config={}, budgets=[N_IMAGES],
                                         prompts=["a shape"], overlap=OVERLAP)
            rnd = repo.create_round(session=s, experiment_id=exp.id)
            self.images = []
            for i in range(N_IMAGES + 1):  # the last one is an eval image: never offered, never rateable
                stored = storage.write_image(self.data_dir, storage.encode_png(_pixels(i)))
                kind = "eval" if i == N_IMAGES else "query"
                self.images.append(repo.add_image(session=s, round_id=rnd.id, prompt="a shape", seed=i, file_path=stored.path,
                                                  sha256=stored.sha256, embedding=bytes(16), embedding_dim=4, kind=kind).id)
            repo.open_round(session=s, round_id=rnd.id)
            alice = repo.create_rater(session=s, name="alice", password_hash="x")
            bob = repo.create_rater(session=s, name="bob", password_hash="x")
            self.experiment_id = exp.id
        self.alice = Who(alice.id, "alice", "rater", local=False)
        self.bob = Who(bob.id, "bob", "rater", local=False)
        self.eval_image = self.images[-1]
        # the model
        self.ratings: dict[tuple[int, int], int] = {}  # (rater id, image id) -> score
        self.skips: set[tuple[int, int]] = set()
        self.history: list[tuple[str, int, int | None]] = []  # alice's undo steps: (action, image, previous score)
        self.took_skip: list[bool] = []  # beside each step: a new rating that took back her skip of the image
        self.closed = False
        self.state = None
        self.show(ui_rate.load_batch(self.factory, self.data_dir, self.alice, None, batch_size=BATCH))

    def teardown(self):
        if hasattr(self, "engine"):
            self.engine.dispose()
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers ---------------------------------------------------------------------------------

    def show(self, view) -> None:
        self.state = view.state
        self.last_message = view.message

    def count(self, image_id: int) -> int:
        return sum(1 for (_, i) in self.ratings if i == image_id)

    def offered(self, who: Who, image_id: int) -> bool:
        return self.rateable(who, image_id) and (who.rater_id, image_id) not in self.skips

    def rateable(self, who: Who, image_id: int) -> bool:
        """A new rating is accepted: offered, or skipped by the rater (rating it takes the skip back)."""
        return (image_id != self.eval_image and not self.closed and (who.rater_id, image_id) not in self.ratings
                and self.count(image_id) < OVERLAP)

    # -- rules -----------------------------------------------------------------------------------

    @rule(i=st.integers(0, N_IMAGES), score=st.integers(1, 10))
    def alice_rates(self, i, score):
        image_id = self.images[i]
        key = (self.alice.rater_id, image_id)
        in_batch = image_id in self.state["batch"]
        # an edit of an image she rated is taken when it left the batch, while the page is on the image's round (the
        # only one here; a page loaded once it closed is on none); so is the rating of one she skipped there (a rating
        # sent again after a restart, its skip having arrived; twelfth review, 6 Dec 2026)
        edit = (key in self.ratings or key in self.skips) and self.state["round_id"] is not None
        self.show(ui_rate.rate(self.factory, self.data_dir, self.alice, self.state, {"image_id": image_id, "score": score},
                               batch_size=BATCH))
        if not in_batch and not edit:
            assert self.last_message and "not in your current batch" in self.last_message
        elif self.closed:
            assert self.last_message and "closed for labeling" in self.last_message
        elif key in self.ratings:  # an edit
            assert self.last_message is None
            if self.ratings[key] != score:
                self.history.append(("rate", image_id, self.ratings[key]))
                self.took_skip.append(False)
            self.ratings[key] = score
        elif self.rateable(self.alice, image_id):
            assert self.last_message is None
            self.history.append(("rate", image_id, None))
            self.took_skip.append(key in self.skips)
            self.ratings[key] = score
            self.skips.discard(key)
        else:
            assert self.last_message and "not offered to you" in self.last_message

    @rule(i=st.integers(0, N_IMAGES))
    def alice_skips(self, i):
        image_id = self.images[i]
        key = (self.alice.rater_id, image_id)
        in_batch = image_id in self.state["batch"]
        self.show(ui_rate.skip(self.factory, self.data_dir, self.alice, self.state, {"image_id": image_id}, batch_size=BATCH))
        if not in_batch and key in self.skips and self.state["round_id"] is not None:
            # skipped already in the page's round (a skip the page sends again after a restart; twelfth review): done,
            # nothing changes
            assert self.last_message is None
        elif not in_batch:
            assert self.last_message and "not in your current batch" in self.last_message
        elif self.closed:
            assert self.last_message and "not open for labeling" in self.last_message
        elif key in self.ratings:
            assert self.last_message and "you have already scored this image" in self.last_message
        else:
            assert self.last_message is None
            if key not in self.skips:
                self.history.append(("skip", image_id, None))
                self.took_skip.append(False)
            self.skips.add(key)

    @rule()
    def alice_undoes(self):
        page_round = self.state["round_id"]
        self.show(ui_rate.undo(self.factory, self.data_dir, self.alice, self.state, batch_size=BATCH))
        if self.closed and page_round is not None:
            assert self.last_message and self.last_message.startswith("Cannot undo")
            return
        if self.closed or not self.history:
            assert self.last_message and "nothing to undo" in self.last_message
            return
        action, image_id, previous = self.history.pop()
        took_skip = self.took_skip.pop()
        assert self.last_message is None
        key = (self.alice.rater_id, image_id)
        if action == "skip":
            self.skips.discard(key)
        elif previous is None:
            del self.ratings[key]
            if took_skip:  # undo goes back to before the rating: her skip of the image is there again
                self.skips.add(key)
        else:
            self.ratings[key] = previous
        assert image_id in self.state["batch"]  # the undone image is back on the page

    @rule()
    def alice_new_batch(self):
        self.show(ui_rate.load_batch(self.factory, self.data_dir, self.alice, self.state, batch_size=BATCH))
        for image_id in self.state["batch"]:
            assert self.offered(self.alice, image_id), f"image {image_id} was offered but should not be"

    @rule(i=st.integers(0, N_IMAGES), score=st.integers(1, 10))
    def bob_rates_through_the_api(self, i, score):
        image_id = self.images[i]
        key = (self.bob.rater_id, image_id)
        expected_ok = not self.closed and image_id != self.eval_image and (key in self.ratings or self.offered(self.bob, image_id))
        try:
            out = ui_rate.submit(self.factory, self.bob, image_id, score)
        except (Conflict, InvalidInput, NotFound) as e:
            assert not expected_ok, f"bob's rating of {image_id} was refused: {e}"
            return
        assert expected_ok, f"bob's rating of {image_id} should have been refused"
        assert out["previous_score"] == self.ratings.get(key) and out["edited"] == (key in self.ratings)
        self.ratings[key] = score

    @precondition(lambda self: not self.closed and self.ratings)
    @rule()
    def admin_closes_the_round(self):
        services.close_round(factory=self.factory, experiment_id=self.experiment_id)
        self.closed = True

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def database_matches_the_model(self):
        if self.state is None:
            return
        with read_session(self.factory) as s:
            ratings = {(r.rater_id, r.image_id): r.score for r in s.query(Rating)}
            skips = {(k.rater_id, k.image_id) for k in s.query(Skip)}
            steps = [(u.action, u.image_id, u.previous_score)
                     for u in s.query(UndoStep).filter(UndoStep.rater_id == self.alice.rater_id).order_by(UndoStep.id)]
        assert ratings == self.ratings
        assert skips == self.skips
        assert steps == self.history  # the undo history is in the database, not in the page's state
        batch = self.state["batch"]
        assert len(batch) == len(set(batch)) and self.eval_image not in batch
        if not self.closed:  # the SQL count and membership check agree with the model and with the list of offered images
            with read_session(self.factory) as s:
                round_id = repo.get_image(session=s, image_id=self.images[0]).round_id
                who = self.alice if len(self.ratings) % 2 else self.bob
                listed = {im.id for im in repo.next_images_for_rater(session=s, round_id=round_id, rater_id=who.rater_id,
                                                                     limit=100, kind="query")}
                assert listed == {i for i in self.images if self.offered(who, i)}
                assert repo.count_images_for_rater(session=s, round_id=round_id, rater_id=who.rater_id, kind="query") == len(listed)
                i = self.images[len(self.skips) % len(self.images)]
                assert repo.count_images_for_rater(session=s, round_id=round_id, rater_id=who.rater_id, kind="query",
                                                   image_id=i) == (i in listed)
        assert all(self.count(i) <= OVERLAP for i in self.images)


def _pixels(i: int):
    import numpy as np

    p = np.zeros((8, 8, 3), dtype=np.uint8)
    p[..., 0] = 30 * i
    return p


@pytest.fixture
def template(_sqlite_at_head):
    TEMPLATE["db"] = _sqlite_at_head
    yield
    TEMPLATE.clear()


EXAMPLES = int(os.environ.get("SEIKO_STATEFUL_EXAMPLES", "12"))
COMMON = dict(deadline=None, suppress_health_check=list(HealthCheck), database=None, stateful_step_count=25)


def _run(steps) -> None:
    """One sequence of the state machine's rules, the invariant checked after each, as Hypothesis runs them."""
    machine = RatingPage()
    machine.setup()
    try:
        machine.database_matches_the_model()
        for name, kwargs in steps:
            getattr(machine, name)(**kwargs)
            machine.database_matches_the_model()
    finally:
        machine.teardown()


# sequences the derandomized run below does not reach (Hypothesis found them when run after other tests, or in the
# long run): each failed before 5 Dec 2026, "skip again once the round closed" on the page, the others on the model
# (rules it had not been told)
@pytest.mark.parametrize("steps", [
    pytest.param([("alice_new_batch", {}), ("alice_rates", {"i": 3, "score": 1}), ("alice_new_batch", {}),
                  ("alice_new_batch", {}), ("alice_rates", {"i": 3, "score": 1})], id="edit after the image left the batch"),
    pytest.param([("alice_rates", {"i": 4, "score": 1}), ("admin_closes_the_round", {}), ("alice_new_batch", {}),
                  ("alice_rates", {"i": 4, "score": 1})], id="edit from a page loaded once the round closed"),
    pytest.param([("alice_new_batch", {}), ("alice_rates", {"i": 3, "score": 3}), ("alice_skips", {"i": 3})],
                 id="skip of a scored card"),
    pytest.param([("alice_skips", {"i": 0}), ("alice_rates", {"i": 0, "score": 7}), ("alice_undoes", {}),
                  ("alice_undoes", {}), ("alice_undoes", {})], id="undo of a rating that took back a skip"),
    pytest.param([("alice_new_batch", {}), ("alice_skips", {"i": 3}), ("bob_rates_through_the_api", {"i": 1, "score": 9}),
                  ("admin_closes_the_round", {}), ("alice_skips", {"i": 3})], id="skip again once the round closed"),
])
def test_rating_page_sequences(template, steps):
    _run(steps)


def test_rating_page_state_machine(template):
    RatingPage.TestCase.settings = settings(derandomize=True, max_examples=EXAMPLES, **COMMON)
    RatingPage.TestCase().runTest()


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_rating_page_state_machine_long(template):
    RatingPage.TestCase.settings = settings(max_examples=400, **{**COMMON, "stateful_step_count": 60})
    RatingPage.TestCase().runTest()
