"""Pairwise preferences in the product (app.pairwise, app.ui_pairs): the feedback setting, the pairs a round gets,
the vote path with its refusals, progress and closing on votes, and the training data handed to the reward fit.
Expected values are written out by hand from the fixtures' images."""

from __future__ import annotations

import math
import struct
from types import SimpleNamespace

import numpy as np
import pytest

from app import experiment_options, pairwise, ui_pairs, ui_rate
from app.auth import AuthError, Who
from db import comparisons, repo
from db.engine import read_session, write_session
from db.errors import Conflict, InvalidInput, NotFound
from db.models import ComparisonVote


def who(world, name: str) -> Who:
    return Who(world.accounts[name], name, "admin" if name == "root" else "rater", False)


def set_feedback_directly(world, feedback: str, overlap: int | None = None) -> None:
    with write_session(world.factory) as s:
        exp = repo.get_experiment(session=s, experiment_id=world.experiment_id)
        exp.config = {**(exp.config or {}), "app": {"feedback": feedback}}
        if overlap is not None:
            exp.overlap = overlap


def votes_in_db(world) -> list[tuple[int, int, str]]:
    with read_session(world.factory) as s:
        return sorted((v.pair_id, v.rater_id, v.choice) for v in s.query(ComparisonVote).all())


# --- making the pairs ---------------------------------------------------------------------------------------------------


def test_plan_pairs_links_images_of_one_prompt_only():
    # prompt p: ids 10, 11, 12 with seeds 5, 1, 3 -> seed order 11, 12, 10 -> the cycle 11-12, 12-10, 10-11;
    # prompt q: ids 20, 21 -> one pair; prompt r: id 30 alone (and no other image alone) -> none
    images = [(10, "p", 5), (11, "p", 1), (12, "p", 3), (20, "q", 0), (21, "q", 7), (30, "r", 0)]
    planned = pairwise.plan_pairs(images, salt="x")
    assert len(planned) == 4
    assert {frozenset(p) for p in planned} == {frozenset({11, 12}), frozenset({12, 10}), frozenset({10, 11}),
                                               frozenset({20, 21})}
    assert all(a != b for a, b in planned)
    # the same salt gives the same sides; over many pairs both sides occur (the left/right order is drawn)
    assert pairwise.plan_pairs(images, salt="x") == planned
    many = pairwise.plan_pairs([(i, f"prompt {i // 2}", i) for i in range(200)], salt="y")
    assert len(many) == 100
    left_is_lower = sum(a < b for a, b in many)
    assert 30 <= left_is_lower <= 70  # binomial(100, 1/2): outside [30, 70] has probability ~1e-4


def test_images_alone_with_their_prompt_are_paired_with_each_other():
    """A round whose prompts were all different got no pairs, so with comparisons only it could never be closed
    (no vote, no close; auto-close needs pairs). Found by review."""
    images = [(i, f"prompt {i}", 10 - i) for i in range(5)]  # five prompts, one image each
    planned = pairwise.plan_pairs(images, salt="z")
    assert {frozenset(p) for p in planned} == {frozenset({0, 1}), frozenset({1, 2}), frozenset({2, 3}),
                                               frozenset({3, 4}), frozenset({4, 0})}  # the cycle, in prompt order
    mixed = [(10, "p", 0), (11, "p", 1), (20, "q", 0), (30, "r", 0)]  # p's pair; q's and r's lone images together
    assert {frozenset(p) for p in pairwise.plan_pairs(mixed, salt="z")} == {frozenset({10, 11}), frozenset({20, 30})}
    assert pairwise.plan_pairs([(1, "a", 0)], salt="z") == []


def test_a_pairs_round_whose_prompts_all_differ_can_be_compared_and_closed(ui_world_factory):
    world = ui_world_factory(n_images=4)
    with write_session(world.factory) as s:  # every prompt different
        for k, image in enumerate(repo.list_images(session=s, round_id=world.round_id, kind="query")):
            image.prompt = f"a lone prompt {k}"
    message = pairwise.set_feedback(world.factory, who(world, "root"), world.experiment_id, "pairs")
    assert "4 pairs were made" in message
    view = pairwise.next_pair(world.factory, world.settings.data_dir, who(world, "alice"), world.experiment_id)
    assert view.pair_id is not None and " / " in view.prompt
    pairwise.submit_vote(world.factory, who(world, "alice"), view.pair_id, "a")
    with write_session(world.factory) as s:
        repo.close_round(session=s, experiment_id=world.experiment_id)  # refused before: no comparisons possible


