"""The web app's handlers as plain functions: rating, undo, skip, edits, refusals, roles, local mode, dashboard."""

from __future__ import annotations

import html
import json
import math
import re
from datetime import timedelta
from pathlib import Path

import gradio as gr
import pytest
from gradio import utils as gradio_utils
from sqlalchemy import make_url, select, text

from app import auth, ui, ui_admin, ui_dashboard, ui_rate
from app.auth import AuthError, users_exist
from db import checks, repo
from db import jobs as job_queue
from db.engine import read_session, write_session
from db.errors import Conflict, InvalidInput, NotFound
from db.models import ImageLease, Rating, utcnow


def who(world, name: str) -> auth.Who:
    return auth.identify(world.factory, local_mode=False, username=name, client_host="127.0.0.1")


def rating_of(world, image_id: int, rater_id: int) -> int | None:
    with read_session(world.factory) as s:
        r = repo.find_rating(session=s, image_id=image_id, rater_id=rater_id)
        return None if r is None else r.score


def all_ratings(world) -> list[tuple[int, int, int]]:
    with read_session(world.factory) as s:
        return sorted((im, rid, score) for im in world.image_ids + world.eval_image_ids for rid in world.accounts.values()
                      if (score := (r.score if (r := repo.find_rating(session=s, image_id=im, rater_id=rid)) else None)))


class Page:
    """One browser session on the rating page: the gr.State value carried from call to call."""

    def __init__(self, world, name: str, batch_size: int = 4):
        self.world, self.who, self.size = world, who(world, name), batch_size
        self.view = ui_rate.load_batch(world.factory, world.settings.data_dir, self.who, None, batch_size=batch_size)

    @property
    def state(self) -> dict:
        return self.view.state

    @property
    def batch(self) -> list[int]:
        return self.state["batch"]

    @property
    def marks(self) -> dict:
        return json.loads(self.view.marks)["cards"]

    def rate(self, image_id, score) -> ui_rate.View:
        self.view = ui_rate.rate(self.world.factory, self.world.settings.data_dir, self.who, self.state,
                                 {"image_id": image_id, "score": score}, batch_size=self.size)
        return self.view

    def skip(self, image_id) -> ui_rate.View:
        self.view = ui_rate.skip(self.world.factory, self.world.settings.data_dir, self.who, self.state,
                                 {"image_id": image_id}, batch_size=self.size)
        return self.view

    def undo(self) -> ui_rate.View:
        self.view = ui_rate.undo(self.world.factory, self.world.settings.data_dir, self.who, self.state, batch_size=self.size)
        return self.view


# ---------------------------------------------------------------------------------------------
# the rating page
# ---------------------------------------------------------------------------------------------


def test_batch_shows_query_images_inline_and_pixelated(ui_world):
    page = Page(ui_world, "alice")
    assert len(page.batch) == 4 and set(page.batch) <= set(ui_world.image_ids)  # never eval images
    html = page.view.grid
    assert html.count("class='rg-card'") == 4 and html.count("src='data:image/png;base64,") == 4
    assert "/gradio_api/file" not in html and str(ui_world.settings.data_dir) not in html
    assert "a red circle" in html or "a small square" in html or "a large triangle" in html
    assert "image-rendering: pixelated" in ui.CSS
    assert "0 of 6</b> images rated" in page.view.progress and "0 rated" in page.view.progress
    # what a rater can read names neither the image nor its seed (a repeat would otherwise be known by its id)
    text = re.sub(r"<[^>]*>", " ", html)
    assert not re.search(r"#\d|seed", text), text[:300]
    for image_id in page.batch:
        assert f"image {image_id}" not in html and html.count(f"data-image-id='{image_id}'") == 1


def test_prompts_are_escaped(ui_world):
    with write_session(ui_world.factory) as s:
        repo.set_round_status(session=s, round_id=ui_world.round_id, status="training")
        rnd = repo.create_round(session=s, experiment_id=ui_world.experiment_id, index=1, adapter_path="adapters/x")
    ui_world.add_round_images(rnd.id, 1, prompts=("<img src=x onerror=alert(1)> `${x}`",))
    with write_session(ui_world.factory) as s:
        repo.set_round_status(session=s, round_id=rnd.id, status="labeling")
    html = Page(ui_world, "alice").view.grid
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_a_rating_is_saved_the_moment_it_is_given(ui_world):
    page = Page(ui_world, "alice")
    first = page.batch[0]
    view = page.rate(first, 7)
    assert view.message is None and view.grid is None  # the grid stays; only the marks change
    assert rating_of(ui_world, first, ui_world.accounts["alice"]) == 7
    assert page.marks[str(first)] == {"state": "rated", "score": 7, "status": "✓ saved: 7"}
    assert "1 of 6</b> images rated" in view.progress and "1 rated" in view.progress


def test_rerating_edits_and_undo_restores_step_by_step(ui_world):
    page = Page(ui_world, "alice")
    image, alice = page.batch[1], ui_world.accounts["alice"]
    page.rate(image, 3)
    page.rate(image, 8)  # an edit: still one rating
    assert rating_of(ui_world, image, alice) == 8
    assert len(all_ratings(ui_world)) == 1
    page.undo()
    assert rating_of(ui_world, image, alice) == 3
    page.undo()
    assert rating_of(ui_world, image, alice) is None
    assert page.marks[str(image)]["state"] == "open"
    view = page.undo()
    assert "nothing to undo" in view.message


def test_skip_hides_the_image_and_can_be_taken_back(ui_world):
    page = Page(ui_world, "alice")
    skipped = page.batch[0]
    page.skip(skipped)
    assert page.marks[str(skipped)]["state"] == "skipped"
    assert rating_of(ui_world, skipped, ui_world.accounts["alice"]) is None
    later = Page(ui_world, "alice")
    assert skipped not in later.batch  # not offered again
    view = page.undo()  # undo takes the skip back (skip used to be permanent)
    assert view.message is None and page.marks[str(skipped)]["state"] == "open"
    page.skip(skipped)
    view = page.rate(skipped, 5)  # a key landing on a skipped card rates it: the skip is taken back
    assert view.message is None and rating_of(ui_world, skipped, ui_world.accounts["alice"]) == 5
    with read_session(ui_world.factory) as s:
        assert repo.find_skip(session=s, image_id=skipped, rater_id=ui_world.accounts["alice"]) is None


def state_of(world, page, images) -> tuple:
    """What an undo must put back: the rater's rating and skip of each image, the round's counts as the rater sees them
    (repo.round_progress: labels, labels wanted, rated, skipped, left) and the page's progress line."""
    with read_session(world.factory) as s:
        mine = tuple((getattr(repo.find_rating(session=s, image_id=i, rater_id=page.who.rater_id), "score", None),
                      repo.find_skip(session=s, image_id=i, rater_id=page.who.rater_id) is not None) for i in images)
        counts = repo.round_progress(session=s, round_id=world.round_id, rater_id=page.who.rater_id, kind="query")
        experiment = repo.get_experiment(session=s, experiment_id=world.experiment_id)
        return mine, counts, ui_rate.progress(s, experiment, page.who)


def test_every_undo_takes_back_one_action_and_puts_back_what_was_there_before_it(ui_world):
    """Rate A, skip B, rate B, then undo four times. A rating takes back the rater's skip of the image (a key landing
    on a skipped card); undoing it removed the rating and left B neither rated nor skipped, a state that never was,
    and the next undo, finding B's skip gone, went on to take back A's rating (found by review; this test used to
    assert that). Each undo takes back one action, newest first, and leaves exactly what was there before it: B
    skipped again, then B's skip lifted, then A's rating gone, with the round's counts and the page's progress line
    as they were before each action."""
    page = Page(ui_world, "alice")
    a, b = page.batch[0], page.batch[1]
    before = [state_of(ui_world, page, (a, b))]
    page.rate(a, 4)
    before.append(state_of(ui_world, page, (a, b)))
    page.skip(b)
    before.append(state_of(ui_world, page, (a, b)))
    page.rate(b, 6)
    assert state_of(ui_world, page, (a, b))[0] == ((4, False), (6, False))  # the rating took the skip back
    expected = [((4, False), (None, True)), ((4, False), (None, False)), ((None, False), (None, False))]
    for mine in expected:
        view = page.undo()
        assert view.message is None
        now = before.pop()
        assert now[0] == mine and state_of(ui_world, page, (a, b)) == now
    assert page.marks[str(a)]["state"] == page.marks[str(b)]["state"] == "open"
    assert "nothing to undo" in page.undo().message


def test_undoing_a_rating_that_replaced_a_skip_puts_the_skip_back_and_the_card_shows_it(ui_world):
    """Skip B, rate A, rate B (the skip taken back), undo: B is skipped again, not offered to the rater, its card
    marked skipped, the skip's time as it was; undo again: A's rating goes (the newest action left); once more: B's
    skip is lifted, the card is open and B is offered again."""
    from db.models import Skip, UndoStep

    page = Page(ui_world, "alice")
    a, b, alice = page.batch[0], page.batch[1], ui_world.accounts["alice"]
    page.skip(b)
    with write_session(ui_world.factory) as s:  # the skip was an hour ago
        for row in (*s.scalars(select(Skip)), *s.scalars(select(UndoStep))):
            row.created_at -= timedelta(hours=1)
        skipped_at = s.scalars(select(Skip.created_at).where(Skip.image_id == b)).one()
    page.rate(a, 4)
    page.rate(b, 6)
    page.undo()
    assert (rating_of(ui_world, b, alice), rating_of(ui_world, a, alice)) == (None, 4)
    assert page.marks[str(b)]["state"] == "skipped"
    with read_session(ui_world.factory) as s:
        restored_at = s.scalars(select(Skip.created_at).where(Skip.image_id == b, Skip.rater_id == alice)).one()
    assert abs(restored_at - skipped_at) < timedelta(seconds=1)  # when it was skipped (exports show it), not now
    assert b not in Page(ui_world, "alice", batch_size=6).batch  # skipped: not offered to her again
    bob = who(ui_world, "bob")  # and, as after her skip, her page holds no place on it against the others
    assert b in [i["image_id"] for i in ui_rate.api_batch(ui_world.factory, ui_world.settings.data_dir, bob, limit=6)["items"]]
    page.undo()
    assert rating_of(ui_world, a, alice) is None and page.marks[str(b)]["state"] == "skipped"
    page.undo()
    with read_session(ui_world.factory) as s:
        assert repo.find_skip(session=s, image_id=b, rater_id=alice) is None
    assert page.marks[str(b)]["state"] == "open"
    assert "nothing to undo" in page.undo().message


