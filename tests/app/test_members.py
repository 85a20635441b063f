"""Per-experiment raters (app.members, migration 0015): an experiment is open to every rater, or only to the accounts
an admin lists; admins always may rate. Checked on the server on every route a rater reads or writes an experiment's
items by: the page's handlers (the experiment selector, rate, skip, undo, the Pairs and Compare tabs, the dashboard)
and the public API (next_batch, submit_rating, next_pair, submit_comparison). A rater not listed gets one sentence
and nothing is written. The fixtures' world: experiment 'ui-exp' with an open round of 6 query images, overlap 1,
raters alice and bob, admin root."""

from __future__ import annotations

import gradio as gr
import pytest
from sqlalchemy import func, select

from app import auth, members, pairwise, ui, ui_admin, ui_compare, ui_dashboard_tab, ui_pairs, ui_rate
from app.ui_rate_tab import RateHandlers
from db import repo
from db.engine import read_session, write_session
from db.errors import NotFound
from db.models import AuditEntry, ComparisonVote, ImageLease, PairShow, PairSkip, Rating, Skip


def sentence(world) -> str:
    # the brief's wording, written out here rather than taken from the code
    return f"You are not a rater of experiment {world.experiment_id}; an admin can add you."


def no_experiment(name: str = "ui-exp") -> str:
    # what a rater not listed gets where they name the experiment: the answer for a name that names none (written
    # out here; the fifth review's test checks it against that answer)
    return f"There is no experiment named {name!r}."


def no_experiment_id(world) -> str:
    return f"There is no experiment with id {world.experiment_id}."


def page_gone() -> str:
    # what the Pairs and Compare tabs answer for their page's experiment when it is hidden from the rater or names none
    # (the sixth review's rule; written out here, as html.escape writes it on the page)
    return "This page&#x27;s experiment does not exist (any more); pick one in the Experiment list."


def no_image(image_id: int) -> str:
    return f"There is no image with id {image_id}."


def who(world, name: str) -> auth.Who:
    return auth.identify(world.factory, local_mode=False, username=name, client_host="127.0.0.1")


def request(name: str) -> gr.Request:
    return gr.Request(username=name, client={"host": "127.0.0.1", "port": 5000})


def refusal(fn, *args, **kwargs) -> str:
    with pytest.raises(gr.Error) as info:
        fn(*args, **kwargs)
    return info.value.message


def rows(world, model, name: str | None = None) -> int:
    """How many rows of ``model`` there are (of account ``name`` only, when given)."""
    with read_session(world.factory) as s:
        stmt = select(func.count()).select_from(model)
        if name is not None:
            stmt = stmt.where(model.rater_id == world.accounts[name])
        return s.scalar(stmt)


def only(world, *names: str) -> str:
    return members.set_raters(world.factory, who(world, "root"), world.experiment_id, list(names))


def everyone(world) -> str:
    return members.set_raters(world.factory, who(world, "root"), world.experiment_id, None)


def fns(world) -> tuple[dict, dict]:
    """(the public API's functions by name, the page's handlers by name) of the app ``ui.build_demo`` builds."""
    demo = ui.build_demo(world.services())
    api = {fn.api_name: fn.fn for fn in demo.fns.values() if fn.api_name and fn.fn is not None}
    page = {(fn.fn.__module__, fn.fn.__name__): fn.fn for fn in demo.fns.values() if fn.fn is not None}
    return api, page


def test_an_experiment_is_open_to_every_rater_until_an_admin_lists_its_raters(ui_world):
    assert members.raters_text(ui_world.factory, ui_world.experiment_id) == "everyone"
    api, _ = fns(ui_world)
    for name in ("alice", "bob"):
        assert api["next_batch"](1, "ui-exp", request(name))["items"]
    message = only(ui_world, "alice")
    assert "alice" in message and "ui-exp" in message
    assert members.raters_text(ui_world.factory, ui_world.experiment_id) == "alice"
    with read_session(ui_world.factory) as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "experiment.raters")).one()
        assert (entry.actor_name, entry.target) == ("root", f"experiment {ui_world.experiment_id}")


def test_a_listed_rater_rates_through_the_page_and_the_api(ui_world):
    only(ui_world, "alice")
    api, _ = fns(ui_world)
    batch = api["next_batch"](2, "ui-exp", request("alice"))
    assert len(batch["items"]) == 2
    assert api["submit_rating"](batch["items"][0]["image_id"], 7, request("alice"))["score"] == 7
    view = ui_rate.load_batch(ui_world.factory, ui_world.settings.data_dir, who(ui_world, "alice"), None, batch_size=2,
                              experiment_id=ui_world.experiment_id)
    view = ui_rate.rate(ui_world.factory, ui_world.settings.data_dir, who(ui_world, "alice"), view.state,
                        {"image_id": view.state["batch"][0], "score": 4}, batch_size=2)
    assert view.message is None
    assert rows(ui_world, Rating, "alice") == 2
    # an admin is not listed and still rates
    mine = api["next_batch"](1, "ui-exp", request("root"))["items"]
    assert api["submit_rating"](mine[0]["image_id"], 3, request("root"))["score"] == 3


