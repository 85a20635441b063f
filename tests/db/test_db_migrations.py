from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select

from db import migrate
from db import testing as dbt
from db.engine import make_engine
from db.errors import InvalidInput, SchemaOutOfDate
from db.models import Base

APP_TABLES = {t.name for t in Base.metadata.sorted_tables}


def _tables(url):
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _alice_and_an_image(s, *, open_round: bool = True) -> tuple[int, int, int]:
    """A rater (alice) and one image of round 0 of an experiment, the round opened unless ``open_round`` is False:
    (rater id, round id, image id)."""
    from db import repo

    rater = repo.create_rater(session=s, name="alice", password_hash="h").id
    exp = repo.create_experiment(session=s, name="e", model_spec="m", method="greedy", config={}, budgets=[1],
                                 prompts=["p"]).id
    round_ = repo.create_round(session=s, experiment_id=exp).id
    image = repo.add_image(session=s, round_id=round_, prompt="p", seed=0, file_path="i.png", sha256="0" * 64,
                           embedding=b"\0" * 8, embedding_dim=2).id
    if open_round:
        repo.open_round(session=s, round_id=round_)
    return rater, round_, image


def _drift(url):
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def test_upgrade_creates_the_schema_and_matches_the_models(empty_db_url):
    assert _tables(empty_db_url) == set()
    migrate.upgrade(empty_db_url)
    assert _tables(empty_db_url) == APP_TABLES | {"alembic_version"}
    assert migrate.current_revision(empty_db_url) == migrate.head_revision()
    assert _drift(empty_db_url) == []


def test_downgrade_to_base_and_upgrade_again(empty_db_url):
    migrate.upgrade(empty_db_url)
    migrate.downgrade(empty_db_url, "base")
    assert _tables(empty_db_url) <= {"alembic_version"}
    assert migrate.current_revision(empty_db_url) is None
    migrate.upgrade(empty_db_url)
    assert migrate.current_revision(empty_db_url) == migrate.head_revision()
    assert _drift(empty_db_url) == []


def test_check_at_head_refuses_an_unmigrated_database_with_a_clear_message(empty_db_url):
    head = migrate.head_revision()
    with pytest.raises(SchemaOutOfDate) as info:
        migrate.check_at_head(empty_db_url)
    assert str(info.value) == (
        f"the database schema is at empty (never migrated) but this code needs {head}; run `python -m app db upgrade`"
    )
    migrate.upgrade(empty_db_url)
    migrate.check_at_head(empty_db_url)


def test_current_revision_does_not_create_a_missing_sqlite_file(tmp_path):
    url = f"sqlite:///{tmp_path / 'missing' / 'seiko.db'}"
    assert migrate.current_revision(url) is None
    assert not (tmp_path / "missing").exists()
    migrate.upgrade(url)  # creates the directory and the file
    assert migrate.current_revision(url) == migrate.head_revision()


def test_a_file_that_is_not_a_database_is_one_sentence_before_the_migration(tmp_path):
    """SQLite's "file is not a database" (SQLITE_NOTADB) is a plain DatabaseError, not an OperationalError: the
    upgrade's and the downgrade's checks before the migration raised it bare, where a refused connection is
    db.engine.unusable_refusal's sentence. It is that sentence now, as InvalidInput, and the file is left as it was."""
    path = tmp_path / "notes.db"
    notes = "these are a rater's notes, not a database\n" * 40
    path.write_text(notes)
    url = dbt.sqlite_url(path)
    said = "the database could not be used (file is not a database); nothing was changed"
    for check, rev in ((migrate.check_upgrade, "head"), (migrate.check_downgrade, "base")):
        with pytest.raises(InvalidInput) as refused:
            check(url, rev)
        assert str(refused.value) == said, check
    with pytest.raises(InvalidInput, match="^the database could not be used \\(file is not a database\\)"):
        migrate.upgrade(url)
    assert path.read_text() == notes


def test_migration_0007_adds_credentials_changed_at_and_keeps_the_raters(empty_db_url):
    from db import repo
    from db.engine import session_factory, write_session

    migrate.upgrade(empty_db_url, "0006")
    engine = make_engine(empty_db_url)
    try:
        with engine.begin() as c:
            c.exec_driver_sql("INSERT INTO raters (name, role, password_hash, created_at) "
                              "VALUES ('alice', 'rater', 'h', '2026-12-01 00:00:00')")
        assert "credentials_changed_at" not in {col["name"] for col in inspect(engine).get_columns("raters")}
    finally:
        engine.dispose()
    migrate.upgrade(empty_db_url, "0007")
    engine = make_engine(empty_db_url)
    try:
        with engine.connect() as c:
            assert c.exec_driver_sql("SELECT credentials_changed_at, password_hash FROM raters").all() == [(None, "h")]
    finally:
        engine.dispose()
    migrate.upgrade(empty_db_url)  # the models' columns: a later migration adds more
    engine = make_engine(empty_db_url)
    with write_session(session_factory(engine)) as s:
        alice = repo.get_rater_by_name(session=s, name="alice")
        repo.set_rater_disabled(session=s, rater_id=alice.id, disabled=True)
        assert alice.credentials_changed_at == alice.disabled_at is not None
    engine.dispose()
    migrate.downgrade(empty_db_url, "0006")
    engine = make_engine(empty_db_url)
    try:
        assert "credentials_changed_at" not in {col["name"] for col in inspect(engine).get_columns("raters")}
        with engine.connect() as c:
            assert c.exec_driver_sql("SELECT name FROM raters").scalars().all() == ["alice"]
    finally:
        engine.dispose()


def test_migration_0009_lets_repeats_onto_the_undo_stack_and_downgrades(empty_db_url):
    import pytest
    from sqlalchemy.exc import IntegrityError

    from db.engine import session_factory, write_session

    def insert(c, action: str) -> None:
        c.exec_driver_sql("INSERT INTO undo_steps (rater_id, image_id, action, previous_score, created_at) "
                          f"VALUES ({rater}, {image}, '{action}', NULL, '2026-12-03 00:00:00')")

    migrate.upgrade(empty_db_url)  # the models write the rows at head (rounds has a column more than at 0008)
    engine = make_engine(empty_db_url)
    try:
        with write_session(session_factory(engine)) as s:
            rater, _, image = _alice_and_an_image(s, open_round=False)
    finally:
        engine.dispose()
    migrate.downgrade(empty_db_url, "0008")
    engine = make_engine(empty_db_url)
    try:
        with engine.begin() as c:
            insert(c, "rate")
        with pytest.raises(IntegrityError), engine.begin() as c:
            insert(c, "repeat")
    finally:
        engine.dispose()
    def actions_after(insert_first: tuple[str, ...]) -> list[str]:
        engine = make_engine(empty_db_url)
        try:
            with engine.begin() as c:
                for action in insert_first:
                    insert(c, action)
                return c.exec_driver_sql("SELECT action FROM undo_steps ORDER BY id").scalars().all()
        finally:
            engine.dispose()

    migrate.upgrade(empty_db_url, "0009")
    assert actions_after(("repeat", "repeat_skip")) == ["rate", "repeat", "repeat_skip"]
    migrate.downgrade(empty_db_url, "0008")
    assert actions_after(()) == ["rate"]