def test_undoing_a_rating_puts_back_a_skip_whose_own_step_has_left_the_undo_history(ui_world):
    """Skip A, then 200 edits of B (the history keeps a rater's newest repo.UNDO_KEEP steps: A's skip step is dropped),
    rate A (the skip taken back), undo. The undo found A's skip by its step, so it removed the rating with the skip
    lost and A was offered again (found by review, 5 Dec 2026). Now A is skipped again, at its time, not offered."""
    from db.models import Skip, UndoStep

    page = Page(ui_world, "alice")
    a, b, alice = page.batch[0], page.batch[1], ui_world.accounts["alice"]
    page.skip(a)
    with read_session(ui_world.factory) as s:
        skipped_at = s.scalars(select(Skip.created_at).where(Skip.image_id == a, Skip.rater_id == alice)).one()
    with write_session(ui_world.factory) as s:
        for k in range(200):
            ui_rate.rate_in_session(s, page.who, b, 1 + k % 2)
    with read_session(ui_world.factory) as s:  # the skip's own step is gone; the skip stands
        assert s.scalars(select(UndoStep.id).where(UndoStep.rater_id == alice, UndoStep.image_id == a)).all() == []
        assert repo.find_skip(session=s, image_id=a, rater_id=alice) is not None
    assert page.rate(a, 7).message is None and rating_of(ui_world, a, alice) == 7
    assert page.undo().message is None
    assert rating_of(ui_world, a, alice) is None and page.marks[str(a)]["state"] == "skipped"
    with read_session(ui_world.factory) as s:
        restored_at = s.scalars(select(Skip.created_at).where(Skip.image_id == a, Skip.rater_id == alice)).one()
    assert abs(restored_at - skipped_at) < timedelta(seconds=1)
    assert a not in Page(ui_world, "alice", batch_size=6).batch and rating_of(ui_world, b, alice) == 2


def test_undo_says_so_when_the_rest_is_older_than_its_history(ui_world, monkeypatch):
    """Rate A, B, C with a history of 2 steps: two undos take back C and B; the third said "There is nothing to undo
    in this round." beside A's rating (found by review, 5 Dec 2026). It says nothing more can be undone, how far undo
    goes back, and that A's rating stays; with nothing of the rater's left, the sentence is as before."""
    monkeypatch.setattr(repo, "UNDO_KEEP", 2)
    page = Page(ui_world, "alice")
    a, b, c = page.batch[:3]
    alice = ui_world.accounts["alice"]
    for image_id in (a, b, c):
        page.rate(image_id, 5)
    assert page.undo().message is None and page.undo().message is None
    message = page.undo().message
    assert message.startswith("There is nothing more to undo in this round") and "at most 2 steps" in message
    assert message.count(".") == 1 and "stay as they are" in message
    assert [rating_of(ui_world, i, alice) for i in (a, b, c)] == [5, None, None]
    other = Page(ui_world, "bob")
    assert other.undo().message == "There is nothing to undo in this round."


def test_skip_and_undo_do_not_restart_the_reservation(ui_world_factory):
    """Before: a skip deleted the lease and its undo leased the image afresh, so skip-and-undo renewed a rater's hold
    on an image for ever. Now the lease keeps its first grant (repo.lease_images): 31 minutes after it, the image comes
    back to the page without holding a place, another rater may be offered it, and the first may still rate it."""
    world = ui_world_factory(n_images=1)  # overlap 1
    alice, bob = Page(world, "alice", batch_size=1), who(world, "bob")
    (image,) = alice.batch
    data = world.settings.data_dir
    assert ui_rate.api_batch(world.factory, data, bob, limit=1)["items"] == []  # alice's lease holds its one place
    with write_session(world.factory) as s:  # alice first got the image 31 minutes ago (her page renewed it since)
        lease = s.scalars(select(ImageLease).where(ImageLease.image_id == image)).one()
        lease.created_at -= timedelta(minutes=31)
    alice.skip(image)
    assert alice.undo().message is None and alice.marks[str(image)]["state"] == "open"
    assert [i["image_id"] for i in ui_rate.api_batch(world.factory, data, bob, limit=1)["items"]] == [image]
    ui_rate.submit(world.factory, bob, image, 4)
    assert alice.rate(image, 7).message is None  # on alice's page still: saved, a rating above the overlap
    assert (rating_of(world, image, world.accounts["alice"]), rating_of(world, image, world.accounts["bob"])) == (7, 4)


def test_disabling_a_rater_frees_the_images_on_their_page_at_once(ui_world_factory):
    """Disabling an account ended its sessions but not its image leases, so the batch on its page stayed reserved
    for LEASE_S (ten minutes) and nobody else was offered those images meanwhile. Found by review."""
    world = ui_world_factory(n_images=4)  # overlap 1
    alice = Page(world, "alice", batch_size=4)
    assert sorted(alice.batch) == sorted(world.image_ids)
    assert Page(world, "root", batch_size=4).batch == []  # alice's leases hold every place
    auth.set_disabled(world.factory, name="alice", disabled=True)
    with read_session(world.factory) as s:
        assert repo.held_by_others(session=s, image_ids=world.image_ids, rater_id=world.accounts["bob"]) == set()
    assert sorted(Page(world, "bob", batch_size=4).batch) == sorted(world.image_ids)


def test_a_batch_offers_images_nobody_holds_before_those_held_past_their_window(ui_world_factory):
    world = ui_world_factory(n_images=8)  # overlap 1
    alice, bob, data = Page(world, "alice", batch_size=4), who(world, "bob"), world.settings.data_dir
    held = set(alice.batch)
    with write_session(world.factory) as s:  # alice's page has held its four for 31 minutes
        for lease in s.scalars(select(ImageLease)):
            lease.created_at -= timedelta(minutes=31)
    first = [i["image_id"] for i in ui_rate.api_batch(world.factory, data, bob, limit=4)["items"]]
    assert set(first) == set(world.image_ids) - held  # the free four, not a draw among all eight
    second = [i["image_id"] for i in ui_rate.api_batch(world.factory, data, bob, limit=8)["items"]]
    assert set(second) == set(world.image_ids)  # then alice's too: her window is over


def test_refusals_do_not_echo_a_huge_value(ui_world):
    """Found in review: a few refusals echoed the whole value sent (up to the 256 KiB body cap) instead of one short
    sentence: next_batch's limit and experiment name, next_pair's experiment name, a vote's choice."""
    from app import pairwise, ui_pairs

    me, data = who(ui_world, "alice"), ui_world.settings.data_dir
    calls = {
        "limit": lambda: ui_rate.api_batch(ui_world.factory, data, me, limit="9" * 5000),
        "experiment name": lambda: ui_rate.api_batch(ui_world.factory, data, me, limit=1, experiment="x" * 100_000),
        "experiment type": lambda: ui_rate.api_batch(ui_world.factory, data, me, limit=1, experiment=["x"] * 10_000),
        "pair experiment": lambda: ui_pairs.api_pair(ui_world.factory, data, me, experiment=["x"] * 10_000),
        "choice": lambda: pairwise.parse_choice("z" * 100_000),
    }
    for what, call in calls.items():
        with pytest.raises((InvalidInput, NotFound)) as refused:
            call()
        assert len(str(refused.value)) < 300, (what, len(str(refused.value)))


def test_the_pairs_tab_poll_takes_a_non_text_value_without_an_error(ui_world):
    demo = ui.build_demo(ui_world.services())
    (on_poll,) = {bf.fn for bf in demo.fns.values() if bf.fn is not None and bf.fn.__name__ == "on_poll"}
    page, n, sent = on_poll(ui_world.experiment_id, 0, 5, request("alice"))  # before: TypeError from `"..." in 5`
    assert n == 0 and isinstance(page, str) and sent["pair"] is False


def test_the_pairs_tab_poll_does_not_send_the_page_back(ui_world):
    """The poll took the tab's HTML as an input, so every poll sent the page (two base64 images: about 1 MB for
    512 px Stable Diffusion) back to the server, over the request size limit. It reads what was last sent from a
    state kept on the server now."""
    demo = ui.build_demo(ui_world.services())
    (dep,) = [bf for bf in demo.fns.values() if bf.fn is not None and bf.fn.__name__ == "on_poll"]
    html_ids = {b._id for b in demo.blocks.values() if isinstance(b, gr.HTML)}
    assert not [b for b in dep.inputs if b._id in html_ids]
    on_poll = dep.fn
    page, n, sent = on_poll(ui_world.experiment_id, 0, {"pair": False, "digest": ""}, request("alice"))
    assert isinstance(page, str) and sent["digest"]
    skipped = on_poll(ui_world.experiment_id, 0, sent, request("alice"))  # nothing changed: nothing sent
    assert skipped == gr.skip()
    # a tab showing a pair writes nothing either, its nonce included: writing the nonce it read back rolled back one
    # that a pick moved on while the tick ran, and the next vote re-sent a used nonce (found by review)
    assert on_poll(ui_world.experiment_id, 0, {"pair": True, "digest": "d"}, request("alice")) == gr.skip()


def test_the_page_sent_to_every_browser_names_no_server_directory(ui_world):
    """The Admin tab is hidden from raters, but Gradio sends every component's config to every browser: the new
    experiment form's placeholder carried the default model's full path on the server (found by review). No path
    of the server's (the model's, the data directory's) is in the page's config."""
    demo = ui.build_demo(ui_world.services())
    page = json.dumps(demo.config, default=repr)  # a few entries are callables
    server = str(Path(ui_world.settings.model).parent)  # holds the model and the data directory
    assert server not in page, [page[max(0, i - 150):i + 80] for i in range(len(page)) if page.startswith(server, i)]
    assert Path(ui_world.settings.model).name in page  # the default is still named


