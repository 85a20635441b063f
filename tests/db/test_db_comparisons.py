"""db.comparisons: pairs, votes, lineage and the A/B win rates, against hand computations; migration 0005 keeps data."""

import math

import pytest
from sqlalchemy import select

from db import comparisons as cmp
from db import migrate, repo
from db.engine import make_engine, read_session, session_factory, write_session
from db.errors import Conflict, InvalidInput, NotFound
from db.models import Round
from tests.db.conftest import fake_image_fields


def _world(db_factory, *, n_prompts=4, parent_of_2=None):
    """Rounds 0, 1, 2 with eval images for the same prompts and seeds; two raters (returns ids)."""
    with write_session(db_factory) as s:
        exp = repo.create_experiment(session=s, name="ab", model_spec="models/shapes-sd", method="seiko-ucb",
                                     config={}, budgets=[4, 4, 4], prompts=["p"])
        rounds, images = [], {}
        for k in range(3):
            r = repo.create_round(session=s, experiment_id=exp.id, index=k,
                                  adapter_path=None if k == 0 else f"adapters/r{k}")
            rounds.append(r.id)
            for i in range(n_prompts):
                fields = {**fake_image_fields(100 * k + i), "prompt": f"eval {i}", "seed": i}
                images[(k, i)] = repo.add_image(session=s, round_id=r.id, kind="eval", **fields).id
        raters = [repo.create_rater(session=s, name=f"r{i}", password_hash="x$hash").id for i in range(2)]
        if parent_of_2 is not None:
            cmp.set_round_parent(session=s, round_id=rounds[2], parent_round_id=rounds[parent_of_2])
        return exp.id, rounds, images, raters


def test_wilson_interval_matches_a_hand_computation():
    # 7 of 10: the textbook value (e.g. Newcombe 1998, table I) is 0.3968 to 0.8922
    lo, hi = cmp.wilson_interval(7, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.3968, 0.8922)

    # the bounds are the two roots of (p_hat - p)^2 = z^2 p (1 - p) / n; found here by bisection
    def f(p, p_hat=7.5 / 12, n=12, z=cmp.Z95):
        return (p_hat - p) ** 2 - z * z * p * (1 - p) / n

    def root(a, b):
        for _ in range(200):
            m = (a + b) / 2
            a, b = (m, b) if f(a) * f(m) > 0 else (a, m)
        return (a + b) / 2

    lo, hi = cmp.wilson_interval(7.5, 12)
    assert lo == pytest.approx(root(0.0, 7.5 / 12), abs=1e-12)
    assert hi == pytest.approx(root(7.5 / 12, 1.0), abs=1e-12)
    assert cmp.wilson_interval(0, 5)[0] == 0.0 and cmp.wilson_interval(5, 5)[1] == pytest.approx(1.0)
    with pytest.raises(InvalidInput):
        cmp.wilson_interval(1, 0)


def test_create_pairs_validates_before_writing(db_factory):
    exp, rounds, images, raters = _world(db_factory)
    with write_session(db_factory) as s:
        with pytest.raises(InvalidInput, match="two different images"):
            cmp.create_pairs(session=s, experiment_id=exp, round_id=rounds[1], kind="ab",
                             pairs=[(images[(1, 0)], images[(0, 0)]), (images[(1, 1)], images[(1, 1)])])
        with pytest.raises(InvalidInput, match="unknown comparison kind"):
            cmp.create_pairs(session=s, experiment_id=exp, round_id=rounds[1], kind="abx", pairs=[])
        with pytest.raises(NotFound, match="no image with id 99999"):
            cmp.create_pairs(session=s, experiment_id=exp, round_id=rounds[1], kind="ab", pairs=[(images[(1, 0)], 99999)])
        assert cmp.list_pairs(session=s, experiment_id=exp, kind="ab") == []