def test_migration_0010_records_what_a_closed_round_wanted_and_older_rounds_are_counted_live(empty_db_url):
    """0010 adds rounds.wanted_at_close: a round records what it wanted when it closed (disabling an account after
    leaves it alone); a round closed before 0010 (NULL after the downgrade and upgrade) is counted live, as before."""
    from db import repo
    from db.engine import read_session, session_factory, write_session

    migrate.upgrade(empty_db_url)
    engine = make_engine(empty_db_url)
    try:
        with write_session(session_factory(engine)) as s:
            raters = [repo.create_rater(session=s, name=n, password_hash="h").id for n in ("alice", "bob")]
            exp = repo.create_experiment(session=s, name="e", model_spec="m", method="greedy", config={}, budgets=[1],
                                         prompts=["p"], overlap=2)
            round_ = repo.create_round(session=s, experiment_id=exp.id)
            image = repo.add_image(session=s, round_id=round_.id, prompt="p", seed=0, file_path="i.png", sha256="0" * 64,
                                   embedding=b"\0" * 8, embedding_dim=2).id
            repo.open_round(session=s, round_id=round_.id)
            repo.add_rating(session=s, image_id=image, rater_id=raters[0], score=5)
            repo.close_round(session=s, experiment_id=exp.id)
            repo.set_rater_disabled(session=s, rater_id=raters[1], disabled=True)
        with read_session(session_factory(engine)) as s:
            assert repo.get_round(session=s, round_id=round_.id).wanted_at_close == {"query": 2, "eval": 0,
                                                                                     "preference": 0}
            assert [st.labels_wanted for st in repo.round_rating_stats(session=s, experiment_id=exp.id)] == [2]
    finally:
        engine.dispose()
    migrate.downgrade(empty_db_url, "0009")
    migrate.upgrade(empty_db_url)  # through 0010 to head: the models read experiments.raters_limited (0015)
    engine = make_engine(empty_db_url)
    try:
        with read_session(session_factory(engine)) as s:  # closed before 0010 recorded it: counted live, as before 0010
            closed = repo.get_round(session=s, round_id=round_.id)
            assert (closed.status, closed.wanted_at_close) == ("training", None)
            assert [st.labels_wanted for st in repo.round_rating_stats(session=s, experiment_id=exp.id)] == [1]
    finally:
        engine.dispose()


def test_migration_0011_adds_pair_shows_and_downgrades_without_them(empty_db_url):
    """0011 adds pair_shows (the pairs put on a rater's screen, db.comparisons.serve_pair); a downgrade to 0010 drops
    the table and leaves the pairs, and upgrading again starts it empty."""
    from db import comparisons, repo
    from db.engine import read_session, session_factory, write_session
    from db.models import PairShow

    migrate.upgrade(empty_db_url)
    engine = make_engine(empty_db_url)
    try:
        with write_session(session_factory(engine)) as s:
            rater = repo.create_rater(session=s, name="alice", password_hash="h").id
            exp = repo.create_experiment(session=s, name="e", model_spec="m", method="greedy", config={}, budgets=[1],
                                         prompts=["p"]).id
            base = repo.create_round(session=s, experiment_id=exp, index=0).id
            round1 = repo.create_round(session=s, experiment_id=exp, index=1, adapter_path="adapters/e/round_1").id
            images = [repo.add_image(session=s, round_id=r, prompt="p", seed=0, file_path=f"{r}.png", sha256="0" * 64,
                                     embedding=b"\0" * 8, embedding_dim=2, kind="eval").id for r in (base, round1)]
            pair = comparisons.create_pairs(session=s, experiment_id=exp, round_id=round1, kind="ab",
                                            pairs=[tuple(images)])[0].id
            assert comparisons.serve_pair(session=s, experiment_id=exp, rater_id=rater, kind="ab").id == pair
        with read_session(session_factory(engine)) as s:
            assert [(row.pair_id, row.rater_id) for row in s.query(PairShow)] == [(pair, rater)]
    finally:
        engine.dispose()
    migrate.downgrade(empty_db_url, "0010")
    assert "pair_shows" not in _tables(empty_db_url) and "comparison_pairs" in _tables(empty_db_url)
    engine = make_engine(empty_db_url)
    try:
        with engine.connect() as c:
            assert c.exec_driver_sql("SELECT id FROM comparison_pairs").scalars().all() == [pair]
    finally:
        engine.dispose()
    migrate.upgrade(empty_db_url)  # through 0011 (head has more: the drift check needs head)
    assert "pair_shows" in _tables(empty_db_url) and _drift(empty_db_url) == []
    engine = make_engine(empty_db_url)
    try:
        with read_session(session_factory(engine)) as s:
            assert s.query(PairShow).count() == 0
            assert comparisons.next_pair(session=s, experiment_id=exp, rater_id=rater, kind="ab").id == pair
    finally:
        engine.dispose()


def test_migration_0012_counts_claims_from_the_attempts_and_downgrades_without_them(empty_db_url):
    """0012 adds jobs.claims (the claim counter a worker's writes are checked against, db.jobs): a job there at the
    upgrade starts from its attempt count, and the next claim counts on from there; a downgrade drops the column and
    keeps the jobs."""
    from db import jobs as job_queue
    from db import repo
    from db.engine import session_factory, write_session

    migrate.upgrade(empty_db_url)
    engine = make_engine(empty_db_url)
    try:
        with write_session(session_factory(engine)) as s:
            exp = repo.create_experiment(session=s, name="e", model_spec="m", method="greedy", config={}, budgets=[1],
                                         prompts=["p"]).id
            job = job_queue.enqueue_job(session=s, kind="train", experiment_id=exp).id
    finally:
        engine.dispose()
    migrate.downgrade(empty_db_url, "0011")
    assert "claims" not in {col["name"] for col in _columns(empty_db_url, "jobs")}
    _execute(empty_db_url, f"UPDATE jobs SET attempts = 2 WHERE id = {job}")  # two claims before the upgrade
    migrate.upgrade(empty_db_url, "0012")
    engine = make_engine(empty_db_url)
    try:
        with engine.connect() as c:
            assert c.exec_driver_sql("SELECT attempts, claims FROM jobs").all() == [(2, 2)]
        with write_session(session_factory(engine)) as s:
            claimed = job_queue.claim_job(session=s, worker_id="w", lease_s=10)
            assert (claimed.id, claimed.attempts, claimed.claims) == (job, 3, 3)
    finally:
        engine.dispose()


def test_migration_0013_keeps_when_a_card_was_first_handed_out_and_downgrades_without_it(empty_db_url):
    """0013 adds image_leases.first_handed_at (the order a rater's cards left open come back in, app.repeats): a
    lease there at the upgrade gets its grant time, and a lease granted anew (run out 30 minutes before) keeps it
    where the grant moves on; a downgrade drops the column and keeps the leases."""
    from datetime import UTC, datetime, timedelta

    from db import repo
    from db.engine import read_session, session_factory, write_session
    from db.models import ImageLease

    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    migrate.upgrade(empty_db_url)
    engine = make_engine(empty_db_url)
    try:
        with write_session(session_factory(engine)) as s:
            rater, round_, image = _alice_and_an_image(s)
            repo.lease_images(session=s, round_id=round_, rater_id=rater, image_ids=[image], lease_s=600, now=t0)
    finally:
        engine.dispose()
    migrate.downgrade(empty_db_url, "0012")
    assert "first_handed_at" not in {col["name"] for col in _columns(empty_db_url, "image_leases")}
    migrate.upgrade(empty_db_url)  # through 0013
    assert _drift(empty_db_url) == []
    engine = make_engine(empty_db_url)
    later = t0 + timedelta(hours=1)
    try:
        with read_session(session_factory(engine)) as s:
            assert repo.lease_grants(session=s, rater_id=rater, image_ids=[image]) == {image: t0}
        with write_session(session_factory(engine)) as s:  # the lease ran out 50 minutes ago: granted anew
            assert repo.lease_images(session=s, round_id=round_, rater_id=rater, image_ids=[image], lease_s=600,
                                     now=later) == [image]
        with read_session(session_factory(engine)) as s:
            lease = s.scalars(select(ImageLease)).one()
            assert (lease.created_at, lease.first_handed_at) == (later, t0)
            assert repo.lease_grants(session=s, rater_id=rater, image_ids=[image]) == {image: t0}
    finally:
        engine.dispose()
    migrate.downgrade(empty_db_url, "0012")
    engine = make_engine(empty_db_url)
    try:
        with engine.connect() as c:
            assert c.exec_driver_sql("SELECT image_id, rater_id FROM image_leases").all() == [(image, rater)]
    finally:
        engine.dispose()


def _columns(url: str, table: str) -> list[dict]:
    engine = make_engine(url)
    try:
        return inspect(engine).get_columns(table)
    finally:
        engine.dispose()


def test_an_upgrade_that_cannot_do_what_it_says_is_one_sentence(empty_db_url):
    """A target below the database's revision did nothing and said nothing; a database whose alembic_version was
    emptied (its tables there) failed with 'table already exists', on PostgreSQL a 100-line traceback (found by
    review). Both are refused in one sentence and nothing changes."""
    from db.errors import InvalidInput

    migrate.upgrade(empty_db_url, "0005")
    with pytest.raises(InvalidInput, match=r"the database is at 0005, above 0003: an upgrade does not go down; use "
                                           r"`db downgrade 0003`; nothing was changed"):
        migrate.upgrade(empty_db_url, "0003")
    assert migrate.current_revision(empty_db_url) == "0005"
    _execute(empty_db_url, "DELETE FROM alembic_version")
    with pytest.raises(InvalidInput, match=r"the app's tables .* but no schema revision recorded"):
        migrate.upgrade(empty_db_url)
    assert migrate.current_revision(empty_db_url) is None and "experiments" in _tables(empty_db_url)