def test_the_job_table_labels_an_error_kept_from_an_earlier_attempt(ui_world):
    """A job that succeeded on its second attempt kept its first attempt's error, shown under "error" next to
    'done' as if the job had failed. Found by review. The column is the "last error", and on a job that is done it
    is marked as an earlier attempt's."""
    demo = ui.build_demo(ui_world.services())
    (table,) = [b for b in demo.blocks.values() if isinstance(b, gr.Dataframe) and b.elem_id == "jobs-table"]
    assert table.headers == ui_admin.JOBS_HEADERS and ui_admin.JOBS_HEADERS[-1] == "last error"
    with write_session(ui_world.factory) as s:
        ids = [job_queue.enqueue_job(session=s, kind="train", experiment_id=ui_world.experiment_id).id for _ in range(2)]
    for ending in ("fail", "complete", "fail", "fail for good"):  # the first job: fails, then done; the second fails
        with write_session(ui_world.factory) as s:
            job = job_queue.claim_job(session=s, worker_id="w", lease_s=30)
            if ending == "complete":
                job_queue.complete_job(session=s, job_id=job.id, worker_id="w", claim=job.claims)
            else:
                job_queue.fail_job(session=s, job_id=job.id, worker_id="w", claim=job.claims,
                                   error="RuntimeError: CUDA out of memory", retry=ending == "fail")
    rows = {row[0]: row for row in ui_admin.jobs_table(ui_world.factory, who(ui_world, "root"), ui_world.experiment_id)}
    assert rows[str(ids[0])][3:] == ["done", "2 of 3", "earlier attempt: RuntimeError: CUDA out of memory"]
    assert rows[str(ids[1])][3:] == ["failed", "2 of 3", "RuntimeError: CUDA out of memory"]


@pytest.mark.parametrize("score", [0, 11, -3, 7.5, "x", None, True, "10 "])
def test_bad_scores_change_nothing(ui_world, score):
    page = Page(ui_world, "alice")
    view = page.rate(page.batch[0], score)
    if score == "10 ":  # a digit string from the browser is fine
        assert view.message is None
        return
    assert "whole number from 1 to 10" in view.message
    assert all_ratings(ui_world) == []
    with pytest.raises(InvalidInput, match="from 1 to 10"):
        ui_rate.submit(ui_world.factory, page.who, page.batch[0], score)
    assert all_ratings(ui_world) == []


def test_unknown_image_is_refused(ui_world):
    page = Page(ui_world, "alice")
    with pytest.raises(NotFound, match="no image with id 99999"):
        ui_rate.submit(ui_world.factory, page.who, 99999, 5)
    with pytest.raises(InvalidInput, match="positive whole number"):
        ui_rate.submit(ui_world.factory, page.who, "abc", 5)
    assert "not in your current batch" in page.rate(99999, 5).message
    assert all_ratings(ui_world) == []


def test_closed_round_is_refused_and_undo_says_so(ui_world):
    page = Page(ui_world, "alice")
    image = page.batch[0]
    page.rate(image, 6)
    with write_session(ui_world.factory) as s:
        repo.set_round_status(session=s, round_id=ui_world.round_id, status="training")
    with pytest.raises(Conflict, match="closed for labeling"):
        ui_rate.submit(ui_world.factory, page.who, image, 9)
    assert "closed for labeling" in page.rate(page.batch[1], 4).message
    assert "Cannot undo" in page.undo().message
    assert all_ratings(ui_world) == [(image, ui_world.accounts["alice"], 6)]


def test_eval_images_are_not_rated(ui_world):
    with pytest.raises(Conflict, match="evaluation image"):
        ui_rate.submit(ui_world.factory, who(ui_world, "alice"), ui_world.eval_image_ids[0], 5)


def test_another_raters_item_is_refused_with_overlap_one(ui_world):
    alice, bob = Page(ui_world, "alice"), Page(ui_world, "bob")
    shared = next(i for i in alice.batch if i in bob.batch) if set(alice.batch) & set(bob.batch) else None
    target = shared if shared is not None else alice.batch[0]
    ui_rate.submit(ui_world.factory, alice.who, target, 9)
    with pytest.raises(Conflict, match="not offered to you"):
        ui_rate.submit(ui_world.factory, bob.who, target, 2)
    assert rating_of(ui_world, target, ui_world.accounts["bob"]) is None
    assert rating_of(ui_world, target, ui_world.accounts["alice"]) == 9
    assert target not in Page(ui_world, "bob").batch
    if shared is not None:  # on bob's page the card is marked as taken
        assert "not offered" in bob.rate(shared, 2).message and bob.marks[str(shared)]["state"] == "taken"
    ui_rate.submit(ui_world.factory, alice.who, target, 4)  # her own rating stays editable
    assert rating_of(ui_world, target, ui_world.accounts["alice"]) == 4


def test_overlap_two_lets_two_raters_rate_each_image(ui_world_factory):
    world = ui_world_factory(n_images=2, overlap=2)
    for name in ("alice", "bob"):
        for image in world.image_ids:
            ui_rate.submit(world.factory, who(world, name), image, 5)
    with pytest.raises(Conflict, match="not offered"):
        ui_rate.submit(world.factory, who(world, "root"), world.image_ids[0], 5)
    assert len(all_ratings(world)) == 4


def test_a_rater_never_sees_an_image_twice_and_batches_advance(ui_world):
    page = Page(ui_world, "alice", batch_size=4)
    seen = list(page.batch)
    for image in list(page.batch):
        view = page.rate(image, 5)
    assert view.grid is not None  # the finished batch was replaced by the next one
    assert len(page.batch) == 2 and not set(page.batch) & set(seen)
    seen += page.batch
    for image in list(page.batch):
        view = page.rate(image, 6)
    assert page.batch == [] and "You have rated every image" in view.grid
    assert sorted(seen) == sorted(ui_world.image_ids)
    assert "6 of 6</b> images rated" in view.progress and "0 left for you" in view.progress
    # undo brings the last image back to the front of an otherwise empty batch
    view = page.undo()
    assert page.batch == [seen[-1]] and view.grid is not None


def test_ratings_survive_a_reload(ui_world):
    page = Page(ui_world, "alice")
    page.rate(page.batch[0], 2)
    again = Page(ui_world, "alice")  # a new browser session
    assert page.batch[0] not in again.batch
    assert "1 rated" in again.view.progress


def test_poll_fetches_images_when_a_round_opens(ui_world):
    with write_session(ui_world.factory) as s:
        repo.set_round_status(session=s, round_id=ui_world.round_id, status="training")
    page = Page(ui_world, "alice")
    assert page.batch == [] and "No round is open" in page.view.grid
    waiting = ui_rate.poll(ui_world.factory, ui_world.settings.data_dir, page.who, page.state, batch_size=4)
    assert waiting.keep_state and waiting.grid is None and "no round is open" in waiting.progress  # progress redrawn
    with write_session(ui_world.factory) as s:
        repo.set_round_status(session=s, round_id=ui_world.round_id, status="labeling")
    view = ui_rate.poll(ui_world.factory, ui_world.settings.data_dir, page.who, page.state, batch_size=4)
    assert view is not None and len(view.state["batch"]) == 4


def test_api_batch(ui_world):
    alice = who(ui_world, "alice")
    out = ui_rate.api_batch(ui_world.factory, ui_world.settings.data_dir, alice, limit=3)
    assert out["experiment"] == "ui-exp" and out["round"] == 0 and len(out["items"]) == 3
    assert all(item["png_base64"] and set(item) == {"image_id", "prompt", "seed", "png_base64"} for item in out["items"])
    with pytest.raises(InvalidInput, match="limit"):
        ui_rate.api_batch(ui_world.factory, ui_world.settings.data_dir, alice, limit=0)
    with pytest.raises(NotFound, match="no experiment named"):
        ui_rate.api_batch(ui_world.factory, ui_world.settings.data_dir, alice, limit=3, experiment="nope")


def test_one_next_batch_leaves_the_other_raters_images(ui_world_factory):
    """Found by the fourth review: one next_batch(64) leased a whole round of 32 images for 10 minutes, and every
    other rater was told the images were being rated by someone else. A rater holds at most their share of the round
    (32 images x overlap 1 / 3 accounts, rounded up), never fewer than the page's batch size (8)."""
    world = ui_world_factory(n_images=32)  # overlap 1; accounts alice, bob (raters), root (admin)
    data, bob, alice = world.settings.data_dir, who(world, "bob"), who(world, "alice")
    share = max(8, math.ceil(32 * 1 / 3))
    first = ui_rate.api_batch(world.factory, data, bob, limit=64)
    bobs = [i["image_id"] for i in first["items"]]
    assert len(bobs) == share == 11 and f"at most {share} unrated images" in first["message"]
    alices = [i["image_id"] for i in ui_rate.api_batch(world.factory, data, alice, limit=8)["items"]]
    assert len(alices) == 8 and not set(alices) & set(bobs)  # overlap 1: nobody gets an image another holds
    # past the cap bob gets his own unrated images again, none lost and none new
    again = [i["image_id"] for i in ui_rate.api_batch(world.factory, data, bob, limit=64)["items"]]
    assert sorted(again) == sorted(bobs)
    with read_session(world.factory) as s:
        assert len(repo.held_image_ids(session=s, round_id=world.round_id, rater_id=bob.rater_id)) == share
    # his page shows his held images, and takes no new ones beside them
    page = Page(world, "bob", batch_size=8)
    assert len(page.batch) == 8 and set(page.batch) <= set(bobs)
    ui_rate.submit(world.factory, bob, bobs[0], 5)  # one rated: room for one more
    more = [i["image_id"] for i in ui_rate.api_batch(world.factory, data, bob, limit=64)["items"]]
    assert len(more) == share and len(set(more) - set(bobs)) == 1 and bobs[0] not in more


def test_a_rater_alone_still_rates_the_whole_round_batch_after_batch(ui_world_factory):
    """The lease cap leaves a rater who rates alone (the others never come) every image of the round, a share at a
    time: 32 images in batches of at most ceil(32 / 3 accounts) = 11."""
    world = ui_world_factory(n_images=32)
    data, bob = world.settings.data_dir, who(world, "bob")
    sizes = []
    while items := ui_rate.api_batch(world.factory, data, bob, limit=64)["items"]:
        sizes.append(len(items))
        for item in items:
            ui_rate.submit(world.factory, bob, item["image_id"], 7)
        assert len(sizes) < 10
    assert sizes == [11, 11, 10]
    assert sorted(im for im, rater, _ in all_ratings(world) if rater == bob.rater_id) == sorted(world.image_ids)


def test_the_only_rater_holds_the_whole_round_at_once(ui_world_factory):
    """With no other account that can rate (local mode: the local admin alone), the share is the whole round."""
    world = ui_world_factory(n_images=32, accounts=False)
    me = auth.identify(world.factory, local_mode=True, username=None, client_host="127.0.0.1")
    out = ui_rate.api_batch(world.factory, world.settings.data_dir, me, limit=64)
    assert sorted(i["image_id"] for i in out["items"]) == sorted(world.image_ids)