def test_an_unlisted_rater_is_refused_on_every_route_and_nothing_is_written(ui_world):
    world = ui_world
    data_dir, exp = world.settings.data_dir, world.experiment_id
    bob = who(world, "bob")
    # bob rated one image while the experiment was open to everyone: his undo is refused below, the rating kept
    rated = world.image_ids[0]
    ui_rate.submit(world.factory, bob, rated, 5)
    # a page of bob's from before he was taken off the list
    state = ui_rate.load_batch(world.factory, data_dir, bob, None, batch_size=3, experiment_id=exp).state
    assert state["batch"]
    only(world, "alice")
    with write_session(world.factory) as s:  # his page's leases given back, so that the counts below start clean
        repo.release_leases(session=s, round_id=world.round_id, rater_id=bob.rater_id)
    before = {model: rows(world, model) for model in (Rating, Skip, ImageLease, ComparisonVote, PairSkip)}
    api, page = fns(world)

    # the public API
    assert refusal(api["next_batch"], 4, "ui-exp", request("bob")) == no_experiment()
    assert refusal(api["submit_rating"], world.image_ids[1], 6, request("bob")) == no_image(world.image_ids[1])
    default = api["next_batch"](4, "", request("bob"))  # the default: none he may rate
    assert default["items"] == [] and default["message"] == "There is no experiment you may rate yet; an admin can add you."
    # the page: the selector, and rate / skip / undo through the Rate tab's handlers
    assert refusal(page[("app.ui", "on_experiment")], exp, None, request("bob")) == no_experiment_id(world)
    warnings: list = []
    handlers = RateHandlers(world.services(), lambda r: who(world, r.username), warnings.append)
    card = state["batch"][0]
    handlers.on_rate(state, gr.EventData(None, {"image_id": card, "score": 8, "seq": 1}), request("bob"))
    handlers.on_skip(state, gr.EventData(None, {"image_id": card, "seq": 2}), request("bob"))
    handlers.on_undo(state, gr.EventData(None, {"seq": 3}), request("bob"))
    # rate and skip name the image: refused as one that does not exist; undo takes back his own step: named
    assert warnings == [f"there is no image with id {card}"] * 2 + [sentence(world)]
    # a new batch on a page left on the experiment: the default (none he may rate), no lease
    view = ui_rate.load_batch(world.factory, data_dir, bob, state, batch_size=3)
    assert view.state["batch"] == [] and view.state["experiment_id"] is None
    # the selector offers him nothing; alice and the admin see the experiment
    assert ui_admin.experiment_choices(world.factory, bob) == []
    assert [i for _, i in ui_admin.experiment_choices(world.factory, who(world, "alice"))] == [exp]
    assert [i for _, i in ui_admin.experiment_choices(world.factory, who(world, "root"))] == [exp]
    # the dashboard, even where the experiment lets raters see it
    ui_admin.set_dashboard_access(world.factory, who(world, "root"), exp, True)
    assert ui_dashboard_tab.visible(world.factory, who(world, "alice"), exp)
    assert not ui_dashboard_tab.visible(world.factory, bob, exp)
    # blind A/B (the Compare tab): the page's experiment answered as one that does not exist (sixth review) instead
    # of a pair, and a vote refused before anything is read
    assert page_gone() in ui_compare.pair_html(world.factory, data_dir, bob, exp, "ab")
    with pytest.raises(NotFound) as refused:
        ui_compare.vote(world.factory, bob, exp, "ab", {"pair_id": 1, "choice": "a"})
    assert str(refused.value) == page_gone().replace("&#x27;", "'")

    after = {model: rows(world, model) for model in before}
    assert after == before
    with read_session(world.factory) as s:
        assert repo.find_rating(session=s, image_id=rated, rater_id=bob.rater_id).score == 5  # the undo was refused


def test_pair_votes_of_an_unlisted_rater_are_refused_on_the_page_and_the_api(ui_world):
    world = ui_world
    pairwise.set_feedback(world.factory, who(world, "root"), world.experiment_id, "pairs")
    only(world, "alice")
    api, _ = fns(world)
    pair = api["next_pair"]("ui-exp", request("alice"))["pair"]
    assert pair is not None
    assert refusal(api["next_pair"], "ui-exp", request("bob")) == no_experiment()
    for choice in ("a", "skip"):
        assert (refusal(api["submit_comparison"], pair["pair_id"], choice, request("bob"))
                == f"There is no comparison pair with id {pair['pair_id']}.")
    page, message = ui_pairs.vote(world.factory, world.settings.data_dir, who(world, "bob"), world.experiment_id,
                                  {"pair_id": pair["pair_id"], "choice": "b"})
    assert message == f"there is no comparison pair with id {pair['pair_id']}"
    # the page's own experiment (its server-side state, set while he could pick it): as one that does not exist
    assert page_gone() in ui_pairs.pair_view_html(world.factory, world.settings.data_dir, who(world, "bob"),
                                                      world.experiment_id)
    assert "data-pair-id" not in page
    assert rows(world, ComparisonVote) == 0 and rows(world, PairSkip) == 0
    assert api["submit_comparison"](pair["pair_id"], "a", request("alice"))["side"] == "left"
    assert rows(world, ComparisonVote, "alice") == 1


def answer(fn, *args) -> tuple:
    """What a caller sees of ``fn(*args)``: the error's kind, title and sentence, or what it returned."""
    try:
        out = fn(*args)
    except gr.Error as e:
        return "gr.Error", e.title, e.message
    except Exception as e:  # noqa: BLE001 - the answer is compared below
        return type(e).__name__, None, str(e)
    return "returned", None, repr(out)