def _execute(url: str, sql: str) -> None:
    """One statement, committed, on the database at ``url``."""
    from sqlalchemy import text

    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text(sql))
    finally:
        engine.dispose()


def test_a_new_database_beside_another_apps_tables_is_created(empty_db_url):
    """Only the app's own tables without a revision are refused: a schema holding another program's tables (a shared
    PostgreSQL 'public') gets the app's beside them (a review of the refusal above)."""
    _execute(empty_db_url, "CREATE TABLE other_app (id INTEGER PRIMARY KEY)")
    migrate.upgrade(empty_db_url)
    assert migrate.current_revision(empty_db_url) == migrate.head_revision() and "other_app" in _tables(empty_db_url)


def test_a_migration_behind_an_open_transaction_gives_up_in_one_sentence(empty_db_url, monkeypatch):
    """PostgreSQL: an ALTER behind any open transaction on its table waited with no limit, and every new query (a
    sign-in) queued behind it (found by review). It gives up after LOCK_TIMEOUT_S with a sentence, nothing changed
    (PostgreSQL's DDL is transactional), and runs once the transaction has ended."""
    if empty_db_url.startswith("sqlite"):
        pytest.skip("SQLite takes the database's write lock, with its own busy timeout: no table locks to wait for")
    from sqlalchemy import text

    from db.errors import InvalidInput

    migrate.upgrade(empty_db_url, "0006")
    monkeypatch.setattr(migrate, "LOCK_TIMEOUT_S", 1.0)
    engine = make_engine(empty_db_url)
    try:
        with engine.connect() as held:
            held.execute(text("SELECT count(*) FROM raters"))  # a transaction left open, as a worker's might be
            with pytest.raises(InvalidInput, match=r"the database is in use: a table's lock was not granted in 1 s"):
                migrate.upgrade(empty_db_url)
            assert migrate.current_revision(empty_db_url) == "0006"
            held.rollback()
    finally:
        engine.dispose()
    migrate.upgrade(empty_db_url)
    assert migrate.current_revision(empty_db_url) == migrate.head_revision()


def test_a_migration_cut_by_the_operators_statement_bound_names_that_bound(empty_db_url):
    """PostgreSQL: a migration whose URL (or role, or database) carries the operator's statement_timeout, shorter than
    the migration's own lock bound (LOCK_TIMEOUT_S), is cancelled at it (57014) while an ALTER waits behind an open
    transaction: that reached the command line as a bare QueryCanceled, where a lock wait cut at LOCK_TIMEOUT_S is a
    sentence. It is one sentence naming the bound in force (0.5 s), nothing changed; the lock sentence names the
    migration's own lock bound as migrations/env.py sets it, not the connect's."""
    if empty_db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's statement_timeout set in the URL")
    from sqlalchemy import text

    from db.errors import InvalidInput

    migrate.upgrade(empty_db_url, "0006")
    cut = f"{empty_db_url}?options=-c%20statement_timeout%3D500"
    engine = make_engine(empty_db_url)
    try:
        with engine.connect() as held:
            held.execute(text("SELECT count(*) FROM raters"))  # a transaction left open, as a worker's might be
            with pytest.raises(InvalidInput) as refused:
                migrate.upgrade(cut)
            assert str(refused.value).startswith(
                "the database cancelled a statement of the migration at its statement_timeout of 0.5 s (set for this "
                "role, database or URL, or in the server's configuration; the statement ran, or waited for a table's "
                "lock, that long), so nothing was changed; ")
            assert migrate.current_revision(empty_db_url) == "0006"
            held.rollback()
    finally:
        engine.dispose()
    migrate.upgrade(cut)  # the transaction gone: the bound is not reached
    assert migrate.current_revision(empty_db_url) == migrate.head_revision()


def test_migration_0014_records_the_skip_a_score_took_back_and_older_steps_undo_as_before(empty_db_url):
    """0014 adds undo_steps.skipped_at (a new score that took back a skip: when the skip was made). A downgrade to
    0013 keeps the steps without it; upgraded again they hold NULL, and undoing such a score still puts the skip
    back by the skip's own step below it, as before 0014."""
    from db import repo
    from db.engine import read_session, session_factory, write_session
    from db.models import UndoStep

    migrate.upgrade(empty_db_url)
    engine = make_engine(empty_db_url)
    try:
        with write_session(session_factory(engine)) as s:
            rater, round_, image = _alice_and_an_image(s)
            skipped_at = repo.add_skip(session=s, image_id=image, rater_id=rater).created_at
            repo.add_undo_step(session=s, rater_id=rater, image_id=image, action="skip")
            repo.add_rating(session=s, image_id=image, rater_id=rater, score=4)
            repo.add_undo_step(session=s, rater_id=rater, image_id=image, action="rate", skipped_at=skipped_at)
        with read_session(session_factory(engine)) as s:
            assert [st.skipped_at is not None for st in s.query(UndoStep).order_by(UndoStep.id)] == [False, True]
    finally:
        engine.dispose()
    migrate.downgrade(empty_db_url, "0013")
    migrate.upgrade(empty_db_url)
    assert _drift(empty_db_url) == []
    engine = make_engine(empty_db_url)
    try:
        with read_session(session_factory(engine)) as s:
            assert [(st.action, st.skipped_at) for st in s.query(UndoStep).order_by(UndoStep.id)] == [("skip", None),
                                                                                                     ("rate", None)]
        with write_session(session_factory(engine)) as s:
            assert repo.undo_last(session=s, rater_id=rater, round_id=round_) == repo.Undone(image, "rate", None,
                                                                                             skipped=True)
            assert repo.find_rating(session=s, image_id=image, rater_id=rater) is None
            assert repo.find_skip(session=s, image_id=image, rater_id=rater) is not None
    finally:
        engine.dispose()


def test_migration_0015_keeps_older_experiments_open_to_every_rater_and_downgrades_without_the_lists(empty_db_url):
    """0015 adds experiments.raters_limited and experiment_raters (app.members). An experiment there at the upgrade,
    with a rater and a rating, stays open to every rater; a list set after it is dropped by a downgrade to 0014,
    which keeps the experiment, its rater and the rating."""
    from db import members, repo
    from db.engine import read_session, session_factory, write_session

    migrate.upgrade(empty_db_url, "0014")
    engine = make_engine(empty_db_url)
    try:
        # 0014's schema has no raters_limited (the models have it), so the rows are written with SQL
        with engine.begin() as c:
            c.exec_driver_sql("INSERT INTO experiments (id, name, model_spec, method, config, budgets, prompts, status, "
                              "overlap, created_at, raters_see_dashboard, standardize_scores) VALUES "
                              "(1, 'old', 'x', 'greedy', '{}', '[1]', '[\"p\"]', 'active', 1, '2026-11-30 00:00:00', "
                              "false, false)")
            c.exec_driver_sql("INSERT INTO raters (id, name, role, password_hash, created_at) VALUES "
                              "(1, 'alice', 'rater', 'h', '2026-11-30 00:00:00'), (2, 'bob', 'rater', 'h', "
                              "'2026-11-30 00:00:00')")
    finally:
        engine.dispose()
    migrate.upgrade(empty_db_url)
    assert _drift(empty_db_url) == []
    engine = make_engine(empty_db_url)
    try:
        with read_session(session_factory(engine)) as s:
            assert repo.get_experiment(session=s, experiment_id=1).raters_limited is False
            assert members.rater_ids(session=s, experiment_id=1) is None
            assert all(members.listed(session=s, experiment_id=1, rater_id=r) for r in (1, 2))
        with write_session(session_factory(engine)) as s:
            members.set_raters(session=s, experiment_id=1, rater_ids=[1])
        with read_session(session_factory(engine)) as s:
            assert [members.listed(session=s, experiment_id=1, rater_id=r) for r in (1, 2)] == [True, False]
    finally:
        engine.dispose()
    migrate.downgrade(empty_db_url, "0014")
    assert "experiment_raters" not in _tables(empty_db_url)
    assert "raters_limited" not in {col["name"] for col in _columns(empty_db_url, "experiments")}
    engine = make_engine(empty_db_url)
    try:
        with engine.connect() as c:
            assert c.exec_driver_sql("SELECT id, name FROM experiments").all() == [(1, "old")]
            assert c.exec_driver_sql("SELECT count(*) FROM raters").scalar() == 2
    finally:
        engine.dispose()
    migrate.upgrade(empty_db_url)  # the lists start empty again: every experiment open to every rater
    engine = make_engine(empty_db_url)
    try:
        with read_session(session_factory(engine)) as s:
            assert members.rater_ids(session=s, experiment_id=1) is None
    finally:
        engine.dispose()