def test_feedback_setting_is_checked_and_admins_only(ui_world):
    assert pairwise.feedback_of(_experiment(ui_world)) == "scores"  # the default
    with pytest.raises(AuthError):
        pairwise.set_feedback(ui_world.factory, who(ui_world, "alice"), ui_world.experiment_id, "pairs")
    with pytest.raises(InvalidInput, match="unknown feedback 'triples'"):
        pairwise.set_feedback(ui_world.factory, who(ui_world, "root"), ui_world.experiment_id, "triples")
    assert pairwise.feedback_of(_experiment(ui_world)) == "scores"
    # the open round's 6 images: 2 of each of 3 prompts (ui_world's fixture) -> 3 pairs, made at once
    message = pairwise.set_feedback(ui_world.factory, who(ui_world, "root"), ui_world.experiment_id, "pairs")
    assert "3 pairs were made for the open round" in message
    assert pairwise.feedback_of(_experiment(ui_world)) == "pairs"
    assert experiment_options.of(_experiment(ui_world)).feedback == "pairs"  # the other app options read it too
    pairs = _pairs(ui_world)
    with read_session(ui_world.factory) as s:
        prompts = {im.id: im.prompt for im in repo.list_images(session=s, round_id=ui_world.round_id)}
        audit = [(e.actor_name, e.action) for e in repo.list_audit(session=s)]
    assert len(pairs) == 3 and all(prompts[p.image_a_id] == prompts[p.image_b_id] for p in pairs)
    assert ("root", "experiment.feedback") in audit
    # setting it again makes no second set of pairs
    pairwise.set_feedback(ui_world.factory, who(ui_world, "root"), ui_world.experiment_id, "both")
    with read_session(ui_world.factory) as s:
        assert len(comparisons.list_pairs(session=s, experiment_id=ui_world.experiment_id, kind="preference")) == 3


def _experiment(world):
    with read_session(world.factory) as s:
        exp = repo.get_experiment(session=s, experiment_id=world.experiment_id)
        s.expunge(exp)
        return exp


# --- the vote path --------------------------------------------------------------------------------------------------------


def test_vote_path_saves_refuses_and_counts(ui_world):
    world = ui_world
    pairwise.set_feedback(world.factory, who(world, "root"), world.experiment_id, "pairs")
    alice, bob = who(world, "alice"), who(world, "bob")

    view = pairwise.next_pair(world.factory, world.settings.data_dir, alice, None)
    assert view.pair_id is not None and view.left.startswith("data:image/png;base64,") and view.right.startswith("data:")
    assert "0 of 3</b> comparisons" in view.progress and "3 left for you" in view.progress

    # a bad choice: one sentence, nothing saved
    for bad in ("up", "", None, 1, "ab"):
        with pytest.raises(InvalidInput) as info:
            pairwise.submit_vote(world.factory, alice, view.pair_id, bad)
        text = str(info.value)
        assert text.startswith("a comparison must be 'a' (the left image), 'b' (the right image), 'tie', or 'skip' (can't "
                               "judge: not offered to you again), got ")
        assert text.endswith("nothing was saved") and text.count(". ") == 0
    with pytest.raises(InvalidInput, match="a pair id must be a positive whole number"):
        pairwise.submit_vote(world.factory, alice, "pair 1", "a")
    with pytest.raises(NotFound):
        pairwise.submit_vote(world.factory, alice, 10**9, "a")
    assert votes_in_db(world) == []

    # the page's path: keys send a/b/tie; 'left' and 'right' are accepted too
    page, message = ui_pairs.vote(world.factory, world.settings.data_dir, alice, None,
                                  {"pair_id": view.pair_id, "choice": "a"})
    assert message is None and "1 of 3</b> comparisons" in page and "You: <b>1 compared</b>" in page
    assert votes_in_db(world) == [(view.pair_id, alice.rater_id, "a")]
    # the page's refusal comes back as the sentence, nothing saved
    page, message = ui_pairs.vote(world.factory, world.settings.data_dir, alice, None, {"pair_id": view.pair_id,
                                                                                         "choice": "sideways"})
    assert message.startswith("a comparison must be") and votes_in_db(world) == [(view.pair_id, alice.rater_id, "a")]

    # overlap 1: bob is not offered alice's pair and cannot vote on it; alice can change her own vote
    with pytest.raises(pairwise.NotOffered, match="not offered to you"):
        pairwise.submit_vote(world.factory, bob, view.pair_id, "b")
    edited = pairwise.submit_vote(world.factory, alice, view.pair_id, "right")
    assert edited["choice"] == "b" and edited["previous_choice"] == "a" and edited["edited"]
    bob_view = pairwise.next_pair(world.factory, world.settings.data_dir, bob, None)
    assert bob_view.pair_id not in (None, view.pair_id)
    pairwise.submit_vote(world.factory, bob, bob_view.pair_id, "tie")
    with read_session(world.factory) as s:
        p = pairwise.progress(s, repo.get_experiment(session=s, experiment_id=world.experiment_id), alice)
    assert (p.pairs, p.votes, p.labels, p.labels_wanted, p.you_voted, p.you_left) == (3, 2, 2, 3, 1, 1)

    # pairs only: nothing is offered for 1-10 rating, and a rating is refused
    rate_view = ui_rate.load_batch(world.factory, world.settings.data_dir, alice, None, batch_size=4)
    assert "rg-card" not in rate_view.grid and "compare them on the Pairs tab" in rate_view.grid
    with pytest.raises(Conflict, match="asks for comparisons of two images, not 1-10 ratings"):
        ui_rate.submit(world.factory, alice, world.image_ids[0], 7)

    # the admin closes the round on votes alone; a vote afterwards is refused and not saved
    with write_session(world.factory) as s:
        job = repo.close_round(session=s, experiment_id=world.experiment_id)
    assert job.kind == "train"
    third = next(p.id for p in _pairs(world) if p.id not in (view.pair_id, bob_view.pair_id))
    with pytest.raises(Conflict, match="closed for comparisons"):
        pairwise.submit_vote(world.factory, alice, third, "a")
    assert len(votes_in_db(world)) == 2