def test_a_rater_holds_at_least_the_pages_batch_size(ui_world):
    """Where a share is smaller than the page's batch size (6 images x overlap 1 / 3 accounts = 2 against 4), the
    batch size is the cap: a rater's API batch is as large as the batch the page would give them."""
    data, bob, alice = ui_world.settings.data_dir, who(ui_world, "bob"), who(ui_world, "alice")
    bobs = ui_rate.api_batch(ui_world.factory, data, bob, limit=6, batch_size=4)["items"]
    assert len(bobs) == 4
    assert len(ui_rate.api_batch(ui_world.factory, data, alice, limit=6, batch_size=4)["items"]) == 2


def test_one_unreadable_image_is_its_cards_problem_not_the_batchs(ui_world, tmp_path, caplog, monkeypatch):
    """Found by the fourth review: one image file replaced by a link out of the data dir failed the rater's whole
    batch with a refusal naming the server's data dir. Now that card shows its image as missing (no path), the
    path is in the server's log, and the rest of the batch comes; a file that cannot be read (an OSError) alike."""
    import logging
    from pathlib import Path
    from types import SimpleNamespace

    data = Path(ui_world.settings.data_dir)
    with read_session(ui_world.factory) as s:
        linked, unreadable = [SimpleNamespace(id=i, file_path=repo.get_image(session=s, image_id=i).file_path)
                              for i in ui_world.image_ids[:2]]
    outside = tmp_path / "outside-the-data-dir.txt"
    outside.write_text("not an image")
    (data / linked.file_path).unlink()
    (data / linked.file_path).symlink_to(outside)
    broken = (data / unreadable.file_path).resolve()
    read_bytes = Path.read_bytes

    def failing(path):
        if path == broken:
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", failing)
    alice = who(ui_world, "alice")
    caplog.set_level(logging.WARNING, logger="app.ui_rate")
    out = ui_rate.api_batch(ui_world.factory, data, alice, limit=6)
    by_id = {i["image_id"]: i["png_base64"] for i in out["items"]}
    assert sorted(by_id) == sorted(ui_world.image_ids)  # the whole batch came
    assert by_id[linked.id] is None and by_id[unreadable.id] is None
    assert all(by_id[i] for i in ui_world.image_ids[2:])
    assert str(data.resolve()) not in json.dumps(out) and str(tmp_path) not in json.dumps(out)
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(linked.file_path in r.getMessage() for r in logged)
    assert any(unreadable.file_path in r.getMessage() for r in logged)
    page = Page(ui_world, "alice", batch_size=6)  # her page: the two cards show "image file missing", the rest their image
    assert len(page.batch) == 6 and page.view.grid.count("image file missing") == 2
    assert page.view.grid.count("src='data:image/png;base64,") == 4 and str(tmp_path) not in page.view.grid


UNICODE_REFUSAL = "A text value contains a character that is not valid Unicode."


def test_a_fault_whose_text_names_a_server_path_or_is_pythons_reaches_nobody(caplog):
    """``_shown`` turned any ValueError and OSError into the toast's text: a path leading out of the data dir named
    the data dir, a file error named the server's file, and a UnicodeError was Python's own words ("'utf-8' codec
    can't encode ..."; found by the fourth review). Each now gets a sentence of its own, the details in the log."""
    import logging

    from app.storage import UnsafePath

    def raising(e):
        def fn():
            raise e
        return fn

    faults = [
        (UnsafePath("path 'images/d0/x.png' points outside the data dir '/srv/secret-data' (through a symbolic link)"),
         "/srv/secret-data"),
        (PermissionError(13, "Permission denied", "/srv/secret-data/images/x.png"), "/srv/secret-data"),
        ("\ud800".encode, "codec"),
        (b"\xff".decode, "codec"),
    ]
    caplog.set_level(logging.ERROR, logger="app.ui")
    for fault, secret in faults:
        with pytest.raises(gr.Error) as refused:
            ui._shown(fault if callable(fault) else raising(fault))
        text = refused.value.message
        assert secret not in text and "\\u" not in text and text.endswith("."), text
    with pytest.raises(gr.Error) as refused:
        ui._shown("\ud800".encode)
    assert refused.value.message == UNICODE_REFUSAL
    assert sum("/srv/secret-data" in r.getMessage() or r.exc_info is not None for r in caplog.records) >= 4


def test_text_that_is_not_valid_unicode_gets_one_sentence(ui_world):
    """Found by the fourth review: next_batch with the experiment "\\ud800" (JSON can carry a lone surrogate)
    answered with Python's "'utf-8' codec can't encode character ..."; it is refused as a NUL is, with a sentence."""
    alice = who(ui_world, "alice")
    for name in ("\ud800", "ui-exp\udfff"):
        with pytest.raises(InvalidInput) as refused:
            ui_rate.api_batch(ui_world.factory, ui_world.settings.data_dir, alice, limit=1, experiment=name)
        assert str(refused.value) == UNICODE_REFUSAL
    with pytest.raises(gr.Error) as shown_:
        ui._shown(lambda: ui_rate.api_batch(ui_world.factory, ui_world.settings.data_dir, alice, limit=1,
                                            experiment="\ud800"))
    assert shown_.value.message == UNICODE_REFUSAL
    with pytest.raises(NotFound, match="no experiment named 'caf"):  # valid non-ASCII text is looked up as before
        ui_rate.api_batch(ui_world.factory, ui_world.settings.data_dir, alice, limit=1, experiment="café ✓ 𝄞")


# ---------------------------------------------------------------------------------------------
# roles and local mode, through the Gradio-facing functions
# ---------------------------------------------------------------------------------------------


def request(username: str | None, host: str = "127.0.0.1") -> gr.Request:
    return gr.Request(username=username, client={"host": host, "port": 5000})


def test_admin_handlers_check_the_role_on_the_server(ui_world):
    services = ui_world.services()
    assert ui._admin(services, request("root")).is_admin
    with pytest.raises(gr.Error, match="only an admin"):
        ui._admin(services, request("alice"))
    with pytest.raises(gr.Error, match="Sign in first"):
        ui._who(services, request(None))
    rater = who(ui_world, "alice")
    form = ui_admin.ExperimentForm(name="sneaky")
    for call in (lambda: ui_admin.create_experiment(ui_world.factory, rater, form, default_model="m"),
                 lambda: ui_admin.close_round(ui_world.factory, rater, ui_world.experiment_id),
                 lambda: ui_admin.set_paused(ui_world.factory, rater, ui_world.experiment_id, True),
                 lambda: ui_admin.add_user(ui_world.factory, rater, "eve", "admin", "a long pass phrase"),
                 lambda: ui_admin.users_table(ui_world.factory, rater)):
        with pytest.raises(AuthError, match="only an admin"):
            call()
    with read_session(ui_world.factory) as s:
        assert [e.name for e in repo.list_experiments(session=s)] == ["ui-exp"]
        assert repo.get_experiment(session=s, experiment_id=ui_world.experiment_id).status == "active"
        assert repo.count_raters(session=s) == 3


def test_the_experiment_selector_sends_the_admin_round_status_to_admins_only(ui_world):
    """Any rater's selector change returned the Admin tab's round status, a failed job's error text included (hidden
    tab, but in the response all the same); raters then got a skip for it. Since the fourteenth review the selector
    names nothing of the Admin tab (a rater's page config leaves the tab out, app.rater_page): the status follows
    the selected experiment on the tab's own event (on_admin_experiment, exp_state's change), to admins only."""
    demo = ui.build_demo(ui_world.services())

    def handler(module: str, name: str):
        (fn,) = [fn.fn for fn in demo.fns.values()
                 if fn.fn is not None and fn.fn.__name__ == name and fn.fn.__module__ == module]
        return fn

    on_experiment, on_admin_experiment = handler("app.ui", "on_experiment"), handler("app.ui_admin_tab", "on_admin_experiment")

    def outputs(name: str) -> list[int]:
        (dep,) = [d for d in demo.config["dependencies"] if d["api_name"] == name]
        return dep["outputs"]

    # the wiring: the experiment's change writes the round status (its last output) into the same component the tab's
    # timer writes it into (a call of the handler alone would pass with admin_status dropped from the outputs)
    assert outputs("on_admin_experiment")[-1] == outputs("on_admin_timer")[0]
    for name, admin in (("alice", False), ("root", True)):
        out = on_experiment(ui_world.experiment_id, None, request(name))
        assert not any("admin-round-status" in str(o) for o in out)
        if admin:
            tab = on_admin_experiment(ui_world.experiment_id, request(name))
            assert isinstance(tab[-1], str) and "admin-round-status" in tab[-1]
        else:  # refused (the front door refuses it first: it is admin_only, fifteenth review)
            with pytest.raises(gr.Error, match="only an admin can do this"):
                on_admin_experiment(ui_world.experiment_id, request(name))


def test_local_mode_page(ui_world_factory):
    world = ui_world_factory(accounts=False)
    services = world.services(local_mode=True)
    me = ui._who(services, request(None, "127.0.0.1"))
    assert me.local and me.is_admin
    assert "Local mode" in ui.banner_html(services, me) and "127.0.0.1" in ui.banner_html(services, me)
    with pytest.raises(gr.Error, match="only requests from this computer"):
        ui._who(services, request(None, "192.168.0.9"))
    ui_rate.submit(world.factory, me, world.image_ids[0], 7)
    assert rating_of(world, world.image_ids[0], me.rater_id) == 7
    # the first account ends local mode: a rater alone would leave nobody to run the app from the web (found by review)
    with pytest.raises(InvalidInput, match="the first account ends local mode, so it must be an admin"):
        ui_admin.add_user(world.factory, me, "bob", "rater", "a long pass phrase")
    assert not users_exist(world.factory)
    message = ui_admin.add_user(world.factory, me, "root", "admin", "a long pass phrase")
    assert "restart" in message
    with pytest.raises(gr.Error, match="restart the app"):
        ui._who(services, request(None, "127.0.0.1"))


def test_launch_kwargs_block_the_data_db_and_model_dirs(ui_world):
    model = Path(ui_world.settings.model)
    model.mkdir(exist_ok=True)
    kwargs = ui.launch_kwargs(ui_world.services())
    blocked = [ui_world.settings.data_dir, model, Path(gradio_utils.get_upload_folder()) / "deep_links"]
    url = make_url(ui_world.settings.db_url)
    if url.get_backend_name() == "sqlite":
        db_file = Path(url.database).resolve()
        blocked += [db_file, db_file.with_name(db_file.name + "-wal")]
    for path in blocked:
        assert str(path.resolve()) in kwargs["blocked_paths"]
    # Gradio's own /login signs nobody in (app.web_guard answers /login, off the event loop): fail closed
    assert callable(kwargs["auth"]) and not kwargs["auth"]("alice", "correct horse battery")
    assert "auth" not in ui.launch_kwargs(ui_world.services(local_mode=True))
    assert kwargs["ssr_mode"] is False and kwargs["mcp_server"] is False  # whatever GRADIO_SSR_MODE says