def test_an_unlisted_rater_cannot_tell_a_hidden_experiment_image_or_pair_from_none(ui_world):
    """An unlisted rater naming an experiment (by name or id), an image or a pair of it got 'You are not a rater of
    experiment 2', where a name or id that names nothing got 'There is no ...': the experiment's existence, its id and
    which image and pair ids are its leaked (found by the fifth review). Each answer for the hidden target must now be
    the answer for one that does not exist, with that name or id put in, and nothing written."""
    world = ui_world
    exp, image, data_dir = world.experiment_id, world.image_ids[1], world.settings.data_dir
    pairwise.set_feedback(world.factory, who(world, "root"), exp, "pairs")
    only(world, "alice")
    api, page = fns(world)
    pair = api["next_pair"]("ui-exp", request("alice"))["pair"]["pair_id"]
    bob = who(world, "bob")
    before = {model: rows(world, model) for model in (Rating, Skip, ImageLease, ComparisonVote, PairSkip)}
    gone_name, gone_id = "no-such-exp", 987654
    entry_points = {  # name -> (the call on a target, the hidden target, its kind: 'name' or 'id')
        "next_batch": (lambda t: api["next_batch"](4, t, request("bob")), "ui-exp", "name"),
        "next_pair": (lambda t: api["next_pair"](t, request("bob")), "ui-exp", "name"),
        "submit_rating": (lambda t: api["submit_rating"](t, 6, request("bob")), image, "id"),
        "submit_comparison": (lambda t: api["submit_comparison"](t, "a", request("bob")), pair, "id"),
        "submit_comparison skip": (lambda t: api["submit_comparison"](t, "skip", request("bob")), pair, "id"),
        "the selector": (lambda t: page[("app.ui", "on_experiment")](t, None, request("bob")), exp, "id"),
        "the Pairs tab's vote": (lambda t: ui_pairs.vote(world.factory, data_dir, bob, None,
                                                         {"pair_id": t, "choice": "b"})[1], pair, "id"),
        "the Compare tab's vote": (lambda t: ui_compare.vote(world.factory, bob, None, "ab", {"pair_id": t, "choice": "a"}),
                                   pair, "id"),
    }  # the Pairs and Compare tabs' pages take the page's own experiment (server-side state), never one sent
    for name, (call, hidden, kind) in entry_points.items():
        gone = gone_name if kind == "name" else gone_id
        kind_, title, text = answer(call, gone)
        assert kind_ != "returned" or str(gone) in text, name  # the target that does not exist is named or refused
        expected = (kind_, title, text.replace(str(gone), str(hidden)))
        assert answer(call, hidden) == expected, name
    assert {model: rows(world, model) for model in before} == before
    # an admin still gets the full answers: the experiment is theirs to rate
    assert api["next_pair"]("ui-exp", request("root"))["pair"] is not None


def test_switching_an_experiment_back_to_everyone_restores_access(ui_world):
    only(ui_world, "alice")
    api, _ = fns(ui_world)
    assert refusal(api["next_batch"], 2, "ui-exp", request("bob")) == no_experiment()
    assert "Every rater" in everyone(ui_world)
    assert members.raters_text(ui_world.factory, ui_world.experiment_id) == "everyone"
    batch = api["next_batch"](2, "ui-exp", request("bob"))
    assert api["submit_rating"](batch["items"][0]["image_id"], 9, request("bob"))["score"] == 9
    assert rows(ui_world, Rating, "bob") == 1
    with read_session(ui_world.factory) as s:
        details = [e.detail for e in s.scalars(select(AuditEntry).where(AuditEntry.action == "experiment.raters")
                                               .order_by(AuditEntry.id))]
    assert details == [{"raters": ["alice"]}, {"raters": "everyone"}]


def test_only_an_admin_sets_raters_and_an_unknown_account_changes_nothing(ui_world):
    with pytest.raises(auth.AuthError):
        members.set_raters(ui_world.factory, who(ui_world, "alice"), ui_world.experiment_id, ["alice"])
    with pytest.raises(ValueError, match="no account named 'carol'"):
        only(ui_world, "alice", "carol")
    assert members.raters_text(ui_world.factory, ui_world.experiment_id) == "everyone"
    assert members.parse_names(" everyone ") is None and members.parse_names("") is None
    assert members.parse_names("alice, bob\nalice") == ["alice", "bob"]


def test_the_admin_tab_and_the_command_line_set_raters(ui_world, capsys):
    from app import cli_users
    from app.__main__ import main

    _, page = fns(ui_world)
    on_set = page[("app.ui_admin_tab", "on_set_raters")]
    with pytest.raises(gr.Error):
        on_set(ui_world.experiment_id, "alice", ui_world.experiment_id, request("bob"))
    message, field, _ = on_set(ui_world.experiment_id, "alice, bob", ui_world.experiment_id, request("root"))
    assert field == "alice, bob" and "alice, bob" in message
    assert cli_users  # the command below runs through the module's main
    db = ["--db-url", ui_world.settings.db_url, "--data-dir", str(ui_world.settings.data_dir)]
    assert main(["users", "raters", "ui-exp", "bob", *db]) == 0
    assert members.raters_text(ui_world.factory, ui_world.experiment_id) == "bob"
    assert main(["users", "raters", str(ui_world.experiment_id), *db]) == 0
    assert capsys.readouterr().out.strip().endswith(": bob")
    assert main(["users", "raters", "ui-exp", "everyone", *db]) == 0
    assert members.raters_text(ui_world.factory, ui_world.experiment_id) == "everyone"