def _pairs(world):
    with read_session(world.factory) as s:
        return [SimpleNamespace(id=p.id, image_a_id=p.image_a_id, image_b_id=p.image_b_id)
                for p in comparisons.list_pairs(session=s, experiment_id=world.experiment_id, kind="preference")]


def test_votes_are_refused_where_the_experiment_asks_for_scores_and_closing_needs_a_label(ui_world):
    world = ui_world
    pairwise.set_feedback(world.factory, who(world, "root"), world.experiment_id, "pairs")
    pair_id = _pairs(world)[0].id
    with write_session(world.factory) as s:  # closing without a rating or a vote is refused
        with pytest.raises(Conflict, match=r"has no ratings yet \(and no comparisons\)"):
            repo.close_round(session=s, experiment_id=world.experiment_id)
    pairwise.set_feedback(world.factory, who(world, "root"), world.experiment_id, "scores")
    with pytest.raises(Conflict, match="asks for 1-10 ratings, not comparisons"):
        pairwise.submit_vote(world.factory, who(world, "alice"), pair_id, "a")
    view = pairwise.next_pair(world.factory, world.settings.data_dir, who(world, "alice"), None)
    assert view.pair_id is None and "asks for 1-10 ratings" in view.progress
    assert votes_in_db(world) == []


def test_overlap_two_offers_a_pair_to_two_raters(ui_world):
    world = ui_world
    set_feedback_directly(world, "both", overlap=2)
    with write_session(world.factory) as s:
        assert pairwise.create_round_pairs(session=s, experiment_id=world.experiment_id, round_id=world.round_id) == 3
        assert pairwise.create_round_pairs(session=s, experiment_id=world.experiment_id, round_id=world.round_id) == 0
    pair_id = _pairs(world)[0].id
    pairwise.submit_vote(world.factory, who(world, "alice"), pair_id, "a")
    pairwise.submit_vote(world.factory, who(world, "bob"), pair_id, "tie")
    with pytest.raises(pairwise.NotOffered):
        pairwise.submit_vote(world.factory, who(world, "root"), pair_id, "b")
    with read_session(world.factory) as s:
        assert pairwise.round_vote_labels(s, world.round_id, 2) == (2, 6)
    # "both": ratings are still taken
    assert ui_rate.submit(world.factory, who(world, "alice"), world.image_ids[0], 7)["score"] == 7


# --- the training data ----------------------------------------------------------------------------------------------------