def test_only_the_rating_and_comparison_calls_are_public(ui_world):
    demo = ui.build_demo(ui_world.services())
    public = sorted(fn.api_name for fn in demo.fns.values() if fn.api_visibility != "private")
    assert public == ["next_batch", "next_pair", "submit_comparison", "submit_rating"]
    named = {fn.api_name: fn for fn in demo.fns.values()}
    assert "1 (worst) to 10 (best)" in named["submit_rating"].fn.__doc__


def test_submit_rating_takes_an_image_never_handed_out_and_its_description_says_so(ui_world):
    """The API's description said image_id is "the image_id of an item from next_batch", but an image of the open
    round that was never handed to the caller is taken as well (a lease reserves an image, it does not gate its
    rating; second review). The description now says what is taken and what is refused."""
    demo = ui.build_demo(ui_world.services())
    described = " ".join(demo.get_api_info()["named_endpoints"]["/submit_rating"]["description"].split())
    bob = who(ui_world, "bob")
    image = ui_world.image_ids[0]
    with read_session(ui_world.factory) as s:  # never handed to bob: no lease of his at all
        assert s.scalars(select(ImageLease).where(ImageLease.rater_id == bob.rater_id)).all() == []
    assert ui_rate.submit(ui_world.factory, bob, image, 7)["score"] == 7
    assert "whether or not next_batch handed it to you" in described
    with pytest.raises(Conflict, match="not offered"):  # and what it refuses: overlap 1, bob rated it
        ui_rate.submit(ui_world.factory, who(ui_world, "alice"), image, 7)
    assert "an image not offered to you (other raters already gave or reserved the ratings it needs)" in described
    with pytest.raises(Conflict, match="evaluation image"):
        ui_rate.submit(ui_world.factory, bob, ui_world.eval_image_ids[0], 7)
    assert "an evaluation image" in described


def test_an_empty_batch_says_why_nothing_is_left(ui_world_factory):
    """'You have rated every image of round N that still needs a rating' was said whatever the reason: also to a
    rater who rated none (others filled the round) and while the images left were on other raters' pages (second
    review). Each reason now has its own sentence, on the page and in the API alike."""
    world = ui_world_factory(n_images=3)
    alice, bob = who(world, "alice"), who(world, "bob")
    data = world.settings.data_dir

    def says(rater) -> str:
        api = ui_rate.api_batch(world.factory, data, rater, limit=8)
        page = ui_rate.load_batch(world.factory, data, rater, None, batch_size=4)
        assert api["items"] == [] and page.state["batch"] == []
        assert html.escape(api["message"]) in page.grid
        return api["message"]

    bobs = ui_rate.api_batch(world.factory, data, bob, limit=8)["items"]  # on bob's "page": all three, overlap 1
    assert len(bobs) == 3
    assert says(alice) == ("Every image of round 0 that still needs a rating and that you have neither rated nor "
                           "skipped is being rated by someone else right now; try again in a few minutes.")
    ui_rate.submit(world.factory, bob, bobs[0]["image_id"], 5)
    assert says(alice).startswith("Every image of round 0 that still needs a rating")  # the two others still held
    for item in bobs[1:]:
        ui_rate.submit(world.factory, bob, item["image_id"], 5)
    assert says(alice) == "Round 0 has all the ratings it needs. The next round's images will appear here."
    assert says(bob) == ("You have rated every image of round 0 that still needs a rating. Thank you! "
                         "The next round's images will appear here.")


def test_an_empty_batch_reads_the_clock_once_for_its_counts(ui_world_factory, monkeypatch):
    """Why a batch is empty was told from three counts that each read the clock (a round trip to the database's on
    PostgreSQL), and "skipped" was the difference of two of them: each judged the leases by its own "now" (eighth
    review). Now the clock is read once and the three counts take it."""
    world = ui_world_factory(n_images=1)
    bob = who(world, "bob")
    [item] = ui_rate.api_batch(world.factory, world.settings.data_dir, bob, limit=8)["items"]
    ui_rate.submit(world.factory, bob, item["image_id"], 5)
    readings = []

    def counted_clock(session):
        readings.append(utcnow())
        return readings[-1]

    monkeypatch.setattr(checks, "db_clock", counted_clock)
    with read_session(world.factory) as s:
        experiment = repo.get_experiment(session=s, experiment_id=world.experiment_id)
        said = ui_rate._empty_message(s, experiment, bob)
    assert said.startswith("You have rated every image of round 0") and len(readings) == 1


def test_an_empty_batch_after_skips_says_rated_or_skipped(ui_world_factory):
    world = ui_world_factory(n_images=2)
    page = Page(world, "alice", batch_size=4)
    first, second = page.batch
    page.rate(first, 5)
    view = page.skip(second)
    assert page.batch == [] and ("You have rated or skipped every image of round 0 that still needs a rating. "
                                 "Thank you!") in view.grid


# ---------------------------------------------------------------------------------------------
# administration
# ---------------------------------------------------------------------------------------------


def test_admin_creates_closes_pauses(ui_world, tmp_path):
    root = who(ui_world, "root")
    model = tmp_path / "models" / "x"  # the model is checked when the experiment is created
    model.mkdir(parents=True)
    (model / "model_index.json").write_text("{}")
    form = ui_admin.ExperimentForm(name="second", preset="shapes", method="ucb", budgets="8, 16", prompts="a circle\n a square \n",
                                   aggregation="max", kl_weight=0.05, overlap=2)
    assert "Created experiment 'second'" in ui_admin.create_experiment(ui_world.factory, root, form, default_model=str(model))
    with read_session(ui_world.factory) as s:
        exp = repo.get_experiment_by_name(session=s, name="second")
        assert (exp.method, exp.budgets, exp.prompts, exp.overlap, exp.model_spec) == ("ucb", [8, 16], ["a circle", "a square"], 2, str(model))
        assert exp.config["finetune"]["kl_weight"] == 0.05 and exp.config["optimism"]["aggregation"] == "max"
        # a new experiment stores its round options: lever K's spread of twice the candidates (issue 12)
        assert (exp.config["app"]["selection"], exp.config["app"]["candidate_factor"]) == ("spread", 2)
        assert [j.kind for j in job_queue.list_jobs(session=s, experiment_id=exp.id)] == ["generate"]
    for bad, match in ((dict(name=" "), "name"), (dict(name="b", budgets="8, x"), "budgets"),
                       # '²' passed isdigit() and int() refused it; 5,000 digits gave int()'s own "4300 digits" text
                       (dict(name="b", budgets="8, ²"), r"budgets must be positive whole numbers .* got '²'$"),
                       (dict(name="b", budgets="8, " + "9" * 5000), r"budgets must be .* got '9{36}\.\.\.$"),
                       (dict(name="c", method="magic"), "unknown method"), (dict(name="second"), "already exists"),
                       (dict(name="d", overlap=0), "overlap")):
        with pytest.raises(ValueError, match=match):
            ui_admin.create_experiment(ui_world.factory, root, ui_admin.ExperimentForm(**bad), default_model=str(model))
    with pytest.raises(Conflict, match="no ratings yet"):
        ui_admin.close_round(ui_world.factory, root, ui_world.experiment_id)
    ui_rate.submit(ui_world.factory, who(ui_world, "alice"), ui_world.image_ids[0], 6)
    assert "paused" in ui_admin.set_paused(ui_world.factory, root, ui_world.experiment_id, True)
    with pytest.raises(Conflict, match="resume it"):
        ui_admin.close_round(ui_world.factory, root, ui_world.experiment_id)
    ui_admin.set_paused(ui_world.factory, root, ui_world.experiment_id, False)
    assert "training job" in ui_admin.close_round(ui_world.factory, root, ui_world.experiment_id)
    with read_session(ui_world.factory) as s:
        assert repo.get_round(session=s, round_id=ui_world.round_id).status == "training"
    assert ui_admin.preset_defaults("shapes")["budgets"] == "32, 32, 32, 32"


def test_the_new_experiment_form_sets_the_fine_tuning_budget(ui_world, tmp_path):
    root = who(ui_world, "root")
    model = tmp_path / "models" / "x"
    model.mkdir(parents=True)
    (model / "model_index.json").write_text("{}")
    shown = ui_admin.preset_defaults("shapes")
    # the preset's 5 epochs of 32 trajectories at 8 per step (20 optimiser steps a round) within 23 s
    assert (shown["epochs"], shown["steps_per_epoch"], shown["max_seconds"]) == (5, 4, 23)
    for name, epochs, limit, want in (("longer", 5, 25, (5, 25.0)), ("unlimited", 2.0, 0, (2, None)),
                                      ("presets", None, None, (5, 23.0))):
        form = ui_admin.ExperimentForm(name=name, preset="shapes", epochs=epochs, max_seconds=limit)
        ui_admin.create_experiment(ui_world.factory, root, form, default_model=str(model))
        with read_session(ui_world.factory) as s:
            ft = repo.get_experiment_by_name(session=s, name=name).config["finetune"]
            assert (ft["epochs"], ft["max_seconds"]) == want
    for bad, match in ((dict(epochs=0), "epochs per round must be a whole number"),
                       (dict(epochs=2.5), "epochs per round must be a whole number"),
                       (dict(max_seconds=-1), "time limit must be zero"), (dict(max_seconds=float("nan")), "time limit"),
                       (dict(max_seconds="ten"), "time limit")):
        with pytest.raises(ValueError, match=match):
            ui_admin.create_experiment(ui_world.factory, root, ui_admin.ExperimentForm(name="bad", **bad),
                                       default_model=str(model))