def test_a_round_wants_ratings_only_from_the_accounts_that_may_rate_it(ui_world_factory):
    """Overlap 3 with only alice listed: alice and the admin may rate, so each of the 6 images wants 2 ratings
    (it wanted 3 from the 3 accounts, more than its raters could give, so the round never completed)."""
    world = ui_world_factory(overlap=3)

    def wanted() -> int:
        with read_session(world.factory) as s:
            return repo.round_progress(session=s, round_id=world.round_id, kind="query").labels_wanted

    n = len(world.image_ids)
    assert wanted() == n * min(3, 3)  # alice, bob, root
    only(world, "alice")
    assert wanted() == n * min(3, 2)  # alice, root
    only(world, "alice", "bob")
    assert wanted() == n * min(3, 3)
    everyone(world)
    assert wanted() == n * 3


def test_a_raters_share_of_a_rounds_leases_counts_only_the_accounts_that_may_rate_it(ui_world):
    """The lease cap (one rater's fair share of a round, ceil(images x overlap / raters)) counted every enabled
    account: on an experiment limited to alice, she and the admin are the only ones who can rate, so each may hold
    half of the 6 images, not a third (the two fourth-review fixes met on main)."""
    with read_session(ui_world.factory) as s:
        round_ = repo.get_open_round(session=s, experiment_id=ui_world.experiment_id)
        assert ui_rate.lease_cap(s, round_, batch_size=1) == 2  # 6 images / root, alice, bob
    only(ui_world, "alice")
    with read_session(ui_world.factory) as s:
        round_ = repo.get_open_round(session=s, experiment_id=ui_world.experiment_id)
        assert ui_rate.lease_cap(s, round_, batch_size=1) == 3  # 6 / root, alice
        assert ui_rate.lease_cap(s, round_, batch_size=4) == 4  # never fewer than the page's batch


def test_a_waiting_page_of_a_rater_taken_off_its_experiment_moves_on_instead_of_redrawing_its_progress(ui_world):
    """The rating page's timer redrew the progress counts of an experiment its rater had just been taken off, on every
    tick, until the page picked another (found by the fourth review). The tick now moves the page as a fresh load
    does: to an experiment the rater may rate, here none."""
    with write_session(ui_world.factory) as s:
        repo.set_round_status(session=s, round_id=ui_world.round_id, status="training")  # a page waiting for images
    alice = who(ui_world, "alice")
    page = ui_rate.load_batch(ui_world.factory, ui_world.settings.data_dir, alice, None, batch_size=4)
    assert page.state["experiment_id"] == ui_world.experiment_id
    tick = ui_rate.poll(ui_world.factory, ui_world.settings.data_dir, alice, page.state, batch_size=4)
    assert tick.keep_state and "no round is open" in tick.progress  # waiting on ui-exp, as before
    only(ui_world, "bob")
    tick = ui_rate.poll(ui_world.factory, ui_world.settings.data_dir, alice, page.state, batch_size=4)
    assert not tick.keep_state and tick.state["experiment_id"] is None, tick.state
    assert "no round is open" not in tick.progress and "There is no experiment you may rate yet" in tick.grid + tick.progress


# ---------------------------------------------------------------------------------------------
# the fifth review: undo and the lease cap, "admins only" from the Admin tab and the command line, and the
# membership check against an admin's change in flight on PostgreSQL
# ---------------------------------------------------------------------------------------------


def live_leases(world, name: str) -> set[int]:
    """The images of the open round on which account ``name`` holds a live lease and that they have neither rated nor
    skipped: counted from the tables here, not by the code under test."""
    from db.models import Image, utcnow

    rater_id = world.accounts[name]
    with read_session(world.factory) as s:
        rated = select(Rating.id).where(Rating.image_id == ImageLease.image_id, Rating.rater_id == rater_id)
        skipped = select(Skip.id).where(Skip.image_id == ImageLease.image_id, Skip.rater_id == rater_id)
        return set(s.scalars(select(ImageLease.image_id).join(Image, Image.id == ImageLease.image_id).where(
            Image.round_id == world.round_id, ImageLease.rater_id == rater_id, ImageLease.expires_at > utcnow(),
            ~rated.exists(), ~skipped.exists())))


def test_a_rater_taken_off_gives_back_their_leases_at_once_and_another_rater_gets_the_images(ui_world):
    """A rater taken off an experiment kept the live leases of the batch on their page until they ran out (10
    minutes): their ratings were refused, but those images were held back from every other rater (found by the fifth
    review). The admin's change now ends them in its transaction: counted from the tables, none is left, and another
    rater is handed those images at once."""
    world = ui_world
    api, _ = fns(world)
    n = len(world.image_ids)
    held = {it["image_id"] for it in api["next_batch"](n, "ui-exp", request("bob"))["items"]}
    assert held and live_leases(world, "bob") == held
    # alice gets (and rates) the rest: overlap 1, so bob's images are all that is left to rate
    rest = {it["image_id"] for it in api["next_batch"](n, "ui-exp", request("alice"))["items"]}
    assert rest == set(world.image_ids) - held
    for image_id in rest:
        api["submit_rating"](image_id, 5, request("alice"))
    assert api["next_batch"](n, "ui-exp", request("alice"))["items"] == []  # bob's leases hold the others back
    only(world, "alice")
    assert live_leases(world, "bob") == set()
    got = {it["image_id"] for it in api["next_batch"](n, "ui-exp", request("alice"))["items"]}
    assert got == held and live_leases(world, "alice") == held