def test_next_pair_and_votes(db_factory):
    exp, rounds, images, (r0, r1) = _world(db_factory)
    with write_session(db_factory) as s:
        old = cmp.create_pairs(session=s, experiment_id=exp, round_id=rounds[1], kind="ab",
                               pairs=[(images[(1, i)], images[(0, i)]) for i in range(2)])
        new = cmp.create_pairs(session=s, experiment_id=exp, round_id=rounds[2], kind="ab",
                               pairs=[(images[(1, i)], images[(2, i)]) for i in range(2)])
        old_ids, new_ids = {p.id for p in old}, {p.id for p in new}
    seen = []
    for _ in range(2):  # the newest round's pairs first, never one already voted on
        with write_session(db_factory) as s:
            pair = cmp.next_pair(session=s, experiment_id=exp, rater_id=r0, kind="ab")
            seen.append(pair.id)
            cmp.record_vote(session=s, pair_id=pair.id, rater_id=r0, choice="a")
    assert set(seen) == new_ids
    with read_session(db_factory) as s:
        # the older round's pairs show round 1's images again, which r0 has met: not offered (the blind rule)
        assert cmp.next_pair(session=s, experiment_id=exp, rater_id=r0, kind="ab") is None
        assert cmp.count_unvoted(session=s, experiment_id=exp, rater_id=r0, kind="ab") == 0
    with write_session(db_factory) as s:  # r1 votes on the older round's pairs: four votes in all
        for pair_id in sorted(old_ids):
            cmp.record_vote(session=s, pair_id=pair_id, rater_id=r1, choice="b")
        seen += sorted(old_ids)
        assert cmp.next_pair(session=s, experiment_id=exp, rater_id=r1, kind="preference") is None
    with write_session(db_factory) as s:  # voting again edits the row
        cmp.record_vote(session=s, pair_id=seen[0], rater_id=r0, choice="tie")
    with read_session(db_factory) as s:
        rows = cmp.votes(session=s, experiment_id=exp, kind="ab")
        assert len(rows) == 4 and {v.choice for v in rows if v.pair_id == seen[0]} == {"tie"}
        assert len(cmp.votes(session=s, experiment_id=exp, kind="ab", round_id=rounds[2])) == 2
    with write_session(db_factory) as s:
        with pytest.raises(InvalidInput, match="a vote must be one of"):
            cmp.record_vote(session=s, pair_id=seen[0], rater_id=r0, choice="left")
        with pytest.raises(NotFound, match="no comparison pair with id 99999"):
            cmp.record_vote(session=s, pair_id=99999, rater_id=r0, choice="a")
        with pytest.raises(NotFound):
            cmp.record_vote(session=s, pair_id=seen[0], rater_id=99999, choice="a")


def _vote_all(db_factory, exp, rater_choices):
    """rater_choices: {rater_id: {pair_id: choice}}."""
    with write_session(db_factory) as s:
        for rater, choices in rater_choices.items():
            for pair, choice in choices.items():
                cmp.record_vote(session=s, pair_id=pair, rater_id=rater, choice=choice)