def _upgrade_after(url, start, report):
    """A process that runs ``migrate.upgrade(url)`` once every such process is ready; reports "ok" or the error."""
    start.wait(120)
    try:
        migrate.upgrade(url)
        report.put("ok")
    except Exception as exc:  # reported to the test, which shows it
        report.put(f"{type(exc).__name__}: {exc}")


def _two_upgrades_at_once(url, *, held=None):
    """Two processes run ``migrate.upgrade(url)`` at once; returns what each reported. ``held`` (PostgreSQL): a
    connection whose open transaction holds back both migrations' first ALTER; it is rolled back once both wait, so
    both have read the old revision before either commits."""
    import multiprocessing
    import time

    from sqlalchemy import text

    context = multiprocessing.get_context("spawn")
    start, report = context.Barrier(2), context.Queue()
    processes = [context.Process(target=_upgrade_after, args=(url, start, report)) for _ in range(2)]
    for p in processes:
        p.start()
    try:
        if held is not None:
            deadline = time.monotonic() + 60
            watcher = make_engine(url)
            try:
                while True:  # each look in a transaction of its own: one transaction sees one snapshot of the activity
                    with watcher.connect() as c:
                        waiting = c.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                                 "current_database() AND wait_event_type = 'Lock'")).scalar_one()
                    if waiting >= 2:
                        break
                    assert time.monotonic() < deadline, "the two migrations never both waited"
                    time.sleep(0.1)
            finally:
                watcher.dispose()
            held.rollback()
        return sorted(report.get(timeout=240) for _ in processes)
    finally:
        for p in processes:
            p.join(60)


def test_migration_0016_adds_live_processes_and_downgrades_without_them(empty_db_url):
    """0016 adds live_processes (db.presence: a running server or worker, with kind, host, pid, started_at and
    heartbeat_at; nothing secret). A downgrade to 0015 drops the table with its rows (a stale one: a process that
    died refuses nothing), and an upgrade makes it again, empty."""
    from db import presence
    from db.engine import session_factory, write_session
    from db.models import utcnow

    migrate.upgrade(empty_db_url, "0015")
    assert "live_processes" not in _tables(empty_db_url)
    migrate.upgrade(empty_db_url, "0016")
    engine = make_engine(empty_db_url)
    try:
        assert {c["name"] for c in inspect(engine).get_columns("live_processes")} == {
            "id", "kind", "host", "pid", "started_at", "heartbeat_at"}
        with write_session(session_factory(engine)) as s:
            presence.register(s, kind="server", head="0016", host="h", pid=1, now=utcnow() - timedelta(hours=1))
    finally:
        engine.dispose()
    migrate.downgrade(empty_db_url, "0015")
    assert "live_processes" not in _tables(empty_db_url) and migrate.current_revision(empty_db_url) == "0015"
    migrate.upgrade(empty_db_url)
    engine = make_engine(empty_db_url)
    try:
        with engine.connect() as c:
            assert c.exec_driver_sql("SELECT COUNT(*) FROM live_processes").scalar_one() == 0
    finally:
        engine.dispose()
    assert _drift(empty_db_url) == []


def test_migration_0017_lets_the_worker_supervisor_register_and_downgrades_without_its_rows(empty_db_url):
    """0017 lets a 'supervisor' row into live_processes (the supervisor of `worker --processes N`, eleventh review),
    which 0016's CHECK on kind refuses. A downgrade to 0016 deletes the supervisors' rows (stale ones here: a fresh one
    refuses the downgrade) and keeps the others, and the CHECK refuses a supervisor again."""
    from sqlalchemy.exc import IntegrityError

    from db import presence
    from db.engine import session_factory, write_session
    from db.models import LiveProcess, utcnow

    def register(kind: str, head: str, pid: int) -> None:
        engine = make_engine(empty_db_url)
        try:
            with write_session(session_factory(engine)) as s:
                presence.register(s, kind=kind, head=head, host="h", pid=pid, now=utcnow() - timedelta(hours=1))
        finally:
            engine.dispose()

    def rows() -> list:
        engine = make_engine(empty_db_url)
        try:
            with engine.connect() as c:
                return c.execute(select(LiveProcess.kind, LiveProcess.pid).order_by(LiveProcess.pid)).all()
        finally:
            engine.dispose()

    migrate.upgrade(empty_db_url, "0016")
    with pytest.raises(IntegrityError):
        register("supervisor", "0016", 1)
    migrate.upgrade(empty_db_url, "0017")
    register("worker", "0017", 2)
    register("supervisor", "0017", 3)
    assert rows() == [("worker", 2), ("supervisor", 3)]
    migrate.downgrade(empty_db_url, "0016")
    assert migrate.current_revision(empty_db_url) == "0016" and rows() == [("worker", 2)]
    with pytest.raises(IntegrityError):
        register("supervisor", "0016", 4)
    migrate.upgrade(empty_db_url)
    assert _drift(empty_db_url) == []


def test_migration_0018_counts_role_changes_from_zero_and_downgrades_without_the_count(empty_db_url):
    """0018 adds raters.role_version (nineteenth review, 7 Dec 2026): the accounts there at the upgrade start at 0,
    each change of role (and only a change) counts one, and a downgrade to 0017 drops the count and keeps the
    accounts and their roles."""
    from db import repo
    from db.engine import session_factory, write_session

    migrate.upgrade(empty_db_url, "0017")
    engine = make_engine(empty_db_url)
    try:
        with engine.begin() as c:
            c.exec_driver_sql("INSERT INTO raters (name, role, password_hash, created_at) "
                              "VALUES ('alice', 'admin', 'h', '2026-12-01 00:00:00')")
    finally:
        engine.dispose()
    migrate.upgrade(empty_db_url, "0018")
    engine = make_engine(empty_db_url)
    try:
        for role, version in (("admin", 0), ("rater", 1), ("rater", 1), ("admin", 2)):
            with write_session(session_factory(engine)) as s:
                alice = repo.get_rater_by_name(session=s, name="alice")
                changed = repo.set_rater_role(session=s, rater_id=alice.id, role=role)
            assert changed.role_version == version  # readable once the session is closed (it raised DetachedInstanceError)
            with engine.connect() as c:  # as the database has it
                assert c.exec_driver_sql("SELECT role, role_version FROM raters").all() == [(role, version)]
    finally:
        engine.dispose()
    migrate.downgrade(empty_db_url, "0017")
    engine = make_engine(empty_db_url)
    try:
        assert "role_version" not in {col["name"] for col in inspect(engine).get_columns("raters")}
        with engine.connect() as c:
            assert c.exec_driver_sql("SELECT name, role FROM raters").all() == [("alice", "admin")]
    finally:
        engine.dispose()
    migrate.upgrade(empty_db_url)
    assert _drift(empty_db_url) == []


def test_two_upgrades_at_once_both_succeed(empty_db_url):
    """Two processes upgrading one database at once (each container running `db upgrade` at its start): on
    PostgreSQL both read the old revision and ran the same steps, and the second failed with a traceback ("duplicate
    key value violates unique constraint pg_type_typname_nsp_index" from an empty database, "column first_handed_at
    of relation image_leases already exists" from 0012); on SQLite the second could be told the database had the
    app's tables but no revision (it read the revision before the first committed, the tables after). Found by the
    seventh review. Now one migrates and the other finds the database at head."""
    from sqlalchemy import text

    assert _two_upgrades_at_once(empty_db_url) == ["ok", "ok"]
    assert migrate.current_revision(empty_db_url) == migrate.head_revision()
    assert _drift(empty_db_url) == []
    if empty_db_url.startswith("sqlite"):
        return
    migrate.downgrade(empty_db_url, "0012")
    engine = make_engine(empty_db_url)
    try:
        with engine.connect() as held:
            held.execute(text("SELECT count(*) FROM image_leases"))  # 0013 alters image_leases: both wait on this
            assert _two_upgrades_at_once(empty_db_url, held=held) == ["ok", "ok"]
    finally:
        engine.dispose()
    assert migrate.current_revision(empty_db_url) == migrate.head_revision()
    assert _drift(empty_db_url) == []