def test_undo_never_leaves_a_rater_holding_more_leases_than_their_share(ui_world_factory):
    """The lease cap (``ui_rate.lease_cap``) limits the live leases a rater holds in a round; undo gave the undone image
    back as a lease on top of a full batch, so a rater who rated a batch, got the next one and pressed undo held the
    cap and one more, and undoing again added one each time (found by the fifth review). Now the undone image comes
    back to be rated again, and the newest other card leaves the page (its lease given back; it stays the rater's, so
    a later batch brings it back first): the cards open on the page are the ones leased to the rater, never more than
    the cap. 12 images, overlap 1, 3 accounts: a share of 4, the page's batch of 4."""
    world = ui_world_factory(n_images=12)
    alice, data_dir, size = who(world, "alice"), world.settings.data_dir, 4
    with read_session(world.factory) as s:
        cap = ui_rate.lease_cap(s, repo.get_open_round(session=s, experiment_id=world.experiment_id), batch_size=size)
    assert cap == 4  # ceil(12 x 1 / 3) = 4, and the page's batch is 4
    view = ui_rate.load_batch(world.factory, data_dir, alice, None, batch_size=size, experiment_id=world.experiment_id)
    first = list(view.state["batch"])
    assert len(first) == 4 and live_leases(world, "alice") == set(first)
    for image_id in first:
        view = ui_rate.rate(world.factory, data_dir, alice, view.state, {"image_id": image_id, "score": 6},
                            batch_size=size)
        assert view.message is None
    second = list(view.state["batch"])  # the first batch done: the next one, leased in full
    assert len(second) == 4 and not set(second) & set(first) and live_leases(world, "alice") == set(second)

    def open_cards(state) -> set[int]:
        with read_session(world.factory) as s:
            return {i for i in state["batch"] if repo.find_rating(session=s, image_id=i, rater_id=alice.rater_id) is None
                    and repo.find_skip(session=s, image_id=i, rater_id=alice.rater_id) is None}

    for n, undone in enumerate(reversed(first), start=1):  # undo the first batch's ratings, newest first
        view = ui_rate.undo(world.factory, data_dir, alice, view.state, batch_size=size)
        assert view.message is None, view.message
        held = live_leases(world, "alice")
        assert undone in view.state["batch"] and undone in held, n  # back on the page, to be rated again
        assert len(held) <= cap, (n, sorted(held))
        assert open_cards(view.state) == held, n  # a card left on the page is one held for the rater
    # the undone image is rated again; no lease past the cap on the way
    view = ui_rate.rate(world.factory, data_dir, alice, view.state, {"image_id": first[0], "score": 2}, batch_size=size)
    assert view.message is None and len(live_leases(world, "alice")) <= cap
    with read_session(world.factory) as s:
        assert repo.find_rating(session=s, image_id=first[0], rater_id=alice.rater_id).score == 2


def test_admins_only_is_set_from_the_command_line_and_the_admin_tab_and_a_mix_is_refused(ui_world, capsys):
    """db.members takes an empty list as 'only admins may rate', but neither the Admin tab's field nor ``users raters``
    could say it: empty meant everyone, and an experiment left with no account showed an empty field, which opened it
    to every rater when set again (found by the fifth review). The word ``admins`` says it now, alone: mixed with
    names (or ``everyone`` with names) it is refused with one sentence and nothing changes."""
    from app.__main__ import main

    world = ui_world
    api, page = fns(world)
    on_set = page[("app.ui_admin_tab", "on_set_raters")]
    db = ["--db-url", world.settings.db_url, "--data-dir", str(world.settings.data_dir)]

    def audited() -> list:
        with read_session(world.factory) as s:
            return [(e.actor_name, e.detail) for e in s.scalars(
                select(AuditEntry).where(AuditEntry.action == "experiment.raters").order_by(AuditEntry.id))]

    def only_admins_rate() -> None:  # what a rater and an admin get, through the public API
        for name in ("alice", "bob"):
            assert refusal(api["next_batch"], 1, "ui-exp", request(name)) == no_experiment()
        assert api["next_batch"](1, "ui-exp", request("root"))["items"]

    # the command line
    assert main(["users", "raters", "ui-exp", "admins", *db]) == 0
    assert "Only admins may now rate experiment 'ui-exp'" in capsys.readouterr().out
    only_admins_rate()
    assert main(["users", "raters", "ui-exp", *db]) == 0
    assert capsys.readouterr().out.strip().endswith(": admins")
    for words in (["admins", "alice"], ["alice", "ADMINS"], ["everyone", "bob"]):
        assert main(["users", "raters", "ui-exp", *words, *db]) == 1
        out = capsys.readouterr()
        assert out.out == "" and out.err.count("\n") == 1 and "nothing was changed" in out.err, (words, out)
        assert "not a mix" in out.err
    only_admins_rate()
    [(actor, detail)] = audited()  # one entry: the refused mixes wrote none
    assert actor.startswith("command line") and detail == {"raters": "admins"}

    # the Admin tab: its field shows the word, and setting the field as shown keeps the experiment admins-only
    assert page[("app.ui_admin_tab", "on_show_raters")](world.experiment_id, request("root")) == ("admins",
                                                                                                   world.experiment_id)
    everyone(world)
    message, field, _ = on_set(world.experiment_id, " Admins ", world.experiment_id, request("root"))
    assert field == "admins" and "Only admins may now rate" in message
    message, field, _ = on_set(world.experiment_id, field, world.experiment_id, request("root"))
    assert field == "admins"
    only_admins_rate()
    for text in ("admins, alice", "alice\nadmins", "everyone, bob"):
        with pytest.raises(gr.Error, match="not a mix; nothing was changed"):
            on_set(world.experiment_id, text, world.experiment_id, request("root"))
    assert members.raters_text(world.factory, world.experiment_id) == "admins"
    assert audited()[1:] == [("root", {"raters": "everyone"}), ("root", {"raters": "admins"}),
                             ("root", {"raters": "admins"})]
    with pytest.raises(gr.Error):  # a rater cannot set it
        on_set(world.experiment_id, "admins", world.experiment_id, request("bob"))


