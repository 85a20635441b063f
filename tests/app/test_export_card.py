"""The model card's facts after a rollback: the exported round's lineage, not every round index below it.

The experiment is written straight into a migrated SQLite database with ``db.repo`` (no model, no worker): rounds
0, 1, 2 in a chain, then round 3 trained from round 1 (``rounds.parent_round_id``), so round 3's lineage is
0 → 1 → 3 and round 2 is an abandoned branch. Every expected figure below is counted by hand from the rows.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from app import export_card
from app.settings import Settings
from db import comparisons, repo
from db import testing as dbt
from db.engine import make_engine, read_session, session_factory, write_session
from seiko_core import model_card

# per round: the query images' ratings as (image number, rater, score); the KLs the worker would have recorded
RATINGS = {
    0: [(0, "ann", 7), (0, "bob", 5), (1, "ann", 3)],  # 3 ratings of 2 images by ann, bob
    1: [(0, "cy", 6), (1, "cy", 4)],  # 2 ratings of 2 images by cy
    2: [(0, "ann", 2), (0, "dan", 1), (1, "bob", 2)],  # the abandoned round: 3 ratings of 2 images; dan rates only here
    3: [(0, "ann", 9)],  # round 3's own rating: collected after round 3 was trained, so it trained nothing of it
}
KL = {1: (0.25, 0.5, 0.125), 2: (4.0, 8.0, 2.0), 3: (0.5, 1.0, 0.25)}  # (eval mean, eval max, training KL last step)
# how the shown images were chosen (app.selection.record's fields); round 1 predates selection (no record)
SELECTION = {3: {"selection": "spread", "candidate_factor": 2.0, "honest_share": 0.25, "candidates": 4, "shown": 2,
                 "honest_share_shown": 0.5, "images": {}, "unshown": []},  # at least one random image: 1 of 2
             2: {"selection": "random", "candidate_factor": 1.0, "honest_share": 0.25, "candidates": 2, "shown": 2,
                 "images": {}, "unshown": []}}


def _sha(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


@pytest.fixture
def rolled_back(tmp_path, _sqlite_at_head):
    """(settings, experiment id) of the experiment above; round 3 is open for labeling, rounds 0-2 are done."""
    url = dbt.copy_sqlite(_sqlite_at_head, tmp_path / "seiko.db")
    settings = Settings.from_env({"data_dir": str(tmp_path / "data"), "db_url": url, "model": "toy/model"}, environ={})
    engine = make_engine(url)
    try:
        with write_session(session_factory(engine)) as s:
            exp = repo.create_experiment(session=s, name="rollback run", model_spec="toy/model", method="ucb",
                                         config={"method": "ucb", "app": {"selection": "spread", "candidate_factor": 2}},
                                         budgets=[4], prompts=["a star", "a circle"])
            raters = {n: repo.create_rater(session=s, name=f"{n}7", password_hash="x$h").id  # unique strings: ann7 ...
                      for n in ("ann", "bob", "cy", "dan")}
            rounds, evals = {}, {}
            for k in range(4):
                r = repo.create_round(session=s, experiment_id=exp.id, adapter_path=None if k == 0 else f"adapters/e/round_{k}")
                rounds[k] = r
                if k == 3:  # trained from round 1's adapter (app.ab.train_next_from; the worker records it)
                    comparisons.set_round_parent(session=s, round_id=r.id, parent_round_id=rounds[1].id)
                if k in KL:
                    mean, top, train = KL[k]
                    repo.update_round_metrics(session=s, round_id=r.id, metrics={
                        "eval": {"kl_to_prev": mean, "kl_to_prev_max": top}, "train": {"finetune": {"kl_last": train}},
                        **({"selection": SELECTION[k]} if k in SELECTION else {})})
                images = [repo.add_image(session=s, round_id=r.id, prompt=p, seed=i, file_path=f"images/{k}-{i}.png",
                                         sha256=_sha(k, i), embedding=b"\0" * 8, embedding_dim=2).id
                          for i, p in enumerate(["a star", "a circle"])]
                evals[k] = repo.add_image(session=s, round_id=r.id, prompt="a star", seed=99, kind="eval",
                                          file_path=f"images/{k}-eval.png", sha256=_sha(k, "eval"), embedding=b"\0" * 8,
                                          embedding_dim=2).id
                repo.open_round(session=s, round_id=r.id)
                for i, name, score in RATINGS[k]:
                    repo.add_rating(session=s, image_id=images[i], rater_id=raters[name], score=score)
                if k < 3:
                    repo.set_round_status(session=s, round_id=r.id, status="training")
                    repo.set_round_status(session=s, round_id=r.id, status="done")
            # blind A/B: round 2 beat its parent round 1 once, round 3 beat round 1 once (eval images, never rated)
            for k, pair in ((2, (evals[2], evals[1])), (3, (evals[1], evals[3]))):
                (p,) = comparisons.create_pairs(session=s, experiment_id=exp.id, round_id=rounds[k].id, kind="ab",
                                                pairs=[pair])
                comparisons.record_vote(session=s, pair_id=p.id, rater_id=raters["ann"], choice="a" if k == 2 else "b")
            exp_id = exp.id
    finally:
        engine.dispose()
    return settings, exp_id


def test_lineage_follows_the_recorded_parent_back_to_round_0(rolled_back):
    settings, exp_id = rolled_back
    engine = make_engine(settings.db_url)
    try:
        with read_session(session_factory(engine)) as s:
            got = {r.index: [x.index for x in comparisons.lineage(session=s, round_id=r.id)]
                   for r in repo.list_rounds(session=s, experiment_id=exp_id)}
    finally:
        engine.dispose()
    assert got == {0: [0], 1: [0, 1], 2: [0, 1, 2], 3: [0, 1, 3]}


def test_card_of_a_rolled_back_round_lists_its_lineage_labels_and_kl(rolled_back, tmp_path):
    settings, exp_id = rolled_back
    card = export_card.facts(settings, exp_id, 3)
    assert card["round"] == 3 and card["lineage"] == [0, 1, 3]
    assert card["rounds_total"] == 4 and card["rounds_not_in_lineage"] == [2]
    # per lineage round, by hand from RATINGS: (index, trained from, ratings of its images, their raters, ratings
    # that trained it = every rating on the rounds before it: round 1 <- round 0's 3; round 3 <- 3 + 2 + 3 = 8)
    assert [(r["index"], r["parent"], r["labels"], r["raters"], r["trained_on_labels"]) for r in card["rounds"]] == [
        (0, None, 3, 2, None), (1, 0, 2, 1, 3), (3, 1, 1, 1, 8)]
    assert [r["kl_to_prev"] for r in card["rounds"]] == [None, 0.25, 0.5]
    assert [r["train_kl_last"] for r in card["rounds"]] == [None, 0.125, 0.25]
    # round 3's reward model was fitted on every rating up to its watermark (rounds 0, 1 and the abandoned 2):
    # 3 + 2 + 3 = 8 ratings of 2 + 2 + 2 = 6 images by ann, bob, cy, dan; round 3's own rating is not among them
    assert card["labels"] == {"count": 8, "images": 6} and card["raters"] == {"count": 4}
    assert card["labels_outside_lineage"] == {"count": 3, "images": 2, "rounds": [2]}
    # KL spent along 0 -> 1 -> 3 only: round 1's 0.25 to round 0, round 3's 0.5 to round 1 (not round 2's 4.0)
    assert card["kl_total"] == 0.25 + 0.5 == 0.75
    assert list(card["win_rates"]) == ["3"] and card["win_rates"]["3"]["parent_index"] == 1  # round 2 is not in it
    assert card["win_rates"]["3"]["vs_previous"]["raters"] == 1 and card["win_rates"]["3"]["vs_base"]["n"] == 0

    model_card.write(tmp_path, card)
    assert model_card.read(tmp_path) == json.loads(model_card.to_json(card))  # what the Markdown was rendered from
    text = (tmp_path / model_card.CARD_MD).read_text()
    assert "lineage 0 → 1 → 3" in text and "4 rounds exist" in text
    assert "**Not in the lineage**: 1 of the experiment's 4 rounds: round 2 (abandoned by a rollback)\n" in text
    assert ("**Labels**: 8 ratings of 6 images trained this adapter (every rating on the rounds before round 3, "
            "including 3 ratings of 2 images on round 2, outside the lineage") in text
    # round 3's one vote (ann's, for round 3 over round 1): the interval is about this one rater (fourteenth review);
    # no votes against the base model, so no line for it
    wins = [line for line in text.splitlines() if line.startswith("- round ")]
    assert len(wins) == 1 and wins[0].startswith("- round 3 vs round 1 (the round it was trained from): 1.00 [")
    assert wins[0].endswith("] (1 vote, 1 pair; about this rater)")
    assert "**Raters**: 4\n" in text and text.count("**KL spent**") == 1 and "to the round it was trained from): 0.75\n" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    old = "every image generated (before selection existed)"
    assert table == [f"| 0 | – | 3 | 2 | – | – | – | – | {old} |", f"| 1 | 0 | 2 | 1 | 3 | 0.25 | 0.5 | 0.125 | {old} |",
                     "| 3 | 1 | 1 | 1 | 8 | 0.5 | 1 | 0.25 | 2 of 4 candidates by spread, a random 50% first |"]
    # the share of random images shown (1 of 2), not the 25% setting (found by review)
    assert [r["selection"] for r in card["rounds"]] == [None, None, {"mode": "spread", "candidates": 4, "shown": 2,
                                                                      "honest_share": 0.5}]
    assert card["experiment_options"]["selection"] == "spread" and card["experiment_options"]["candidate_factor"] == 2
    assert "- **Round options at export** (which images a round shows): " in text and "selection spread" in text
    # the abandoned round 2 showed every image it generated, chosen at random
    two = export_card.facts(settings, exp_id, 2)
    assert model_card.markdown(two).splitlines().count(
        "| 2 | 1 | 3 | 3 | 5 | 4 | 8 | 2 | 2 of 2: every image generated |") == 1
    assert all(n not in text + model_card.to_json(card) for n in ("ann7", "bob7", "cy7", "dan7"))  # counted, not named


def test_card_of_the_abandoned_round_is_its_own_chain(rolled_back):
    settings, exp_id = rolled_back
    card = export_card.facts(settings, exp_id, 2)
    assert card["lineage"] == [0, 1, 2] and card["rounds_not_in_lineage"] == [3]  # a later round, not a rollback
    assert card["labels"] == {"count": 5, "images": 4} and card["raters"] == {"count": 3}  # rounds 0 and 1
    assert card["labels_outside_lineage"] == {"count": 0, "images": 0, "rounds": []}
    assert card["kl_total"] == 0.25 + 4.0
    assert list(card["win_rates"]) == ["2"]
    text = model_card.markdown(card)
    assert "outside the lineage" not in text and "4 rounds: round 3 (trained after round 2)\n" in text


def test_the_card_counts_the_comparisons_that_trained_the_adapter(rolled_back, tmp_path):
    """With comparisons as feedback the votes train the reward model too: a pairs-only experiment's card said
    "0 ratings, 0 raters" (found by review). Two votes on one preference pair of round 0, by bob and a new eve."""
    settings, exp_id = rolled_back
    engine = make_engine(settings.db_url)
    try:
        with write_session(session_factory(engine)) as s:
            round0 = repo.get_round_by_index(session=s, experiment_id=exp_id, index=0)
            a, b = [i.id for i in repo.list_images(session=s, round_id=round0.id, kind="query")]
            (pair,) = comparisons.create_pairs(session=s, experiment_id=exp_id, round_id=round0.id, kind="preference",
                                               pairs=[(a, b)])
            eve = repo.create_rater(session=s, name="eve7", password_hash="x$h").id
            bob = repo.get_rater_by_name(session=s, name="bob7").id
            comparisons.record_vote(session=s, pair_id=pair.id, rater_id=bob, choice="a")
            comparisons.record_vote(session=s, pair_id=pair.id, rater_id=eve, choice="b")
    finally:
        engine.dispose()
    card = export_card.facts(settings, exp_id, 3)
    assert card["comparisons"] == {"count": 2, "pairs": 1} and card["raters"] == {"count": 5}  # ann bob cy dan + eve
    assert [(r["index"], r["comparisons"], r["trained_on_comparisons"]) for r in card["rounds"]] == [
        (0, 2, None), (1, 0, 2), (3, 0, 2)]
    text = model_card.markdown({**card, "format": "diffusers", "files": []})
    assert ("**Labels**: 8 ratings of 6 images and 2 comparisons of 1 pairs trained this adapter (every rating and "
            "comparison on the rounds before round 3") in text


def test_an_admin_given_name_or_prompt_is_plain_text_in_the_card():
    """The experiment's name went into the card's Markdown heading as it was, and the check's prompt into its text:
    a name with <b> or a backtick was read as markup by a host that renders the card (found by review)."""
    from seiko_core import model_card

    card = {"experiment": {"name": "<img src=x onerror=alert(1)> `x` *y*"}, "round": 1, "labels": {"count": 0, "images": 0},
            "raters": {"count": 0},
            "verification": {"passed": True, "kind": "lora", "loader": "load_lora_weights",
                             "settings": {"prompt": "<script>alert(1)</script>", "seed": 0, "steps": 8},
                             "vs_base": {"mean_abs": 1.0, "max_abs": 2}, "vs_app": {"mean_abs": 0.0, "max_abs": 0},
                             "thresholds": {"min_base_mean_abs": 0.1, "max_app_mean_abs": 1.0, "max_app_max_abs": 8}}}
    text = model_card.markdown(card)
    assert "<img" not in text and "<script" not in text and "`x`" not in text and "*y*" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text  # still there, as text


def test_the_card_says_whose_preference_each_win_rate_interval_is_about():
    """Fourteenth review: the card carried each win rate's ``raters`` and ``over_raters`` in its JSON but its text did
    not say which reading the interval has (about these N raters below ``RATERS_TO_GENERALISE``, over raters like
    these from it). The text now says it in the dashboard's words (``ui_compare._rate``'s phrase); a card of an
    older export, without those fields, still renders and says nothing about raters."""
    from app import ui_compare
    from db import comparisons
    from seiko_core import model_card

    few = {"wins": 30, "losses": 30, "ties": 0, "n": 60, "pairs": 4, "raters": comparisons.RATERS_TO_GENERALISE - 1,
           "over_raters": False, "rate": 0.5, "ci95": [0.3, 0.7]}
    many = {**few, "raters": comparisons.RATERS_TO_GENERALISE, "over_raters": True}
    old = {k: v for k, v in few.items() if k not in ("raters", "over_raters")}
    base = {"experiment": {"name": "x"}, "round": 2, "labels": {"count": 0, "images": 0}, "raters": {"count": 0}}

    text = model_card.markdown({**base, "win_rates": {"2": {"parent_index": 1, "vs_previous": few, "vs_base": many}}})
    assert "- round 2 vs round 1 (the round it was trained from): 0.50 [0.30, 0.70] (60 votes, 4 pairs; about these 14 raters)" in text
    assert "- round 2 vs round 0 (the base model): 0.50 [0.30, 0.70] (60 votes, 4 pairs; over raters like these 15)" in text
    # the dashboard's own words for the same cells
    assert ui_compare._rate(few).endswith("; about these 14 raters)") and ui_compare._rate(many).endswith(
        "; over raters like these 15)")

    # an old card (JSON without raters / over_raters): rendered, nothing said about raters
    text = model_card.markdown({**base, "win_rates": {"2": {"parent_index": 1, "vs_previous": old, "vs_base": old}}})
    assert "- round 2 vs round 1 (the round it was trained from): 0.50 [0.30, 0.70] (60 votes, 4 pairs)\n" in text
    assert "- round 2 vs round 0 (the base model): 0.50 [0.30, 0.70] (60 votes, 4 pairs)\n" in text
    assert "about th" not in text and "like these" not in text