def test_training_feedback_rows_by_hand(ui_world):
    world = ui_world
    set_feedback_directly(world, "both")
    with write_session(world.factory) as s:
        for im in repo.list_images(session=s, round_id=world.round_id, kind="query"):  # embedding of image i: (i, -i)
            im.embedding, im.embedding_dim = struct.pack("<2f", float(im.id), float(-im.id)), 2
        pairwise.create_round_pairs(session=s, experiment_id=world.experiment_id, round_id=world.round_id)
    pairs = _pairs(world)
    alice, bob = who(world, "alice"), who(world, "bob")
    pairwise.submit_vote(world.factory, alice, pairs[0].id, "a")
    pairwise.submit_vote(world.factory, alice, pairs[1].id, "b")
    pairwise.submit_vote(world.factory, alice, pairs[2].id, "tie")
    rated_id = world.image_ids[0]
    ui_rate.submit(world.factory, bob, rated_id, 8)
    ui_rate.submit(world.factory, alice, world.image_ids[1], 3)

    with read_session(world.factory) as s:
        rated = repo.ratings_snapshot(session=s, experiment_id=world.experiment_id)
        both = pairwise.training_feedback(s, experiment_id=world.experiment_id, up_to_round_index=0, feedback="both",
                                          rated=rated)
        only_pairs = pairwise.training_feedback(s, experiment_id=world.experiment_id, up_to_round_index=0,
                                                feedback="pairs", rated=rated)
        only_scores = pairwise.training_feedback(s, experiment_id=world.experiment_id, up_to_round_index=0,
                                                 feedback="scores", rated=rated)
        with pytest.raises(Conflict, match="no comparisons to train on"):
            pairwise.training_feedback(s, experiment_id=world.experiment_id, up_to_round_index=-1, feedback="pairs",
                                       rated=rated)
    # every pair of this round's 6 images (3 prompts x 2) involves 2 images: all 6 images are compared
    assert both.image_ids == sorted(world.image_ids)
    np.testing.assert_array_equal(both.embeddings, [[i, -i] for i in both.image_ids])
    expected_scores = [8.0 if i == rated_id else 3.0 if i == world.image_ids[1] else math.nan for i in both.image_ids]
    np.testing.assert_array_equal(both.scores, expected_scores)
    pos = {i: k for k, i in enumerate(both.image_ids)}
    expected_pairs = [[pos[pairs[0].image_a_id], pos[pairs[0].image_b_id], 1.0],
                      [pos[pairs[1].image_a_id], pos[pairs[1].image_b_id], 0.0],
                      [pos[pairs[2].image_a_id], pos[pairs[2].image_b_id], 0.5]]
    np.testing.assert_array_equal(both.pairs, expected_pairs)
    assert (both.n_votes, both.n_ratings) == (3, 2)
    # pairs only: no scores at all; scores only: no pairs, only the 2 rated images
    assert only_pairs.scores is None and only_pairs.n_votes == 3 and only_pairs.n_ratings == 0
    assert only_scores.pairs is None and only_scores.image_ids == sorted([rated_id, world.image_ids[1]])
    np.testing.assert_array_equal(only_scores.scores, [8.0 if i == rated_id else 3.0 for i in only_scores.image_ids])
    # a changed vote changes the snapshot's digest (a re-run does not reuse a model trained on other votes)
    pairwise.submit_vote(world.factory, alice, pairs[2].id, "a")
    with read_session(world.factory) as s:
        again = pairwise.training_feedback(s, experiment_id=world.experiment_id, up_to_round_index=0, feedback="both",
                                           rated=rated)
    assert again.votes_sha256 != both.votes_sha256 and again.n_votes == 3