def test_a_raters_field_filled_for_another_experiment_is_not_saved_onto_this_one(ui_world):
    """Read-only review, 7 Dec 2026: the raters field kept experiment A's list when its refill for B was not sent (the
    page of an admin made a rater, then an admin again, without a reload), and "Set raters" with B selected replaced
    B's raters with A's list. The field now comes with the experiment it was filled for; a save for another one
    is refused with one sentence, B's raters unchanged, and the field then shows B's."""
    from tests.app.test_admin_switch import second_experiment

    world = ui_world
    b = second_experiment(world)
    _, page = fns(world)
    on_show, on_set = page[("app.ui_admin_tab", "on_show_raters")], page[("app.ui_admin_tab", "on_set_raters")]
    only(world, "alice")  # A: alice only; B: everyone
    field, shown_for = on_show(world.experiment_id, request("root"))
    assert (field, shown_for) == ("alice", world.experiment_id)
    message, field, shown_for = on_set(b, field, shown_for, request("root"))  # B picked, the field still A's
    assert message == "The field showed another experiment's raters; it shows this one's now: check them and set again."
    assert members.raters_text(world.factory, b) == "everyone"
    assert (field, shown_for) == ("everyone", b)
    message, field, shown_for = on_set(b, "bob", shown_for, request("root"))  # filled for B: saved
    assert members.raters_text(world.factory, b) == "bob" == field and shown_for == b
    assert members.raters_text(world.factory, world.experiment_id) == "alice"


def _pg_only(world) -> None:
    if world.settings.db_url.startswith("sqlite"):
        pytest.skip("SQLite serialises write transactions (BEGIN IMMEDIATE): an admin's change cannot land between a "
                    "rating's check and its insert")


def _waits_for_a_lock(world, thread, *, seconds: float = 30) -> bool:
    """Whether ``thread`` waits for a row lock in this database (PostgreSQL's view of it), polled until it does, it
    ends, or ``seconds`` pass: False when it ended without waiting."""
    import time

    from sqlalchemy import text

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and thread.is_alive():
        with world.factory() as s:
            if s.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                              "AND wait_event_type = 'Lock'")).scalar():
                return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("action", ["rating", "pair vote", "batch"])
def test_a_rating_sent_while_an_admin_takes_its_rater_off_waits_and_is_refused(ui_world, monkeypatch, action):
    """PostgreSQL: the membership check read the list without a lock, so a rating (or a pair vote) sent while an
    admin's change taking its rater off was in flight (made, not committed) was checked against the old list and
    saved (found by the fifth review). The admin's change holds the experiment's row; the rating's check now shares
    that lock, so it waits for the change, reads the list as committed and is refused, nothing saved."""
    import threading

    from app.auth import audit as real_audit

    world = ui_world
    _pg_only(world)
    only(world, "alice", "bob")
    bob = who(world, "bob")
    if action == "rating":
        def send():
            return ui_rate.submit(world.factory, bob, world.image_ids[0], 4)
        model = Rating
    elif action == "pair vote":
        pairwise.set_feedback(world.factory, who(world, "root"), world.experiment_id, "pairs")
        api, _ = fns(world)
        pair_id = api["next_pair"]("ui-exp", request("bob"))["pair"]["pair_id"]

        def send():
            return pairwise.submit_vote(world.factory, bob, pair_id, "a")
        model = ComparisonVote
    else:  # a hand-out (ui_rate.draw_batch) leases images: none to a rater taken off (fifth review)
        def send():
            return ui_rate.api_batch(world.factory, world.settings.data_dir, bob, limit=3, experiment="ui-exp")
        model = ImageLease
    held, release = threading.Event(), threading.Event()

    def audit_then_hold(session, who_, action, *args, **kwargs):  # set_raters' last step: the change made, uncommitted
        real_audit(session, who_, action, *args, **kwargs)
        if action == "experiment.raters" and not held.is_set():
            held.set()
            assert release.wait(60)

    monkeypatch.setattr(members.auth, "audit", audit_then_hold)
    answers: dict[str, object] = {}
    run = _recorder(answers)

    change = threading.Thread(target=run, args=("change", lambda: only(world, "alice")))
    change.start()
    assert held.wait(30)
    rating = threading.Thread(target=run, args=("rating", send))
    rating.start()
    try:
        waited = _waits_for_a_lock(world, rating)
    finally:
        release.set()
        change.join(30)
        rating.join(30)
    assert not change.is_alive() and not rating.is_alive()
    assert "Only alice" in str(answers["change"])
    assert waited, f"the rating did not wait for the admin's change in flight: {answers['rating']!r}"
    if action == "batch":  # named in the request: refused as that name not existing, as after the change (sixth review)
        assert isinstance(answers["rating"], NotFound) and str(answers["rating"]) == repo.no_experiment_named("ui-exp")
        assert str(world.experiment_id) not in str(answers["rating"])
    else:  # refused as a target that does not exist (the fifth review's rule for an unlisted rater), nothing saved
        hidden = (f"there is no image with id {world.image_ids[0]}" if action == "rating"
                  else f"there is no comparison pair with id {pair_id}")
        assert isinstance(answers["rating"], NotFound) and str(answers["rating"]) == hidden
    assert rows(world, model, "bob") == 0