def test_the_new_experiment_form_refuses_values_over_their_limits(ui_world, tmp_path):
    """Found by review: the form took 1e30 epochs, a time limit of 1e300 s and a KL weight of 1e308. Each field has a
    documented maximum (seiko_core.config): a value over it is refused in one sentence naming the field and the limit,
    and a value at it is taken, by Non-adaptive too (whose one round then holds K times the epochs and the limit)."""
    root = who(ui_world, "root")
    model = tmp_path / "models" / "x"
    model.mkdir(parents=True)
    (model / "model_index.json").write_text("{}")
    at_limits = dict(epochs=1000, max_seconds=7 * 24 * 3600, kl_weight=1000, budgets="100000, 8", overlap=1000)
    for method, want in (("ucb", (1000, 604800.0, [100000, 8])), ("nonadaptive", (2000, 1209600.0, [100008]))):
        form = ui_admin.ExperimentForm(name=f"limits-{method}", preset="shapes", method=method, **at_limits)
        ui_admin.create_experiment(ui_world.factory, root, form, default_model=str(model))
        with read_session(ui_world.factory) as s:
            exp = repo.get_experiment_by_name(session=s, name=f"limits-{method}")
            ft = exp.config["finetune"]
            assert (ft["epochs"], ft["max_seconds"], exp.budgets) == want
            assert (ft["kl_weight"], exp.overlap) == (1000.0, 1000)
    epochs = r"^finetune\.epochs \(fine-tuning epochs per round\) must be at most 1,000, got "
    seconds = r"^finetune\.max_seconds \(the fine-tuning time limit per round\) must be at most 604,800 s \(7 days\), got "
    kl = r"^finetune\.kl_weight \(the KL weight\) must be at most 1000, got "
    for bad, match in ((dict(epochs=1001), epochs + "1001$"), (dict(epochs=1e30), epochs + r"1e\+30$"),
                       (dict(epochs=10**9), epochs + "1000000000$"),
                       (dict(max_seconds=604800.5), seconds + "604800$"), (dict(max_seconds=1e300), seconds + r"1e\+300$"),
                       (dict(kl_weight=1000.5), kl + "1000.5$"), (dict(kl_weight=1e308), kl + r"1e\+308$"),
                       (dict(kl_weight="1e308"), kl + r"1e\+308$"), (dict(kl_weight=float("inf")), kl + "inf$"),
                       (dict(budgets="8, 100001"), r"^budgets \(labels per round\) must be at most 100,000 each, got 100001$"),
                       (dict(overlap=1001), r"^overlap \(ratings wanted per image\) must be from 1 to 1000, got 1001$")):
        with pytest.raises(ValueError, match=match) as refused:
            ui_admin.create_experiment(ui_world.factory, root, ui_admin.ExperimentForm(name="too-much", **bad),
                                       default_model=str(model))
        assert "\n" not in str(refused.value), bad
    with read_session(ui_world.factory) as s, pytest.raises(NotFound):
        repo.get_experiment_by_name(session=s, name="too-much")


def test_admin_adds_users(ui_world):
    root = who(ui_world, "root")
    assert "Added rater 'carol'" in ui_admin.add_user(ui_world.factory, root, "carol", "rater", "her own passphrase")
    assert [row[1] for row in ui_admin.users_table(ui_world.factory, root)] == ["alice", "bob", "root", "carol"]
    with pytest.raises(ValueError, match="at least 8"):
        ui_admin.add_user(ui_world.factory, root, "dave", "rater", "short")
    with pytest.raises(ValueError, match="^a password may not be or contain the account's name$"):  # eleventh review
        ui_admin.add_user(ui_world.factory, root, "dave", "rater", "daves pass phrase")
    with pytest.raises(ValueError, match="most commonly used"):
        ui_admin.add_user(ui_world.factory, root, "dave", "rater", "iloveyou")
    assert "dave" not in [row[1] for row in ui_admin.users_table(ui_world.factory, root)]


# ---------------------------------------------------------------------------------------------
# dashboard
# ---------------------------------------------------------------------------------------------


def test_dashboard_table_plot_grid_and_worker(ui_world):
    alice = who(ui_world, "alice")
    for image, score in zip(ui_world.image_ids[:3], (4, 6, 8)):
        ui_rate.submit(ui_world.factory, alice, image, score)
    with write_session(ui_world.factory) as s:
        repo.update_round_metrics(session=s, round_id=ui_world.round_id, metrics={
            "eval": {"pred_reward": 5.5, "head_spread": 0.25, "kl_to_prev": 0.0123}, "train": {"labels": 3}})
        job = job_queue.enqueue_job(session=s, kind="train", experiment_id=ui_world.experiment_id, round_id=ui_world.round_id)
        job_queue.claim_job(session=s, worker_id="w1", lease_s=60)
        job_queue.heartbeat(session=s, job_id=job.id, worker_id="w1", lease_s=60,
                            progress={"phase": "finetune", "step": 3, "total": 12, "eta_s": 95})
    d = ui_dashboard.load(ui_world.factory, None, admin=True)  # the live round in full: an admin's view
    assert d.table == [["0", "labeling", "6", "3", "3", "6", "–", "–", "6.00", "5.50", "0.250", "0.0123", "3"]]
    assert "finetune" in d.worker and "step 3 of 12 (25%)" in d.worker and "ETA 1 min 35 s" in d.worker
    assert "width:25.0%" in d.worker
    fig = ui_dashboard.figure(d.rows)
    assert len(fig.axes) == 3
    grid = ui_dashboard.grid(ui_world.factory, ui_world.experiment_id, ui_world.settings.data_dir)
    assert grid.count("data:image/png;base64,") == 2 and "round 0" in grid
    assert ui_dashboard.metric({"train": {"finetune": {"kl_last": 0.5}}}, "kl") == 0.5
    assert ui_dashboard.metric({}, "kl") is None


def test_a_round_past_the_budgets_list_counts_the_budget_the_worker_generates(ui_world):
    """Budgets (3, 5): the worker generates 5 images for round 2 and every later round (the last budget again), but
    the rating page's progress, repo.round_progress and the dashboard read None for a round past the list (found by
    review). They all read the budget the worker generates now."""
    from app import services
    from seiko_core.config import SeikoConfig

    w = ui_world
    assert services.round_budget(SeikoConfig(budgets=(3, 5)), 2) == 5  # what the worker generates for round 2
    with write_session(w.factory) as s:
        repo.get_experiment(session=s, experiment_id=w.experiment_id).budgets = [3, 5]
    open_id = w.round_id
    for index in (1, 2):  # rounds 0 and 1 done, round 2 (past the list) open
        with write_session(w.factory) as s:
            repo.set_round_status(session=s, round_id=open_id, status="training")
            repo.set_round_status(session=s, round_id=open_id, status="done")
            open_id = repo.create_round(session=s, experiment_id=w.experiment_id, index=index,
                                        adapter_path=f"adapters/r{index}").id
        w.add_round_images(open_id, 2, start=20 * index)
        with write_session(w.factory) as s:
            repo.open_round(session=s, round_id=open_id)
    with read_session(w.factory) as s:
        experiment = repo.get_experiment(session=s, experiment_id=w.experiment_id)
        assert ui_rate.progress(s, experiment, who(w, "alice")).budget == 5
        assert repo.round_progress(session=s, round_id=open_id).budget == 5
        assert [row.budget for row in ui_dashboard.round_rows(s, experiment)] == [3, 5, 5]


def test_dashboard_names_the_job_the_worker_takes_next_and_the_eval_grid(ui_world):
    """An older eval job waits behind a train job (db.jobs.claim_job): the dashboard names the train job as next;
    a running eval job reads as the eval grid."""
    with write_session(ui_world.factory) as s:
        eval_id = job_queue.enqueue_job(session=s, kind="eval", experiment_id=ui_world.experiment_id,
                                        round_id=ui_world.round_id, payload={"round_index": 0}).id
    assert f"job {eval_id} (eval grid) is waiting for the worker" in ui_dashboard.load(ui_world.factory, None).worker
    with write_session(ui_world.factory) as s:
        train_id = job_queue.enqueue_job(session=s, kind="train", experiment_id=ui_world.experiment_id,
                                         round_id=ui_world.round_id).id
    assert f"job {train_id} (train) is waiting for the worker" in ui_dashboard.load(ui_world.factory, None).worker
    with write_session(ui_world.factory) as s:
        job_queue.claim_job(session=s, worker_id="w1", lease_s=60, kinds=["eval"])
    assert f"rendering the eval grid for round 0 (job {eval_id}" in ui_dashboard.load(ui_world.factory, None).worker


def test_dashboard_shows_the_running_job_a_person_waits_for_before_a_running_eval_grid(ui_world):
    """Two workers: one on round 0's eval grid (the older job), one on a train job. The dashboard shows the train job,
    as it orders queued jobs (db.jobs.claim_job's order), not the oldest running job."""
    with write_session(ui_world.factory) as s:
        eval_id = job_queue.enqueue_job(session=s, kind="eval", experiment_id=ui_world.experiment_id,
                                        round_id=ui_world.round_id, payload={"round_index": 0}).id
        assert job_queue.claim_job(session=s, worker_id="w1", lease_s=60).id == eval_id
        train_id = job_queue.enqueue_job(session=s, kind="train", experiment_id=ui_world.experiment_id,
                                         round_id=ui_world.round_id).id
        assert job_queue.claim_job(session=s, worker_id="w2", lease_s=60).id == train_id
    worker = ui_dashboard.load(ui_world.factory, None).worker
    assert f"training for round 0 (job {train_id}," in worker and f"(job {eval_id}," not in worker


def test_an_unreadable_eval_image_is_a_cell_not_a_broken_dashboard(ui_world):
    """A truncated eval PNG raised UnidentifiedImageError in the grid's handler, which also stopped the summary, the
    worker line and the table from updating, every few seconds (found by review)."""
    from app import storage

    with read_session(ui_world.factory) as s:
        image = repo.get_image(session=s, image_id=ui_world.eval_image_ids[0])
        path = storage.resolve(ui_world.settings.data_dir, image.file_path)
    path.write_bytes(path.read_bytes()[:40])
    grid = ui_dashboard.grid(ui_world.factory, ui_world.experiment_id, ui_world.settings.data_dir)
    assert grid.count("<img ") == 1 and "not readable" in grid


def test_raters_see_the_models_name_not_its_path_on_the_server(ui_world):
    """The dashboard showed raters the model's absolute path on the server; job errors are kept from them for the
    same reason (found by review). Admins still see the path."""
    with write_session(ui_world.factory) as s:
        repo.get_experiment(session=s, experiment_id=ui_world.experiment_id).model_spec = "/srv/private/models/shapes-sd"
    assert "/srv/private" not in ui_dashboard.load(ui_world.factory, None).summary
    assert "shapes-sd" in ui_dashboard.load(ui_world.factory, None).summary
    assert "/srv/private/models/shapes-sd" in ui_dashboard.load(ui_world.factory, None, admin=True).summary