def test_the_reward_fit_does_not_call_a_split_of_votes_a_tie(ui_world):
    """A pair's votes reach the fit as one outcome, the left image's share: one vote left and one right is 0.5, as a
    tie vote is, and the fit's "n_ties" counted such splits as ties (found by review). The fit cannot tell the two
    apart; it reports what it counts, ``n_even_pairs``: the comparisons whose votes came out even."""
    import torch

    from seiko_core.preference import fit_preference_reward
    from seiko_core.reward import RewardConfig

    world = ui_world
    set_feedback_directly(world, "pairs", overlap=2)
    with write_session(world.factory) as s:
        for im in repo.list_images(session=s, round_id=world.round_id, kind="query"):
            im.embedding, im.embedding_dim = struct.pack("<2f", float(im.id), float(-im.id)), 2
        pairwise.create_round_pairs(session=s, experiment_id=world.experiment_id, round_id=world.round_id)
    pairs = _pairs(world)
    alice, bob = who(world, "alice"), who(world, "bob")
    pairwise.submit_vote(world.factory, alice, pairs[0].id, "a")  # split: one vote each way, no tie
    pairwise.submit_vote(world.factory, bob, pairs[0].id, "b")
    pairwise.submit_vote(world.factory, alice, pairs[1].id, "tie")  # a tie
    pairwise.submit_vote(world.factory, alice, pairs[2].id, "a")
    pairwise.submit_vote(world.factory, bob, pairs[2].id, "a")
    with read_session(world.factory) as s:
        fb = pairwise.training_feedback(s, experiment_id=world.experiment_id, up_to_round_index=0, feedback="pairs",
                                        rated=[])
    assert sorted(fb.pairs[:, 2].tolist()) == [0.5, 0.5, 1.0] and fb.n_votes == 5
    fit = fit_preference_reward(torch.from_numpy(fb.embeddings), pairs=torch.from_numpy(fb.pairs),
                                cfg=RewardConfig(num_heads=2, hidden=(4,), dropout=(), max_epochs=3, patience=3), seed=0)
    assert "n_ties" not in fit.metrics and fit.metrics["n_even_pairs"] == 2 and fit.metrics["n_pairs"] == 3


def test_pairs_of_prompts_of_every_size_cover_each_image_at_most_twice():
    images = [(i, f"p{i % 5}", i) for i in range(23)]  # groups of 5, 5, 5, 4, 4
    planned = pairwise.plan_pairs(images, salt=1)
    assert len(planned) == 23  # cycles: one pair per image in groups of >= 3
    seen = {}
    for a, b in planned:
        assert images[a][1] == images[b][1]
        for i in (a, b):
            seen[i] = seen.get(i, 0) + 1
    assert set(seen.values()) == {2} and len(seen) == 23


def test_the_dashboard_table_counts_comparisons_for_an_experiment_that_asks_for_them(ui_world):
    """The dashboard's round table counted only 1-10 ratings: for a pairs-only experiment it showed 0 of N ratings
    wanted however many comparisons the raters gave. Found by review."""
    from app import ui_dashboard

    world = ui_world

    def row():
        with read_session(world.factory) as s:
            (r,) = ui_dashboard.round_rows(s, _experiment(world))
        return dict(zip(ui_dashboard.HEADERS, ui_dashboard.table([r])[0]))

    assert (row()["Ratings wanted"], row()["Comparisons"], row()["Comparisons wanted"]) == ("6", "–", "–")
    pairwise.set_feedback(world.factory, who(world, "root"), world.experiment_id, "pairs")
    alice = who(world, "alice")
    view = pairwise.next_pair(world.factory, world.settings.data_dir, alice, None)
    pairwise.submit_vote(world.factory, alice, view.pair_id, "a")
    table = row()
    assert (table["Ratings"], table["Ratings wanted"], table["Comparisons"], table["Comparisons wanted"]) == ("0", "–", "1", "3")
    set_feedback_directly(world, "both")
    assert (row()["Ratings wanted"], row()["Comparisons"], row()["Comparisons wanted"]) == ("6", "1", "3")


def test_the_dashboard_shows_what_a_closed_round_wanted_when_it_closed_whoever_is_enabled_since(ui_world):
    """A closed round's 'Ratings wanted' and 'Comparisons wanted' were counted from the accounts enabled today:
    disabling two of three accounts after the round closed halved what its row said it had wanted (found by review).
    They are what the round wanted when it closed."""
    from app import ui_admin, ui_dashboard

    world = ui_world
    set_feedback_directly(world, "both", overlap=2)
    with write_session(world.factory) as s:
        pairwise.create_round_pairs(session=s, experiment_id=world.experiment_id, round_id=world.round_id)
        repo.add_rating(session=s, image_id=world.image_ids[0], rater_id=world.accounts["alice"], score=6)
    pairwise.submit_vote(world.factory, who(world, "alice"), _pairs(world)[0].id, "a")

    def row():
        with read_session(world.factory) as s:
            (r,) = ui_dashboard.round_rows(s, _experiment(world))
        return (r.ratings_wanted, r.comparisons_wanted)

    assert row() == (12, 6)  # 6 images and 3 pairs, 2 labels each: three accounts can give them
    ui_admin.close_round(world.factory, who(world, "root"), world.experiment_id, expected_index=0)
    with write_session(world.factory) as s:
        for name in ("bob", "root"):
            repo.set_rater_disabled(session=s, rater_id=world.accounts[name], disabled=True)
    assert row() == (12, 6)  # counted live now: 6 and 3, one label each from the one account left