def test_ab_win_rates_by_hand(db_factory):
    exp, rounds, images, (r0, r1) = _world(db_factory)
    with write_session(db_factory) as s:
        # round 1 against the base (its parent too): new image on the left for prompts 0, 1 and on the right for 2, 3
        p1 = [p.id for p in cmp.create_pairs(session=s, experiment_id=exp, round_id=rounds[1], kind="ab", pairs=[
            (images[(1, 0)], images[(0, 0)]), (images[(1, 1)], images[(0, 1)]),
            (images[(0, 2)], images[(1, 2)]), (images[(0, 3)], images[(1, 3)])])]
        # round 2 against round 1 (previous) and against round 0 (base)
        p2prev = [p.id for p in cmp.create_pairs(session=s, experiment_id=exp, round_id=rounds[2], kind="ab", pairs=[
            (images[(2, 0)], images[(1, 0)]), (images[(1, 1)], images[(2, 1)])])]
        p2base = [p.id for p in cmp.create_pairs(session=s, experiment_id=exp, round_id=rounds[2], kind="ab", pairs=[
            (images[(0, 0)], images[(2, 0)])])]
    _vote_all(db_factory, exp, {
        # round 1: r0 -> win, win, win ('b' is new), tie; r1 -> loss, win, loss, win
        r0: {p1[0]: "a", p1[1]: "a", p1[2]: "b", p1[3]: "tie", p2prev[0]: "b", p2prev[1]: "b", p2base[0]: "b"},
        r1: {p1[0]: "b", p1[1]: "a", p1[2]: "a", p1[3]: "b", p2prev[0]: "tie", p2base[0]: "a"},
    })
    with read_session(db_factory) as s:
        rates = cmp.ab_win_rates(session=s, experiment_id=exp)
    assert sorted(rates) == [1, 2]
    one = rates[1]
    assert one["parent_index"] == 0 and one["vs_previous"] == one["vs_base"]
    assert {k: one["vs_base"][k] for k in ("wins", "losses", "ties", "n", "pairs")} == {
        "wins": 5, "losses": 2, "ties": 1, "n": 8, "pairs": 4}
    assert one["vs_base"]["rate"] == pytest.approx(5.5 / 8)
    # Wilson by hand: p = 0.6875, n = 8 (4 pairs of 2 votes by 2 raters; fewer than 15 raters, so about these
    # raters, clustered by pair only: deff 0.55, never narrowed below the 8 votes), at Student's t with 4 - 1 df from
    # printed tables (fourteenth review: for a while two-way from 2 raters, t with min(4, 2) - 1 = 1 df; eleventh
    # review: the normal 1.96 at deff <= 1 made the interval jump where deff crossed 1)
    assert (one["vs_base"]["raters"], one["vs_base"]["over_raters"]) == (2, False)
    p, n, z = 5.5 / 8, 8, 3.182446
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert one["vs_base"]["ci95"] == pytest.approx([centre - half, centre + half], abs=1e-6)
    two = rates[2]
    assert two["parent_index"] == 1
    # vs round 1: r0 loss ('b' is round 1 in pair 0), r0 win ('b' is round 2 in pair 1), r1 tie
    assert (two["vs_previous"]["wins"], two["vs_previous"]["losses"], two["vs_previous"]["ties"]) == (1, 1, 1)
    assert two["vs_previous"]["rate"] == pytest.approx(0.5)
    # vs base: r0 win, r1 loss
    assert (two["vs_base"]["wins"], two["vs_base"]["losses"], two["vs_base"]["n"], two["vs_base"]["pairs"]) == (1, 1, 2, 1)
    assert two["vs_previous"]["pairs"] == 2


def _wilson(p: float, n: float, z: float) -> list[float]:
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [centre - half, centre + half]


def _unanimous_raters(db_factory, winners: int, losers: int):
    """Round 1 against the base on 4 pairs; ``winners`` raters prefer round 1 on every pair, ``losers`` the base."""
    exp, rounds, images, (r0, r1) = _world(db_factory)
    with write_session(db_factory) as s:
        more = [repo.create_rater(session=s, name=f"x{i}", password_hash="x$hash").id
                for i in range(winners + losers - 2)]
        pairs = [p.id for p in cmp.create_pairs(session=s, experiment_id=exp, round_id=rounds[1], kind="ab",
                                                 pairs=[(images[(1, i)], images[(0, i)]) for i in range(4)])]
    raters = [r0, r1, *more]
    _vote_all(db_factory, exp, {r: {p: "a" if k < winners else "b" for p in pairs} for k, r in enumerate(raters)})
    with read_session(db_factory) as s:
        return cmp.ab_win_rates(session=s, experiment_id=exp)[1]["vs_base"]


def test_ab_win_rates_are_about_two_raters_and_over_fifteen(db_factory):
    """Fourteenth review. Each rater unanimous across 4 pairs, every pair split alike: the pairs alone see no
    clustering (every pair's residual 0), the raters all of it.

    2 raters (r0 prefers the new round on every pair, r1 the base): fewer than 15, so the interval is about these
    two raters: pairs only, deff 0 floored to 1, Wilson over the 8 votes at t with 4 - 1 df (3.182446, printed
    tables). (For a while two-way: deff 6, t with 1 df, nearly [0, 1].)

    15 raters, 8 for the new round and 7 for the base: over raters like these, two-way. By hand (N = 60, rate
    r = 8/15): V_pair = 0; V_rater = 15/14 * (8 (4 - 4r)^2 + 7 (4r)^2) / 60^2 = 15/14 * 240 r (1 - r) / 3600; the
    independent-vote variance (= the single votes' term) is 60 r (1 - r) / (59 * 60) = r (1 - r) / 59; so deff =
    59 * 15 * 240 / (14 * 3600) - 1 = 45/14: Wilson at 60 * 14/45 votes at t with min(4, 15) - 1 = 3 df."""
    two = _unanimous_raters(db_factory, 1, 1)
    assert (two["wins"], two["losses"], two["n"], two["pairs"], two["raters"]) == (4, 4, 8, 4, 2)
    assert two["over_raters"] is False
    assert two["ci95"] == pytest.approx(_wilson(0.5, 8, 3.182446), abs=1e-6)