def test_an_upgrade_finds_the_database_another_process_migrated_between_its_reads(empty_db_url, monkeypatch):
    """The interleaving of the SQLite race above, made certain: the revision is read before another process's
    migration commits (none yet), the tables after it (all there). It was refused as "the app's tables but no
    schema revision recorded"; now the revision is read again, and the upgrade has nothing left to do."""
    migrate.upgrade(empty_db_url)  # the other process's migration, committed
    real, calls = migrate.current_revision, []

    def first_read_before_the_commit(url):
        calls.append(url)
        return None if len(calls) == 1 else real(url)

    monkeypatch.setattr(migrate, "current_revision", first_read_before_the_commit)
    migrate.upgrade(empty_db_url)
    monkeypatch.undo()
    assert len(calls) >= 2 and migrate.current_revision(empty_db_url) == migrate.head_revision()


def test_an_upgrade_that_fails_part_way_leaves_the_database_at_the_revision_it_had(empty_db_url):
    """Every step of one upgrade is one transaction, on SQLite as on PostgreSQL: 0013 fails here (its column is
    already there), and 0012, which ran before it, is undone with it. On SQLite each step had committed on its own, so
    the database was left at 0012 (and a second upgrade at once could take the write lock between two steps: CI's
    "duplicate column name: first_handed_at")."""
    from sqlalchemy import text

    migrate.upgrade(empty_db_url, "0011")
    engine = make_engine(empty_db_url)
    try:
        with engine.begin() as c:
            c.execute(text("ALTER TABLE image_leases ADD COLUMN first_handed_at TIMESTAMP"))
    finally:
        engine.dispose()
    with pytest.raises(Exception, match="first_handed_at"):
        migrate.upgrade(empty_db_url)
    assert migrate.current_revision(empty_db_url) == "0011"
    engine = make_engine(empty_db_url)
    try:
        assert "claims" not in {c["name"] for c in inspect(engine).get_columns("jobs")}  # 0012's column, undone
    finally:
        engine.dispose()


def test_a_sqlite_upgrade_beside_a_held_write_lock_is_refused_in_one_sentence(tmp_path, monkeypatch):
    """A server's write transaction held longer than SQLite's busy timeout: the upgrade says the database is in use,
    and nothing is changed (it waited for the lock before it read the revision, the whole upgrade one transaction)."""
    from sqlalchemy import text

    from db import engine as db_engine

    url = dbt.sqlite_url(tmp_path / "busy.db")
    migrate.upgrade(url, "0014")
    monkeypatch.setattr(db_engine, "BUSY_TIMEOUT_MS", 300)
    holder = make_engine(url)
    try:
        with holder.connect() as held:
            held.execute(text("SELECT count(*) FROM raters"))  # BEGIN IMMEDIATE (db.engine): the write lock is held
            with pytest.raises(InvalidInput, match=r"^the database is in use: its write lock was not granted in 0.3 s "):
                migrate.upgrade(url)
    finally:
        holder.dispose()
    assert migrate.current_revision(url) == "0014"
    migrate.upgrade(url)
    assert migrate.current_revision(url) == migrate.head_revision()


def _orphan_session(url):
    """A sign-in session whose account is gone, written as the sqlite3 shell would (foreign keys off there)."""
    import sqlite3

    connection = sqlite3.connect(migrate._sqlite_file(url))
    try:
        connection.execute("INSERT INTO raters (name, role, password_hash, created_at) "
                           "VALUES ('gone', 'rater', 'h', '2026-01-01 00:00:00')")
        connection.execute("INSERT INTO sessions (rater_id, token_sha256, created_at, last_seen_at, expires_at) VALUES "
                           "(1, 't', '2026-01-01 00:00:00', '2026-01-01 00:00:00', '2026-01-01 00:00:00')")
        connection.execute("DELETE FROM raters")
        connection.commit()
    finally:
        connection.close()


def test_rows_whose_foreign_keys_point_nowhere_refuse_a_sqlite_migration_in_one_sentence_and_change_nothing(tmp_path):
    """SQLite's foreign_key_check ran after the migration had committed: a database with a row whose parent is gone
    was migrated all the same, and the command ended in a RuntimeError traceback that blamed the migration (every
    later `db upgrade`, at head, again). Found by the eighth review. Now the check runs inside the migration's
    transaction: one sentence, and the database stays at the revision it had."""
    url = dbt.sqlite_url(tmp_path / "orphan.db")
    migrate.upgrade(url, "0014")
    _orphan_session(url)
    for step in (lambda: migrate.upgrade(url), lambda: migrate.downgrade(url, "0013")):
        with pytest.raises(InvalidInput, match=r"^the database has rows whose foreign keys point nowhere \(sessions "
                                               r"row 1 -> raters\): .*; nothing was changed$"):
            step()
        assert migrate.current_revision(url) == "0014"
    engine = make_engine(url)
    try:
        assert "raters_limited" not in {c["name"] for c in inspect(engine).get_columns("experiments")}  # 0015's
        assert "skipped_at" in {c["name"] for c in inspect(engine).get_columns("undo_steps")}  # 0014's, kept
    finally:
        engine.dispose()


def test_a_writer_taking_the_lock_as_a_sqlite_migration_commits_does_not_make_it_report_nothing_changed(
        tmp_path, monkeypatch):
    """The foreign_key_check after the commit began a transaction of its own, IMMEDIATE: a server's write that took
    the lock as the migration committed, held past the busy timeout, made the upgrade say "the database is in use
    ...; nothing was changed", though the migration had committed (found by the eighth review). The check is part of
    the migration's transaction now: the upgrade succeeds."""
    from contextlib import contextmanager

    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import text

    from db import engine as db_engine

    url = dbt.sqlite_url(tmp_path / "taken.db")
    migrate.upgrade(url, "0014")
    monkeypatch.setattr(db_engine, "BUSY_TIMEOUT_MS", 300)
    holder = make_engine(url)
    real = MigrationContext.begin_transaction
    with holder.connect() as held:

        @contextmanager
        def then_a_writer(self, _per_migration=False):
            with real(self, _per_migration):
                yield
            if not _per_migration:  # the migration's one transaction has committed
                held.execute(text("SELECT count(*) FROM raters"))  # BEGIN IMMEDIATE: the write lock, held

        monkeypatch.setattr(MigrationContext, "begin_transaction", then_a_writer)
        try:
            migrate.upgrade(url)
            assert held.in_transaction()  # the writer did take the lock
        finally:
            held.rollback()
            monkeypatch.undo()
    holder.dispose()
    assert migrate.current_revision(url) == migrate.head_revision()


def test_a_sqlite_downgrade_below_0002_beside_a_held_write_lock_is_refused_in_one_sentence(tmp_path, monkeypatch):
    """check_downgrade's look for disabled accounts (a downgrade below 0002) began IMMEDIATE, a read that waited for
    the write lock: beside a server's long write it failed with sqlite3's "database is locked" (SQL: BEGIN IMMEDIATE),
    not the sentence an upgrade or a shorter downgrade gives (found by the eighth review). It reads DEFERRED now."""
    from sqlalchemy import text

    from db import engine as db_engine

    url = dbt.sqlite_url(tmp_path / "busy-down.db")
    migrate.upgrade(url)
    monkeypatch.setattr(db_engine, "BUSY_TIMEOUT_MS", 300)
    holder = make_engine(url)
    try:
        with holder.connect() as held:
            held.execute(text("SELECT count(*) FROM raters"))  # BEGIN IMMEDIATE (db.engine): the write lock is held
            with pytest.raises(InvalidInput, match=r"^the database is in use: its write lock was not granted in 0.3 s "
                                                   r".*; nothing was changed$"):
                migrate.downgrade(url, "base")
    finally:
        holder.dispose()
    assert migrate.current_revision(url) == migrate.head_revision()