def test_an_admin_taking_a_rater_off_waits_for_their_rating_in_flight(ui_world, monkeypatch):
    """PostgreSQL, the other order: a rating that passed the check and has not committed yet. The admin's change took
    the rater off and committed meanwhile, and the rating was saved after it, by a rater the committed list no longer
    held (found by the fifth review). Now the change waits for the rating's commit: the rating is saved before the
    change, as the list stood when it was checked, and the change then lands."""
    import threading

    world = ui_world
    _pg_only(world)
    only(world, "alice", "bob")
    image = world.image_ids[0]
    held, release = threading.Event(), threading.Event()
    real_add_rating = repo.add_rating

    def add_then_hold(**kwargs):  # the rating checked and inserted, not committed
        out = real_add_rating(**kwargs)
        held.set()
        assert release.wait(60)
        return out

    monkeypatch.setattr(repo, "add_rating", add_then_hold)
    answers: dict[str, object] = {}
    run = _recorder(answers)

    rating = threading.Thread(target=run, args=("rating", lambda: ui_rate.submit(world.factory, who(world, "bob"), image, 4)))
    rating.start()
    assert held.wait(30)
    change = threading.Thread(target=run, args=("change", lambda: only(world, "alice")))
    change.start()
    try:
        waited = _waits_for_a_lock(world, change)
        # while the rating is in flight, the committed list still holds bob (a change that did not wait is visible)
        listed_meanwhile = members.raters_text(world.factory, world.experiment_id)
    finally:
        release.set()
        rating.join(30)
        change.join(30)
    assert not change.is_alive() and not rating.is_alive()
    assert waited and listed_meanwhile == "alice, bob", (
        f"the admin's change committed ({listed_meanwhile!r}) while a rating checked against the old list was in flight")
    assert answers["rating"]["score"] == 4 and "Only alice" in str(answers["change"])
    assert rows(world, Rating, "bob") == 1 and members.raters_text(world.factory, world.experiment_id) == "alice"


def _recorder(answers: dict[str, object]):
    """``run(key, fn)`` for a thread: ``fn()``'s value, or what it raised, into ``answers[key]`` (the test reads it)."""
    def run(key, fn):
        try:
            answers[key] = fn()
        except Exception as e:  # noqa: BLE001 - the test reads it
            answers[key] = e
    return run


# ---------------------------------------------------------------------------------------------
# the sixth review: the Pairs and Compare tabs' own experiment (the page's server-side state), and a hidden
# experiment's row lock on PostgreSQL
# ---------------------------------------------------------------------------------------------


def _ab_pairs(world) -> None:
    """Blind A/B pairs in the experiment: round 1's eval grid against round 0's (as tests/app/test_ab_compare.py)."""
    from app import ab

    with write_session(world.factory) as s:
        round1 = repo.create_round(session=s, experiment_id=world.experiment_id, index=1,
                                   adapter_path="adapters/x/round_1").id
    world.add_round_images(round1, 2, kind="eval", prompts=("a shape",))
    with write_session(world.factory) as s:
        assert ab.create_round_pairs(session=s, round_id=round1, seed=7)


def _text(answer_: tuple) -> str:
    return " ".join(str(part) for part in answer_)


@pytest.mark.parametrize("change", ["taken off", "admins only"])
def test_a_pairs_or_compare_page_left_open_answers_a_rater_taken_off_as_for_no_experiment(ui_world, change):
    """The Pairs and Compare tabs keep the experiment the rater picked in the page's state. Once an admin took the
    rater off it (or made it admins-only) with their page open, the tabs' next answer said "You are not a rater of
    experiment N", where an experiment that does not exist got "There is no experiment with id N" (as a toast): the
    page told a rater not listed that the experiment exists, and its id (found by the sixth review). Every handler of
    the two tabs now checks the list again and answers, for the experiment hidden from the rater, byte for byte what
    it answers for a page whose experiment does not exist: no pair, no image, no name, no id; nothing is written."""
    world = ui_world
    exp, gone = world.experiment_id, 987654
    pairwise.set_feedback(world.factory, who(world, "root"), exp, "pairs")
    _ab_pairs(world)
    _, page = fns(world)
    bob = request("bob")
    # bob's page, opened while he may rate the experiment: each tab shows him a pair
    pairs_page, n, _ = page[("app.ui_pairs", "on_show")](exp, 0, bob)
    compare_page = page[("app.ui_compare", "on_show")](exp, bob)
    assert "data-pair-id" in pairs_page and "data-pair-id" in compare_page
    pair = int(pairs_page.split("data-pair-id='")[1].split("'")[0])
    ab_pair = int(compare_page.split("data-pair-id='")[1].split("'")[0])
    if change == "taken off":
        only(world, "alice")
    else:
        only(world)
    before = {model: rows(world, model) for model in (ComparisonVote, PairSkip, PairShow, Rating, ImageLease)}

    handlers = {  # each handler of the two tabs that reads the page's experiment, as the page calls it
        "Pairs: tab shown": lambda e: page[("app.ui_pairs", "on_show")](e, n, bob),
        "Pairs: vote": lambda e: page[("app.ui_pairs", "on_vote")](
            e, n, gr.EventData(None, {"pair_id": pair, "choice": "a"}), bob),
        "Pairs: skip": lambda e: page[("app.ui_pairs", "on_vote")](
            e, n, gr.EventData(None, {"pair_id": pair, "choice": "skip"}), bob),
        "Pairs: timer on an empty page": lambda e: page[("app.ui_pairs", "on_poll")](
            e, n, {"pair": False, "digest": ""}, bob),
        "Compare: tab shown": lambda e: page[("app.ui_compare", "on_show")](e, bob),
        "Compare: vote": lambda e: page[("app.ui_compare", "on_vote")](
            e, gr.EventData(None, {"pair_id": ab_pair, "choice": "a"}), bob),
        "Compare: skip": lambda e: page[("app.ui_compare", "on_vote")](
            e, gr.EventData(None, {"pair_id": ab_pair, "choice": "skip"}), bob),
    }
    for name, call in handlers.items():
        hidden, nothing = answer(call, exp), answer(call, gone)
        assert hidden == nothing, name
        text = _text(hidden)
        assert str(gone) not in text, name  # so the answer names no id at all: it is the same for both
        assert "ui-exp" not in text and f"experiment {exp}" not in text, name
        assert "data-pair-id" not in text and "<img" not in text, name
    assert {model: rows(world, model) for model in before} == before
    # alice (listed, or an admin for admins-only) still gets her pairs, and bob his once he is listed again
    assert "data-pair-id" in page[("app.ui_pairs", "on_show")](exp, n, request("root" if change == "admins only"
                                                                               else "alice"))[0]
    everyone(world)
    assert "data-pair-id" in page[("app.ui_pairs", "on_show")](exp, n, bob)[0]
    assert "data-pair-id" in page[("app.ui_compare", "on_show")](exp, bob)