def test_ab_win_rates_over_fifteen_raters_are_two_way(db_factory):
    """The 15-rater case of the test above (its docstring has the hand computation)."""
    got = _unanimous_raters(db_factory, 8, 7)
    assert (got["wins"], got["losses"], got["n"], got["pairs"], got["raters"]) == (32, 28, 60, 4, 15)
    assert got["over_raters"] is True
    assert got["ci95"] == pytest.approx(_wilson(8 / 15, 60 * 14 / 45, 3.182446), abs=1e-6)
    # the pairs alone: every pair 8-7, deff 0 floored to 1, Wilson over the 60 votes at t with 3 df: far narrower
    assert _wilson(8 / 15, 60, 3.182446)[0] > got["ci95"][0] + 0.1


def test_rollback_lineage_and_win_rates_against_the_parent(db_factory):
    exp, rounds, images, (r0, _) = _world(db_factory, parent_of_2=0)  # round 2 was trained from the base model
    with write_session(db_factory) as s:
        assert cmp.parent_of(session=s, round_id=rounds[2]).index == 0
        assert cmp.parent_of(session=s, round_id=rounds[1]).index == 0
        assert cmp.parent_of(session=s, round_id=rounds[0]) is None
        pair = cmp.create_pairs(session=s, experiment_id=exp, round_id=rounds[2], kind="ab",
                                pairs=[(images[(2, 0)], images[(0, 0)])])[0]
        cmp.record_vote(session=s, pair_id=pair.id, rater_id=r0, choice="a")
        bad = cmp.create_pairs(session=s, experiment_id=exp, round_id=rounds[2], kind="ab",
                               pairs=[(images[(2, 1)], images[(1, 1)])])  # round 1 is not round 2's parent any more
        with pytest.raises(Conflict, match="neither its parent nor the base model"):
            cmp.ab_win_rates(session=s, experiment_id=exp)
        s.delete(bad[0])
        s.flush()
        rates = cmp.ab_win_rates(session=s, experiment_id=exp)
        assert rates[2]["parent_index"] == 0 and rates[2]["vs_previous"]["wins"] == 1 == rates[2]["vs_base"]["wins"]
        with pytest.raises(InvalidInput, match="earlier round"):
            cmp.set_round_parent(session=s, round_id=rounds[1], parent_round_id=rounds[2])


def test_migration_0005_keeps_rounds_and_downgrades(empty_db_url):
    migrate.upgrade(empty_db_url, "0004")
    engine = make_engine(empty_db_url)
    try:
        # 0004's schema has no parent_round_id (the models have it), so rows are written with SQL
        with engine.begin() as c:
            c.exec_driver_sql("INSERT INTO experiments (id, name, model_spec, method, config, budgets, prompts, status, overlap, "
                              "created_at, raters_see_dashboard, standardize_scores) VALUES "
                              "(1, 'm', 'x', 'greedy', '{}', '[1]', '[\"p\"]', 'active', 1, '2026-11-30 00:00:00', false, false)")
            c.exec_driver_sql("INSERT INTO rounds (id, experiment_id, \"index\", status, metrics, created_at) VALUES "
                              "(1, 1, 0, 'done', '{}', '2026-11-30 00:00:00'), (2, 1, 1, 'labeling', '{}', '2026-11-30 00:00:00')")
    finally:
        engine.dispose()
    migrate.upgrade(empty_db_url)
    engine = make_engine(empty_db_url)
    try:
        with read_session(session_factory(engine)) as s:
            assert [(r.index, r.status, r.parent_round_id) for r in s.scalars(select(Round).order_by(Round.index))] == [
                (0, "done", None), (1, "labeling", None)]
    finally:
        engine.dispose()
    migrate.downgrade(empty_db_url, "0004")
    assert migrate.current_revision(empty_db_url) == "0004"
    engine = make_engine(empty_db_url)
    try:
        with engine.connect() as c:
            assert c.exec_driver_sql("SELECT count(*) FROM rounds").scalar() == 2
    finally:
        engine.dispose()