def test_a_target_alembic_refuses_is_one_sentence_that_says_nothing_was_changed(tmp_path, monkeypatch):
    """Alembic's own refusals reached the command line bare, "the schema migration was refused: Can't locate revision
    identified by 'bogus'" (`db upgrade bogus`), or, for two downgrades at once (each checked against the revision
    before the other ran: the second found 0003 where it had checked 0015), "... Destination 0005 is not a valid
    downgrade target from current head(s)", neither saying whether anything had changed, nor where the database was.
    Found by the eighth review (the second in 1 of 3 runs of two `db downgrade` processes). The migration is one
    transaction on both backends, so nothing was."""
    url = dbt.sqlite_url(tmp_path / "refused.db")
    migrate.upgrade(url)
    with pytest.raises(InvalidInput, match=r"^the schema migration was refused: Can't locate revision identified by "
                                           rf"'bogus' \(the database is at {migrate.head_revision()}\); nothing was "
                                           r"changed$"):
        migrate.upgrade(url, "bogus")
    migrate.downgrade(url, "0003")  # the other process's downgrade, after this one's check had read 0015
    monkeypatch.setattr(migrate, "check_downgrade", lambda url, rev: None)
    with pytest.raises(InvalidInput, match=r"^the schema migration was refused: Destination 0005 is not a valid "
                                           r"downgrade target from current head\(s\) \(the database is at 0003\); "
                                           r"nothing was changed$"):
        migrate.downgrade(url, "0005")
    assert migrate.current_revision(url) == "0003"