def test_a_correction_of_the_last_card_sent_as_the_next_batch_came_is_saved(ui_world):
    """A rater who pressed 7 on a batch's last card and 3 at once to correct it found the 3 refused ('image N is not
    in your current batch; reload the page'): the 7 had already replaced the batch. An edit of an image the rater
    rated in the open round is now saved, as in the batch; an image they never rated is still refused."""
    page = Page(ui_world, "alice")
    first = list(page.batch)
    for image in first:
        page.rate(image, 7)
    assert page.batch and not set(page.batch) & set(first)  # the next batch
    view = page.rate(first[-1], 3)
    assert view.message is None, view.message
    with read_session(ui_world.factory) as s:
        assert repo.find_rating(session=s, image_id=first[-1], rater_id=page.who.rater_id).score == 3
    never_rated = ui_world.eval_image_ids[0]  # of the same round, not one alice rated
    assert "not in your current batch" in (page.rate(never_rated, 5).message or "")


def test_an_eval_image_too_large_to_open_or_unreadable_is_a_cell_too(ui_world, monkeypatch):
    """PIL's DecompressionBombError is not an OSError, and the file was read outside the try: a header claiming a
    huge image, or a file without read permission, still failed the whole refresh (found by review)."""
    from PIL import Image as PILImage

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 10)  # every eval image is a "bomb" now
    grid = ui_dashboard.grid(ui_world.factory, ui_world.experiment_id, ui_world.settings.data_dir)
    assert grid.count("<img ") == 0 and grid.count(">not readable<") == len(ui_world.eval_image_ids)


# ---------------------------------------------------------------------------------------------
# a late poll tick after the rater picked another experiment
# ---------------------------------------------------------------------------------------------


def in_session(username: str, session_hash: str = "s1") -> gr.Request:
    """A request from one browser session (the poll and the experiment selector tell sessions apart by this)."""
    return gr.Request(username=username, client={"host": "127.0.0.1", "port": 5000}, session_hash=session_hash)


def handlers(demo) -> dict:
    return {bf.fn.__name__: bf.fn for bf in demo.fns.values() if bf.fn is not None}


def b_opens(world, n_images: int = 4) -> tuple[int, int]:
    """A second experiment B, newer than ui_world's, with an open round of ``n_images`` images; (B's id, its round)."""
    with write_session(world.factory) as s:
        b = repo.create_experiment(session=s, name="b-exp", model_spec="m", method="bootstrap", config={},
                                   budgets=[4], prompts=["x"], overlap=1)
        rb = repo.create_round(session=s, experiment_id=b.id)
    world.add_round_images(rb.id, n_images, start=50)
    with write_session(world.factory) as s:
        repo.open_round(session=s, round_id=rb.id)
    return b.id, rb.id


def a_waits_and_b_opens(world) -> tuple[int, int]:
    """Experiment A (ui_world's) training, a second experiment B with an open round of 4 images; (B's id, its round)."""
    with write_session(world.factory) as s:
        repo.set_round_status(session=s, round_id=world.round_id, status="training")
    return b_opens(world)


def held(world, round_id: int, name: str) -> list[int]:
    with read_session(world.factory) as s:
        return repo.held_image_ids(session=s, round_id=round_id, rater_id=world.accounts[name])


def test_a_late_rate_tick_does_not_put_back_the_experiment_the_rater_left(ui_world):
    """The rater waits on A; A's round opens; the rater picks B while a tick (started with A's state) is in flight.
    The tick leased an A batch and wrote A's state over B's: the selector said B, the page rated A, and B's batch
    stayed leased to the rater. A tick whose experiment is not the one last picked in its session writes nothing
    and leases nothing."""
    w = ui_world
    b_id, b_round = a_waits_and_b_opens(w)
    fns = handlers(ui.build_demo(w.services()))
    state_a = fns["on_experiment"](w.experiment_id, None, in_session("alice"))[3]
    assert state_a["experiment_id"] == w.experiment_id and state_a["batch"] == []
    with write_session(w.factory) as s:
        repo.set_round_status(session=s, round_id=w.round_id, status="labeling")  # A's next images arrive
    state_b = fns["on_experiment"](b_id, state_a, in_session("alice"))[3]  # picked while the tick is on its way
    assert state_b["experiment_id"] == b_id and len(state_b["batch"]) == 4
    b_held = held(w, b_round, "alice")
    late = fns["on_rate_poll"](state_a, in_session("alice"))  # the tick read A's state before the pick
    outputs = late if isinstance(late, tuple) else (late,) * 4
    assert all(o == gr.skip() for o in outputs), outputs[3]
    assert held(w, b_round, "alice") == b_held and held(w, w.round_id, "alice") == []
    # another session of the same rater (another browser tab) is not held back by this one's pick
    other = fns["on_rate_poll"](state_a, in_session("alice", "s2"))
    assert other[3]["experiment_id"] == w.experiment_id and len(other[3]["batch"]) == 4


def test_a_rate_tick_overtaken_by_a_pick_gives_its_batch_back(ui_world, monkeypatch):
    """A tick that passed the check before the rater picked B (it leased an A batch meanwhile) writes nothing and
    gives back what it leased, at once rather than when the leases run out."""
    w = ui_world
    b_id, b_round = a_waits_and_b_opens(w)
    fns = handlers(ui.build_demo(w.services()))
    state_a = fns["on_experiment"](w.experiment_id, None, in_session("alice"))[3]
    with write_session(w.factory) as s:
        repo.set_round_status(session=s, round_id=w.round_id, status="labeling")
    real_poll, picked = ui_rate.poll, {}

    def poll_then_pick(*args, **kwargs):
        view = real_poll(*args, **kwargs)  # the tick's work: an A batch leased
        assert view is not None and len(view.state["batch"]) == 4 and held(w, w.round_id, "alice")
        picked["b"] = fns["on_experiment"](b_id, state_a, in_session("alice"))[3]
        return view

    monkeypatch.setattr(ui_rate, "poll", poll_then_pick)
    late = fns["on_rate_poll"](state_a, in_session("alice"))
    outputs = late if isinstance(late, tuple) else (late,) * 4
    assert all(o == gr.skip() for o in outputs), outputs[3]
    assert held(w, w.round_id, "alice") == [] and sorted(held(w, b_round, "alice")) == sorted(picked["b"]["batch"])


def test_a_rating_answered_after_the_rater_picked_another_experiment_is_kept_and_writes_no_page(ui_world):
    """A rating of A's last card, in flight as the rater picks B: its answer (A's next batch, A's state) came after the
    pick and put A's page back over B's, the selector saying B (found by review; the ticks were fixed before). The
    rating is kept, the answer writes no page or state (only its number, so the page sends its next action), and the
    A batch it drew is given back."""
    w = ui_world
    fns = handlers(ui.build_demo(w.services()))
    rate_handlers = fns["on_rate_poll"].__self__
    state_a = fns["on_experiment"](w.experiment_id, None, in_session("alice"))[3]
    image = state_a["batch"][0]
    b_id, b_round = a_waits_and_b_opens(w)
    with write_session(w.factory) as s:
        repo.set_round_status(session=s, round_id=w.round_id, status="labeling")  # A stays open for this test
    fns["on_experiment"](b_id, state_a, in_session("alice"))  # the pick lands while the rating is on its way
    b_held = held(w, b_round, "alice")
    for other in state_a["batch"][1:]:  # the rest of A's batch was rated in another tab: this is A's last card
        rate_handlers.on_rate(state_a, gr.EventData(None, {"image_id": other, "score": 3}), in_session("alice", "s2"))
    outputs = rate_handlers.on_rate(state_a, gr.EventData(None, {"image_id": image, "score": 7, "seq": 9}),
                                    in_session("alice"))
    grid, marks, progress, state = outputs
    assert grid == gr.skip() and progress == gr.skip() and state == gr.skip(), outputs
    assert json.loads(marks) == {"stale": True, "done": 9}
    with read_session(w.factory) as s:  # the rating is kept
        assert [r.score for r in s.query(Rating).filter(Rating.image_id == image)] == [7]
    assert held(w, w.round_id, "alice") == [] and sorted(held(w, b_round, "alice")) == sorted(b_held)


def test_a_confirmation_acts_on_the_experiment_its_question_named(ui_world):
    """With no experiment selected (a page loaded before any existed) an admin's question named the default
    experiment, and the confirmation resolved the default again: once another had become the default (its round
    closed meanwhile), "Finish 'b-exp'?" confirmed finished 'ui-exp' (found by review). It acts on the one named."""
    w = ui_world
    _, rb = b_opens(w, 2)  # a newer experiment B with an open round: the default while none is selected
    fns = handlers(ui.build_demo(w.services()))
    root = in_session("root")
    _, question, pending, _ = fns["on_finish_ask"](None, root)
    assert "b-exp" in str(question)
    with write_session(w.factory) as s:  # meanwhile B's round closes: the default is now ui-exp
        repo.set_round_status(session=s, round_id=rb, status="training")
    fns["on_confirm"](pending, None, root)
    with read_session(w.factory) as s:
        assert {e.name: e.status for e in repo.list_experiments(session=s)} == {"ui-exp": "active", "b-exp": "finished"}
    with pytest.raises(gr.Error, match="nothing to confirm"):  # a pending answer without its experiment: refused
        fns["on_confirm"]({"action": "finish", "experiment_id": None}, None, root)


def test_two_admins_changing_an_experiments_settings_at_once_keep_both_changes(ui_world, monkeypatch):
    """Each settings change rewrote the experiment's whole config from the copy it read: on PostgreSQL the feedback
    set while an options change was being written undid that change (found by review). The row is locked and read
    afresh first: the second waits for the first and keeps its change."""
    import threading

    from app import auth, experiment_options, pairwise

    w = ui_world
    root = auth.identify(w.factory, local_mode=False, username="root", client_host="127.0.0.1")
    real_audit, inside, release = repo.add_audit, threading.Event(), threading.Event()

    def held_audit(**kwargs):  # the options change has written its config and waits here, uncommitted
        if threading.current_thread().name == "options":
            inside.set()
            release.wait(30)
        return real_audit(**kwargs)

    monkeypatch.setattr(repo, "add_audit", held_audit)
    options = threading.Thread(name="options", target=lambda: experiment_options.set_options(
        w.factory, root, w.experiment_id, auto_close=True))
    options.start()
    assert inside.wait(30)
    feedback = threading.Thread(target=lambda: pairwise.set_feedback(w.factory, root, w.experiment_id, "both"))
    feedback.start()
    feedback.join(1.5)  # it waits for the options change (its lock), or on old code read the config before it
    release.set()
    options.join(30)
    feedback.join(30)
    with read_session(w.factory) as s:
        experiment = repo.get_experiment(session=s, experiment_id=w.experiment_id)
        assert experiment_options.of(experiment).auto_close is True
        assert pairwise.feedback_of(experiment) == "both"