@pytest.mark.parametrize("action", ["rating", "skip", "pair vote", "undo"])
def test_a_rater_not_listed_is_answered_at_once_while_an_admin_holds_the_experiment(ui_world, action):
    """PostgreSQL: a rater's write took the experiment's row FOR SHARE before it checked who may rate it, so for an
    experiment hidden from the rater the answer waited for an admin's change of that experiment in flight (its row
    locked), where an image or pair that does not exist was answered at once: the wait told the rater that the id
    exists (found by the sixth review). The list is now checked first, without the lock: a rater not listed is
    answered at once, the lock untouched; one who may rate still takes the lock and is checked again under it, so a
    listed rater's write still waits for the admin's change (the fifth review's race stays fixed)."""
    import threading
    import time

    from db.models import Experiment

    world = ui_world
    _pg_only(world)
    exp, image, data_dir = world.experiment_id, world.image_ids[0], world.settings.data_dir
    target = image
    if action == "pair vote":
        pairwise.set_feedback(world.factory, who(world, "root"), exp, "pairs")
        api, _ = fns(world)
        target = api["next_pair"]("ui-exp", request("alice"))["pair"]["pair_id"]
    only(world, "alice")
    bob, alice = who(world, "bob"), who(world, "alice")
    if action == "undo":
        ui_rate.submit(world.factory, alice, image, 4)  # something for alice to undo

    def send(rater):
        """What the rater sees of the action: the refusal's sentence, or None when it was saved."""
        page = {"experiment_id": exp, "round_id": world.round_id, "batch": [image]}
        if action == "rating":
            ui_rate.submit(world.factory, rater, target, 4)
            return None
        if action == "skip":
            return ui_rate.skip(world.factory, data_dir, rater, page, {"image_id": target}, batch_size=4).message
        if action == "pair vote":
            pairwise.submit_vote(world.factory, rater, target, "a")
            return None
        return ui_rate.undo(world.factory, data_dir, rater, page, batch_size=4).message

    expected = {  # what bob is told, written out: the fifth review's answers for a rater not listed
        "rating": f"there is no image with id {image}", "skip": f"there is no image with id {image}",
        "pair vote": f"there is no comparison pair with id {target}",
        "undo": sentence(world),  # his own step: named, as before
    }[action]
    before = {model: rows(world, model) for model in (Rating, Skip, ComparisonVote, PairSkip, ImageLease)}
    answers: dict[str, object] = {}
    run = _recorder(answers)
    bob_thread = threading.Thread(target=run, args=("bob", lambda: send(bob)))
    alice_thread = threading.Thread(target=run, args=("alice", lambda: send(alice)))
    admin = world.factory()  # an admin's change of the experiment in flight: its row locked, not committed
    try:
        admin.execute(select(Experiment.id).where(Experiment.id == exp).with_for_update())
        started = time.monotonic()
        bob_thread.start()
        bob_thread.join(10)
        took = time.monotonic() - started
        answered_while_held = not bob_thread.is_alive()
        alice_thread.start()
        alice_waited = _waits_for_a_lock(world, alice_thread)
    finally:
        admin.rollback()
        admin.close()
        bob_thread.join(30)
        if alice_thread.ident is not None:
            alice_thread.join(30)
    assert answered_while_held and took < 2.0, (
        f"a rater not listed waited for the admin's lock on a hidden experiment ({took:.1f} s): {answers.get('bob')!r}")
    got = answers["bob"]
    assert (str(got) if isinstance(got, Exception) else got) == expected
    assert alice_waited, f"a listed rater's {action} did not wait for the admin's change in flight: {answers['alice']!r}"
    assert answers["alice"] is None, answers["alice"]  # saved once the lock was let go
    after = {model: rows(world, model, "bob") for model in before}
    assert after == dict.fromkeys(before, 0)  # nothing of bob's written