def test_a_round_reopened_after_the_feedback_became_pairs_gets_its_pairs(ui_world):
    """Feedback switched to pairs while the round waited for training made no pairs (no round was open), and the
    reopen made none either: the reopened round had 6 query images and no pair, and the Pairs tab said it had fewer
    than two images (found by review)."""
    from app import ui_admin

    with write_session(ui_world.factory) as s:
        repo.add_rating(session=s, image_id=ui_world.image_ids[0], rater_id=ui_world.accounts["alice"], score=6)
    ui_admin.close_round(ui_world.factory, who(ui_world, "root"), ui_world.experiment_id, expected_index=0)
    assert "pairs were made" not in pairwise.set_feedback(ui_world.factory, who(ui_world, "root"),
                                                          ui_world.experiment_id, "pairs")
    assert _pairs(ui_world) == []
    ui_admin.reopen_round(ui_world.factory, who(ui_world, "root"), ui_world.experiment_id)
    assert len(_pairs(ui_world)) == 3  # 2 images of each of 3 prompts, as set_feedback makes them for an open round


def test_several_raters_votes_on_one_pair_are_one_comparison_like_their_ratings_of_one_image(ui_world):
    """With feedback 'both' and overlap 3, three ratings of an image were one target (their mean) but three votes on
    a pair were three comparisons, so comparisons weighed three times as much as ratings, against the fit's 'one
    score and one comparison are one label each', and the bootstrap resampled the three votes as if independent
    (found by review). A pair's votes are now one comparison: its outcome is the left image's share of them."""
    world = ui_world
    set_feedback_directly(world, "both", overlap=3)
    with write_session(world.factory) as s:
        pairwise.create_round_pairs(session=s, experiment_id=world.experiment_id, round_id=world.round_id)
    pair = _pairs(world)[0]
    for name, choice in (("alice", "a"), ("bob", "a"), ("root", "b")):
        pairwise.submit_vote(world.factory, who(world, name), pair.id, choice)
        ui_rate.submit(world.factory, who(world, name), pair.image_a_id, 8)
    with read_session(world.factory) as s:
        rated = repo.ratings_snapshot(session=s, experiment_id=world.experiment_id)
        fb = pairwise.training_feedback(s, experiment_id=world.experiment_id, up_to_round_index=0, feedback="both",
                                        rated=rated)
    pos = {i: k for k, i in enumerate(fb.image_ids)}
    np.testing.assert_allclose(fb.pairs, [[pos[pair.image_a_id], pos[pair.image_b_id], 2 / 3]])
    assert (fb.n_votes, fb.n_ratings) == (3, 3)  # what was counted: 3 votes and 3 ratings, one label each way


def test_a_round_closed_while_the_pair_is_chosen_is_no_error(ui_world, monkeypatch):
    """PostgreSQL, READ COMMITTED: ``offered_pair`` read the open round in ``progress`` and then again on its own; a
    close committed between the two reads left the second None and ``round_.id`` raised AttributeError (a bare "Error"
    from the API, the Pairs tab's poll failed). Found by review. Here the close lands right after the first read's
    counts, as it could there; the round is read once now, and the answer is that read's."""
    world = ui_world
    pairwise.set_feedback(world.factory, who(world, "root"), world.experiment_id, "pairs")
    closed = {"now": False}
    open_round, vote_counts = repo.get_open_round, pairwise._vote_counts

    def get_open_round(*, session, experiment_id):
        return None if closed["now"] else open_round(session=session, experiment_id=experiment_id)

    def counted_then_closed(session, round_id):
        counts = vote_counts(session, round_id)
        closed["now"] = True  # what a READ COMMITTED statement sees from here on
        return counts

    monkeypatch.setattr(repo, "get_open_round", get_open_round)
    monkeypatch.setattr(pairwise, "_vote_counts", counted_then_closed)
    view = pairwise.next_pair(world.factory, world.settings.data_dir, who(world, "alice"), world.experiment_id)
    assert view.pair_id is not None and view.message == ""
    closed["now"] = False
    out = ui_pairs.api_pair(world.factory, world.settings.data_dir, who(world, "alice"))
    assert out["round"] == 0 and out["pair"]["pair_id"] == view.pair_id