def test_creating_an_experiment_selects_that_one_not_the_newest(ui_world, tmp_path, monkeypatch):
    """After a create the selector showed the newest experiment of the list: when another admin created one at the
    same moment, each was switched to the other's (found by review). It shows the one just made."""
    from app import services

    w = ui_world
    model = tmp_path / "models" / "x"
    model.mkdir(parents=True)
    (model / "model_index.json").write_text("{}")
    real_create = services.create_experiment

    def and_another_admins(**kwargs):
        made = real_create(**kwargs)
        with write_session(w.factory) as s:  # another admin's, committed right after this one
            repo.create_experiment(session=s, name="theirs", model_spec="m", method="bootstrap", config={},
                                   budgets=[4], prompts=["x"], overlap=1)
        return made

    monkeypatch.setattr(services, "create_experiment", and_another_admins)
    fns = handlers(ui.build_demo(w.services()))
    out = fns["on_create"]("mine", "shapes", str(model), "bootstrap", "mean", 0.05, 1, "4", "a shape",
                           request=in_session("root", "s9"))
    with read_session(w.factory) as s:
        assert repo.get_experiment(session=s, experiment_id=out[2]).name == "mine"


def test_a_late_pairs_tick_does_not_put_back_the_experiment_the_rater_left(ui_world, tmp_path):
    """The Pairs tab's poll had the same race: a tick started with A wrote A's page (and an old nonce) after the
    rater picked B. It writes nothing now; an admin's new experiment (which the selector shows) is polled as usual."""
    w = ui_world
    b_id, _ = a_waits_and_b_opens(w)
    fns = handlers(ui.build_demo(w.services()))
    fns["on_experiment"](w.experiment_id, None, in_session("alice"))
    fns["on_experiment"](b_id, None, in_session("alice"))
    late = fns["on_poll"](w.experiment_id, 3, {"pair": False, "digest": ""}, in_session("alice"))
    outputs = late if isinstance(late, tuple) else (late,) * 3
    assert all(o == gr.skip() for o in outputs), outputs
    page, n, sent = fns["on_poll"](b_id, 3, {"pair": False, "digest": ""}, in_session("alice"))
    assert isinstance(page, str) and n == 3 and sent["digest"]
    # an admin picks A, then creates C: the selector and the Pairs tab show C, whose polls go on
    model = tmp_path / "models" / "x"
    model.mkdir(parents=True)
    (model / "model_index.json").write_text("{}")
    fns["on_experiment"](w.experiment_id, None, in_session("root", "s9"))
    out = fns["on_create"]("c-exp", "shapes", str(model), "bootstrap", "mean", 0.05, 1, "4", "a shape",
                           request=in_session("root", "s9"))
    c_id = out[2]
    assert c_id not in (w.experiment_id, b_id)
    page, n, sent = fns["on_poll"](c_id, 3, {"pair": False, "digest": ""}, in_session("root", "s9"))
    assert isinstance(page, str) and sent["digest"]


def test_a_sessions_pick_is_put_back_when_it_fails_and_forgotten_when_its_page_closes(ui_world):
    w = ui_world
    demo = ui.build_demo(w.services())
    fns = handlers(demo)
    picks = fns["on_rate_poll"].__self__.picks
    state_a = fns["on_experiment"](w.experiment_id, None, in_session("alice"))[3]
    assert len(picks) == 1 and not picks.stale(in_session("alice"), "rate", w.experiment_id)
    with pytest.raises(gr.Error):
        fns["on_experiment"](w.experiment_id + 99, state_a, in_session("alice"))  # no such experiment: page unchanged
    assert not picks.stale(in_session("alice"), "rate", w.experiment_id)  # so its ticks go on
    (unload,) = [bf.fn for bf in demo.fns.values() if any(t[1] == "unload" for t in bf.targets)]
    unload(in_session("alice"))
    assert len(picks) == 0


def test_an_account_name_the_admin_typed_that_names_nobody_is_not_repeated_at_any_length(ui_world):
    """The Account chooser takes a name of its own: a 100,000-character one came back whole in the refusal of each
    account action (found by review); it is cut as the app's other refusals are."""
    root, name = who(ui_world, "root"), "x" * 100_000
    for action in (lambda: ui_admin.disable_user(ui_world.factory, root, name),
                   lambda: ui_admin.enable_user(ui_world.factory, root, name),
                   lambda: ui_admin.delete_user(ui_world.factory, root, name),
                   lambda: ui_admin.set_user_role(ui_world.factory, root, name, "admin"),
                   lambda: ui_admin.set_user_password(ui_world.factory, root, name, "a long enough password")):
        with pytest.raises(NotFound) as refused:
            action()
        assert "no rater named 'xxx" in str(refused.value) and len(str(refused.value)) < 100, str(refused.value)[:200]


def test_a_round_figure_that_is_not_a_number_is_shown_as_such_never_nan_or_inf(ui_world):
    """Tenth review: a round's metric recorded as NaN or an infinity (a diverged run) reached the table as "nan" and
    "inf". Now the cell says "– (not a number)", the note under the table says why, the plot leaves it out, and the
    training fallback is not shown in its place (it measures something else)."""
    metrics = {"eval": {"pred_reward": float("nan"), "head_spread": 0.25, "kl_to_prev": float("inf")},
               "train": {"finetune": {"kl_last": 0.5}, "labels": float("-inf")}}
    assert ui_dashboard.metric(metrics, "kl") is None and ui_dashboard.metric(metrics, "pred_spread") == 0.25
    row = ui_dashboard.RoundRow(
        index=1, status="done", images=2, rated_images=2, ratings=2, budget=2, ratings_wanted=2, comparisons=None,
        comparisons_wanted=None, human_mean=5.0, pred_mean=ui_dashboard.metric(metrics, "pred_mean"),
        pred_spread=0.25, kl=ui_dashboard.metric(metrics, "kl"), labels=ui_dashboard.metric(metrics, "labels"),
        not_a_number=tuple(n for n in ("pred_mean", "pred_spread", "kl", "labels")
                           if ui_dashboard.metric_not_a_number(metrics, n)))
    cells = dict(zip(ui_dashboard.HEADERS, ui_dashboard.table([row])[0]))
    assert cells["Predicted"] == cells["KL to prev"] == cells["Labels used"] == "– (not a number)"
    assert cells["Spread (sd)"] == "0.250"
    assert "not a number" in ui_dashboard.TRAINING_NOTE
    assert len(ui_dashboard.figure([row]).axes) == 3
    # through the dashboard's own rows: the app's writes refuse such a number (``repo.update_round_metrics``, the
    # engine's JSON serializer), but SQLite's JSON text written by hand keeps it, and Python's json reads it back
    with write_session(ui_world.factory) as s:
        if s.get_bind().dialect.name != "sqlite":
            return  # PostgreSQL's jsonb refuses NaN and Infinity: nothing to read back
        s.execute(text("UPDATE rounds SET metrics = :m WHERE id = :i"),
                  {"m": json.dumps(metrics), "i": ui_world.round_id})
    d = ui_dashboard.load(ui_world.factory, None, admin=True)
    shown = dict(zip(ui_dashboard.HEADERS, d.table[0]))
    assert shown["Predicted"] == shown["KL to prev"] == shown["Labels used"] == "– (not a number)"
    assert not any(word in " ".join(d.table[0]) for word in ("nan", "inf"))


def test_a_training_fallback_is_labelled_not_shown_as_the_eval_grids_figure(ui_world):
    """Sixth review: with no eval grid drawn yet, the dashboard's "KL to prev" showed the last optimiser step's batch KL
    (attached steps only) and "Predicted" the training images' mean, unmarked, as if they were the eval grid's figures.
    Now such a figure carries "(train)", the tab explains it, and the plot draws it hollow with its own legend."""
    with write_session(ui_world.factory) as s:
        repo.update_round_metrics(session=s, round_id=ui_world.round_id, metrics={
            "train": {"train_pred_mean": 4.25, "train_head_spread": 0.5, "finetune": {"kl_last": 0.0321}, "labels": 3}})
    d = ui_dashboard.load(ui_world.factory, None, admin=True)
    row = dict(zip(ui_dashboard.HEADERS, d.table[0]))
    assert row["KL to prev"] == "0.0321 (train)"
    assert row["Predicted"] == "4.25 (train)" and row["Spread (sd)"] == "0.500 (train)"
    assert "(train)" in ui_dashboard.TRAINING_NOTE and "attached" in ui_dashboard.TRAINING_NOTE
    ax2 = ui_dashboard.figure(d.rows).axes[1]
    assert [t.get_text() for t in ax2.get_legend().get_texts()] == ["last training step (no eval grid yet)"]
    # the eval grid's own figures replace them, unmarked
    with write_session(ui_world.factory) as s:
        repo.update_round_metrics(session=s, round_id=ui_world.round_id, metrics={
            "eval": {"pred_reward": 5.5, "head_spread": 0.25, "kl_to_prev": 0.0123}})
    row = dict(zip(ui_dashboard.HEADERS, ui_dashboard.load(ui_world.factory, None, admin=True).table[0]))
    assert (row["KL to prev"], row["Predicted"], row["Spread (sd)"]) == ("0.0123", "5.50", "0.250")


def test_closing_the_page_keeps_the_undo_guard_for_its_actions_still_running(ui_world):
    """Twelfth review (6 Dec 2026): Gradio runs the demo's unload when a page's heartbeat ends (closed, reloaded);
    it forgot the page's action numbers (ui_rate_tab.Answered), so an undo the page had given up, still running on
    the server, found no number, was taken as fresh and took back the page's later rating. The numbers are kept now
    (the Answered LRU bounds them): the late undo is refused and both ratings stay."""
    w = ui_world
    fns = handlers(ui.build_demo(w.services()))
    tab = in_session("alice", "tab-1")
    state = fns["on_experiment"](w.experiment_id, None, tab)[3]
    a, b = state["batch"][:2]
    fns["on_rate"](state, gr.EventData(None, {"image_id": a, "score": 7, "seq": 1}), tab)
    fns["on_rate"](state, gr.EventData(None, {"image_id": b, "score": 6, "seq": 3}), tab)  # sent after undo 2 gave up
    fns["forget_session"](tab)  # the page closed
    late = json.loads(fns["on_undo"](state, gr.EventData(None, {"seq": 2}), tab)[1])
    assert late["done"] == 2 and late["refused"] is True
    with read_session(w.factory) as s:
        scores = [repo.find_rating(session=s, image_id=i, rater_id=w.accounts["alice"]).score for i in (a, b)]
    assert scores == [7, 6]