def test_a_downgrade_below_0002_is_refused_by_a_disabled_account_found_after_its_check(empty_db_url, monkeypatch):
    """check_downgrade looked for disabled accounts in a transaction of its own, before the copy and the migration:
    an account disabled after that look (by a live server's admin, while a large database was copied), or a relative
    downgrade that another at once had moved below (both checked "-1" at 0003, the second ran 0002's downgrade), lost
    its mark, and could sign in again after an upgrade. Found by the eighth review. 0002's downgrade looks again
    inside the migration's transaction: one sentence, nothing changed."""
    from sqlalchemy import text

    from db.engine import session_factory, write_session

    migrate.upgrade(empty_db_url, "0003")
    engine = make_engine(empty_db_url)
    try:
        with write_session(session_factory(engine)) as s:
            s.execute(text("INSERT INTO raters (name, role, password_hash, created_at, disabled_at) VALUES "
                           "('mallory', 'rater', 'h', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
    finally:
        engine.dispose()
    monkeypatch.setattr(migrate, "check_downgrade", lambda url, rev: None)  # it looked before the account was disabled
    with pytest.raises(InvalidInput, match=r"^1 account\(s\) are disabled \('mallory'\); a downgrade below 0002 drops "
                                           r"that mark, .*; nothing was changed$"):
        migrate.downgrade(empty_db_url, "0001")
    assert migrate.current_revision(empty_db_url) == "0003"
    engine = make_engine(empty_db_url)
    try:
        with engine.connect() as c:
            assert c.execute(text("SELECT name FROM raters WHERE disabled_at IS NOT NULL")).scalars().all() == ["mallory"]
    finally:
        engine.dispose()



def _mallory(url: str, *, disabled: bool) -> None:
    """An account 'mallory', disabled or not, written with SQL (the models are the newest schema's, not this one's)."""
    from sqlalchemy import text

    from db.engine import session_factory, write_session

    engine = make_engine(url)
    try:
        with write_session(session_factory(engine)) as s:
            s.execute(text("INSERT INTO raters (name, role, password_hash, created_at, disabled_at) VALUES ('mallory', "
                           f"'rater', 'h', CURRENT_TIMESTAMP, {'CURRENT_TIMESTAMP' if disabled else 'NULL'})"))
    finally:
        engine.dispose()


def _disabled_names(url: str) -> list[str]:
    from sqlalchemy import text

    engine = make_engine(url)
    try:
        with engine.connect() as c:
            return c.execute(text("SELECT name FROM raters WHERE disabled_at IS NOT NULL")).scalars().all()
    finally:
        engine.dispose()


def test_a_postgresql_downgrade_below_0002_refuses_a_disabling_between_its_look_and_the_drop(empty_db_url, monkeypatch):
    """PostgreSQL: 0002's downgrade looked for disabled accounts inside its transaction, but under READ COMMITTED the
    look locked nothing: an account another connection disabled (a live server's admin) after the look and before the
    column was dropped lost its mark, and the downgrade went through (found by the ninth review). The look now holds
    the raters still (LOCK TABLE raters IN SHARE MODE first): such a disabling is held off until the migration ends
    (here refused by its own lock_timeout), so no committed mark is lost."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from db.engine import sqlstate

    if empty_db_url.startswith("sqlite"):
        pytest.skip("SQLite: the migration holds the database's write lock from its BEGIN IMMEDIATE, before the look")
    migrate.upgrade(empty_db_url, "0002")  # not 0003: its downgrade alters the raters, which holds them from there
    _mallory(empty_db_url, disabled=False)
    look = migrate.refuse_disabled_accounts
    disabling: list[str] = []

    def look_then_disable(connection) -> None:
        look(connection)  # nobody is disabled yet
        other = make_engine(empty_db_url)
        try:
            with other.connect() as c:
                c.execute(text("SET lock_timeout = '200ms'"))  # held off, it gives up; let through, it never waits
                try:
                    c.execute(text("UPDATE raters SET disabled_at = CURRENT_TIMESTAMP WHERE name = 'mallory'"))
                    c.commit()
                    disabling.append("committed")
                except OperationalError as exc:
                    assert sqlstate(exc) == "55P03", exc  # lock_not_available: held off by the migration
                    disabling.append("held off")
        finally:
            other.dispose()

    monkeypatch.setattr(migrate, "check_downgrade", lambda url, rev: None)
    monkeypatch.setattr(migrate, "refuse_disabled_accounts", look_then_disable)
    migrate.downgrade(empty_db_url, "0001")
    assert disabling == ["held off"], "an account was disabled between the look and the drop, and its mark was lost"
    assert migrate.current_revision(empty_db_url) == "0001"


def test_a_postgresql_downgrade_below_0002_waits_for_a_disabling_under_way_and_then_refuses(empty_db_url):
    """PostgreSQL: a disabling under way when 0002's downgrade looked (not yet committed, so unseen) committed while
    the downgrade waited for the raters' lock to drop the column, and its mark went with the column (ninth review).
    The look now waits for it (LOCK TABLE raters IN SHARE MODE), sees it, and refuses: nothing changed."""
    import threading
    import time

    from sqlalchemy import text

    if empty_db_url.startswith("sqlite"):
        pytest.skip("SQLite: a disabling under way holds the write lock, which the migration's BEGIN IMMEDIATE waits for")
    migrate.upgrade(empty_db_url, "0002")
    _mallory(empty_db_url, disabled=False)
    admin = make_engine(empty_db_url)
    outcome: list[object] = []

    def downgrade() -> None:
        try:
            migrate.downgrade(empty_db_url, "0001")
            outcome.append("downgraded")
        except Exception as exc:  # reported by the assertion below
            outcome.append(exc)

    try:
        with admin.connect() as disabling, admin.connect() as watch:
            disabling.execute(text("UPDATE raters SET disabled_at = CURRENT_TIMESTAMP WHERE name = 'mallory'"))
            # check_downgrade's own look (its own transaction) does not see it: not committed yet
            thread = threading.Thread(target=downgrade)
            thread.start()
            deadline = time.monotonic() + 30
            waiting = text("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'raters'::regclass")
            while not watch.execute(waiting).scalar_one():  # the migration waits on the raters: commit then
                watch.rollback()
                assert not outcome and time.monotonic() < deadline, outcome or "the downgrade never waited"
                time.sleep(0.01)
            disabling.commit()
            thread.join(60)
    finally:
        admin.dispose()
    assert len(outcome) == 1 and isinstance(outcome[0], InvalidInput), outcome
    assert str(outcome[0]).startswith("1 account(s) are disabled ('mallory')"), outcome[0]
    assert migrate.current_revision(empty_db_url) == "0002"
    assert _disabled_names(empty_db_url) == ["mallory"]


def test_a_postgresql_migration_ended_by_a_deadlock_or_a_serialization_failure_is_one_sentence(empty_db_url,
                                                                                                monkeypatch):
    """PostgreSQL: 0002's downgrade holds the raters (LOCK TABLE raters IN SHARE MODE), then drops audit_log and
    sessions. A live server's transaction that holds audit_log (an audit row written) and then waits for the raters
    (disabling an account) deadlocks with it; PostgreSQL ended the migration, which ended in psycopg's bare
    DeadlockDetected (ninth review). A real deadlock is staged here (the server's transaction waits first, with a long
    deadlock_timeout, so PostgreSQL ends the migration), and a real serialization failure (SQLSTATE 40001, raised by the
    server inside the migration: a database whose default isolation is serializable can give one): each is one
    sentence saying nothing was changed and to run it again, and the database is at 0002 with all its tables."""
    import threading
    import time

    from sqlalchemy import text

    from db.engine import sqlstate

    if empty_db_url.startswith("sqlite"):
        pytest.skip("SQLite: the migration holds the database's write lock from its BEGIN IMMEDIATE; nothing waits on it")
    migrate.upgrade(empty_db_url, "0002")
    _mallory(empty_db_url, disabled=False)
    look = migrate.refuse_disabled_accounts
    monkeypatch.setattr(migrate, "check_downgrade", lambda url, rev: None)  # it would run the hooks below too
    server = make_engine(empty_db_url)
    disabling: list[object] = []
    try:
        with server.connect() as admin, server.connect() as watch:
            # the migration, which waits second, is the one PostgreSQL's deadlock check finds and ends
            admin.execute(text("SET deadlock_timeout = '60s'"))
            admin.execute(text("INSERT INTO audit_log (at, actor_name, action) VALUES (CURRENT_TIMESTAMP, 'root', "
                               "'disable')"))
            pid = admin.execute(text("SELECT pg_backend_pid()")).scalar_one()

            def disable() -> None:
                try:
                    admin.execute(text("UPDATE raters SET disabled_at = CURRENT_TIMESTAMP WHERE name = 'mallory'"))
                    disabling.append("updated")
                except Exception as exc:  # reported by the assertion below
                    disabling.append(exc)

            thread = threading.Thread(target=disable)

            def look_then_the_server_waits_for_the_raters(connection) -> None:
                look(connection)  # the migration holds the raters now
                thread.start()
                waiting = text("SELECT count(*) FROM pg_locks WHERE NOT granted AND pid = :pid "
                               "AND relation = 'raters'::regclass")
                deadline = time.monotonic() + 30
                while not watch.execute(waiting, {"pid": pid}).scalar_one():
                    watch.rollback()
                    assert not disabling and time.monotonic() < deadline, disabling or "the server never waited"
                    time.sleep(0.01)
                watch.rollback()

            monkeypatch.setattr(migrate, "refuse_disabled_accounts", look_then_the_server_waits_for_the_raters)
            with pytest.raises(InvalidInput) as deadlocked:
                migrate.downgrade(empty_db_url, "0001")
            thread.join(60)
            admin.rollback()
    finally:
        server.dispose()
    assert disabling == ["updated"], disabling  # the server's transaction went on once the migration was ended
    assert sqlstate(deadlocked.value.__cause__) == "40P01", deadlocked.value.__cause__
    said = str(deadlocked.value)
    assert "deadlock" in said and "nothing was changed" in said and said.endswith("run it again"), said
    assert "\n" not in said and "40P01" not in said and "Traceback" not in said, said
    assert migrate.current_revision(empty_db_url) == "0002"
    assert {"sessions", "audit_log", "raters"} <= _tables(empty_db_url) and _disabled_names(empty_db_url) == []

    def serialization_failure(connection) -> None:
        connection.execute(text("DO $$ BEGIN RAISE EXCEPTION 'could not serialize access due to concurrent update' "
                                "USING ERRCODE = 'serialization_failure'; END $$"))

    monkeypatch.setattr(migrate, "refuse_disabled_accounts", serialization_failure)
    with pytest.raises(InvalidInput) as conflicted:
        migrate.downgrade(empty_db_url, "0001")
    assert sqlstate(conflicted.value.__cause__) == "40001", conflicted.value.__cause__
    said = str(conflicted.value)
    assert "nothing was changed" in said and said.endswith("run it again") and "\n" not in said, said
    assert migrate.current_revision(empty_db_url) == "0002" and {"sessions", "audit_log"} <= _tables(empty_db_url)


def test_a_postgresql_upgrade_waits_for_another_migration_and_says_so(empty_db_url, caplog):
    """PostgreSQL: an upgrade started while another migration holds the migration lock waited without a word, and
    with a lock_timeout set on the database (or the role) it failed at once, told that "a table's lock was not
    granted" and to stop the server, and with a statement_timeout in a bare QueryCanceled (eighth review). It says it waits for the other migration now, waits as long as
    that takes, then finds nothing left to do."""
    import logging
    import threading
    import time

    from sqlalchemy import create_engine, make_url, text

    if empty_db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's migration lock; SQLite's write lock is the busy-timeout test above")
    name = make_url(empty_db_url).database
    admin = create_engine(empty_db_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{name}" SET lock_timeout = \'100ms\''))
            c.execute(text(f'ALTER DATABASE "{name}" SET statement_timeout = \'300ms\''))  # a bare QueryCanceled
        with admin.connect() as holder:
            holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": migrate.MIGRATION_LOCK_KEY})
            outcome: list[object] = []

            def upgrade():
                try:
                    migrate.upgrade(empty_db_url)
                    outcome.append("ok")
                except Exception as exc:  # reported by the assertion below
                    outcome.append(exc)

            with caplog.at_level(logging.WARNING, logger="db.migrate"):
                worker = threading.Thread(target=upgrade)
                worker.start()
                deadline = time.monotonic() + 60
                while not any("another migration of this database is running" in r.getMessage() for r in caplog.records):
                    assert not outcome, outcome  # it ended instead of waiting
                    assert time.monotonic() < deadline, "the upgrade never said it waits"
                    time.sleep(0.05)
                time.sleep(1.0)  # ten times the database's lock_timeout, three times its statement_timeout
                assert not outcome, outcome
                holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": migrate.MIGRATION_LOCK_KEY})
                worker.join(120)
        assert outcome == ["ok"]
        assert migrate.current_revision(empty_db_url) == migrate.head_revision()
    finally:
        admin.dispose()


def test_the_sql_of_a_downgrade_through_0002_is_written_without_a_database(capsys):
    """`alembic downgrade 0003:0001 --sql` writes the SQL and reads nothing: 0002's downgrade, which looks for
    disabled accounts in the database (eighth review), failed there with "'NoneType' object has no attribute
    'scalars'" (offline, its connection answers nothing); it writes the SQL again."""
    from alembic import command

    url = "postgresql+psycopg://nobody@127.0.0.1:1/not_there"  # offline: never connected to
    command.downgrade(migrate._config(url), "0003:0001", sql=True)
    out = capsys.readouterr().out
    assert "DROP TABLE audit_log" in out and "DROP TABLE sessions" in out


def _pg_lost_during_migration(url, monkeypatch, *, after_commit: bool = False, refuse_new_connections: bool = False):
    """Upgrade ``url`` (at 0016) to 0017 while another connection terminates the migrating backend with
    pg_terminate_backend: before its COMMIT (the server rolls the transaction back), or ``after_commit`` (the COMMIT
    done, its answer lost: the next statement finds the backend gone). ``refuse_new_connections``: the database
    refuses new connections from then on, so the revision cannot be read back. Returns (the exception, the revision
    and 0017's check constraint as a new connection reads them afterwards)."""
    from alembic.runtime.migration import MigrationContext as Context
    from sqlalchemy import create_engine, make_url, text
    from sqlalchemy.engine import Connection

    name = make_url(url).database
    admin = create_engine(url.replace(f"/{name}", "/postgres"), isolation_level="AUTOCOMMIT")
    migrating: list[Connection] = []
    real_run, real_commit = Context.run_migrations, Connection._commit_impl

    def terminate(connection) -> None:
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        with admin.connect() as c:
            if refuse_new_connections:
                c.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            assert c.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()

    def run_then_terminate(self, **kw):
        real_run(self, **kw)
        migrating.append(self.connection)
        if not after_commit:
            terminate(self.connection)

    def commit_then_terminate(self):
        real_commit(self)
        if migrating and self is migrating[0]:
            migrating.clear()
            terminate(self)
            self.exec_driver_sql("SELECT 1")  # the backend is gone: this is where the driver says so

    migrate.upgrade(url, "0016")
    monkeypatch.setattr(Context, "run_migrations", run_then_terminate)
    monkeypatch.setattr(Connection, "_commit_impl", commit_then_terminate)
    try:
        try:
            migrate.upgrade(url, "0017")
            raised = None
        except Exception as exc:  # compared below
            raised = exc
        monkeypatch.undo()
        with admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        engine = create_engine(url)
        try:
            with engine.connect() as c:
                revision = c.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
                check = c.execute(text("SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                                       "WHERE conname = 'ck_live_processes_kind'")).scalar_one()
        finally:
            engine.dispose()
    finally:
        admin.dispose()
    return raised, revision, check


def test_a_connection_lost_during_a_postgresql_migration_says_it_was_not_applied(empty_db_url, monkeypatch):
    """The server terminated the migrating backend before its COMMIT: the command said only that the database "could
    not be used" (the driver's bare error), not whether anything had changed (fifteenth review). It reads the revision
    back on a new connection and says the migration was not applied, which the database confirms."""
    if empty_db_url.startswith("sqlite"):
        pytest.skip("a PostgreSQL backend terminated by another connection")
    raised, revision, check = _pg_lost_during_migration(empty_db_url, monkeypatch)
    assert revision == "0016" and "supervisor" not in check, (revision, check)  # rolled back by the server
    assert isinstance(raised, InvalidInput), repr(raised)
    said = str(raised)
    assert "connection to the database was lost during the migration to 0017" in said, said
    assert "still at 0016" in said and "not applied" in said and "nothing was changed" in said and "\n" not in said, said


def test_a_connection_lost_after_a_postgresql_migration_committed_says_it_was_applied(empty_db_url, monkeypatch, caplog):
    """The COMMIT reached the server and its answer was lost: the migration stands, so the command says it was
    applied (a warning) and succeeds; it said "could not be used" and failed (fifteenth review)."""
    import logging

    if empty_db_url.startswith("sqlite"):
        pytest.skip("a PostgreSQL backend terminated by another connection")
    with caplog.at_level(logging.WARNING, logger="db.migrate"):
        raised, revision, check = _pg_lost_during_migration(empty_db_url, monkeypatch, after_commit=True)
    assert revision == "0017" and "supervisor" in check, (revision, check)  # committed
    assert raised is None, repr(raised)
    said = [r.getMessage() for r in caplog.records if "was lost" in r.getMessage()]
    assert len(said) == 1 and "the database is at 0017: the migration was applied" in said[0], said


def test_a_connection_lost_during_a_postgresql_migration_with_no_read_back_says_how_to_check(empty_db_url, monkeypatch):
    """The backend terminated and the database refusing new connections: whether the migration was applied cannot be
    known, and the sentence says so and names `db current`, not "nothing was changed"."""
    if empty_db_url.startswith("sqlite"):
        pytest.skip("a PostgreSQL backend terminated by another connection")
    raised, revision, _check = _pg_lost_during_migration(empty_db_url, monkeypatch, refuse_new_connections=True)
    assert revision == "0016"
    assert isinstance(raised, InvalidInput), repr(raised)
    said = str(raised)
    assert "whether it was applied could not be known" in said and "`python -m app db current`" in said, said
    assert "nothing was changed" not in said and "\n" not in said, said


def test_a_migration_of_a_read_only_sqlite_file_keeps_the_databases_own_sentence(tmp_path):
    """SQLite's "attempt to write a readonly database" is an OperationalError, as a full disk and an I/O error are: every
    one was said as "the connection to the database was lost during the migration ...; run it again", a cause that was
    not the one and advice that cannot help (a read-only review of the fifteenth review's fix). Only a dropped
    connection is read back; this error goes on as before, which the command line says as the database's own words.
    The file is opened read-only by its URL (mode=ro): the tests may run as root, whom a file's mode does not stop."""
    from sqlalchemy.exc import OperationalError

    from app.__main__ import refusal

    path = tmp_path / "ro.db"
    migrate.upgrade(dbt.sqlite_url(path), "0016")
    with pytest.raises(OperationalError) as raised:
        migrate.upgrade(f"sqlite:///file:{path}?mode=ro&uri=true", "0017")
    assert refusal(raised.value) == "the database could not be used (attempt to write a readonly database)"
    assert migrate.current_revision(dbt.sqlite_url(path)) == "0016"


def _lost_then_moved(url, monkeypatch, rev: str, *, after_commit: bool = False, moved_to: str | None = None):
    """Downgrade ``url`` (at 0017) to ``rev`` while the migrating connection is dropped (SQLAlchemy's OperationalError
    for a disconnect, the connection invalidated): before its COMMIT (rolled back), or ``after_commit`` (committed, the
    answer lost). ``moved_to``: a second connection sets the revision to it after the drop, before the revision is read
    back (another `db upgrade`/`db downgrade` that took the advisory lock the dropped connection let go of). Returns the
    exception raised (or None)."""
    from alembic.runtime.migration import MigrationContext as Context
    from sqlalchemy import text
    from sqlalchemy.engine import Connection
    from sqlalchemy.exc import OperationalError

    def dropped():
        return OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"),
                                connection_invalidated=True)

    migrate.upgrade(url, "0017")  # not head: the revisions these tests name stay where they are as migrations are added
    migrating: list = []
    armed: list = []
    real_run, real_commit, real_current = Context.run_migrations, Connection._commit_impl, migrate.current_revision

    def run_then_drop(self, **kw):
        real_run(self, **kw)
        armed.append(True)
        if after_commit:
            migrating.append(self.connection)
        else:
            raise dropped()

    def commit_then_drop(self):
        real_commit(self)
        if migrating and self is migrating[0]:
            migrating.clear()
            raise dropped()

    def moved_then_read(read_url):
        if armed and moved_to is not None:
            armed.clear()
            engine = make_engine(url)
            try:
                with engine.begin() as c:
                    c.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": moved_to})
            finally:
                engine.dispose()
        return real_current(read_url)

    monkeypatch.setattr(Context, "run_migrations", run_then_drop)
    monkeypatch.setattr(Connection, "_commit_impl", commit_then_drop)
    monkeypatch.setattr(migrate, "current_revision", moved_then_read)
    try:
        migrate.downgrade(url, rev)
    except Exception as exc:  # compared by the caller
        return exc
    finally:
        monkeypatch.undo()
    return None


def test_a_migration_whose_revision_another_moved_after_the_lost_connection_is_not_said_applied(empty_db_url, monkeypatch):
    """A dropped connection lets go of the advisory lock, so another `db upgrade`/`db downgrade` can move the revision
    before it is read back: any revision other than the one the migration began at was said "applied", status 0 (a
    read-only review of the fifteenth review's fix). Now only the target reads as applied; another is one sentence."""
    raised = _lost_then_moved(empty_db_url, monkeypatch, "-1", moved_to="0015")
    assert migrate.current_revision(empty_db_url) == "0015"
    assert isinstance(raised, InvalidInput), repr(raised)
    said = str(raised)
    assert "the database is at 0015, neither where it was (0017) nor the target (0016): another migration moved it" in said
    assert "check with `python -m app db current`" in said and "\n" not in said, said


def test_a_relative_migration_lost_after_its_commit_names_the_revision_it_reached(empty_db_url, monkeypatch, caplog):
    """The "applied" warning of a relative downgrade named its target as typed, "the migration to -1"; it names the
    revision the step went to, counted from where the migration began."""
    import logging

    with caplog.at_level(logging.WARNING, logger="db.migrate"):
        raised = _lost_then_moved(empty_db_url, monkeypatch, "-1", after_commit=True)
    assert raised is None, repr(raised)
    assert migrate.current_revision(empty_db_url) == "0016"
    said = [r.getMessage() for r in caplog.records if "was lost" in r.getMessage()]
    assert len(said) == 1 and "the migration to 0016 (" in said[0] and "the migration was applied" in said[0], said
