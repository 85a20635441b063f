"""`python -m app db ...` and the settings it reads."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from app.__main__ import main
from app.settings import Settings, add_arguments
from db import migrate

REPO = Path(__file__).resolve().parents[2]


def test_settings_defaults_env_and_flags(tmp_path):
    defaults = Settings.from_env(environ={})
    assert defaults.data_dir == Path("data").resolve()
    assert defaults.db_url == f"sqlite:///{Path('data').resolve() / 'seiko.db'}"
    # the embedded model, made absolute: a worker started from another directory finds the same one
    assert (defaults.model, defaults.host, defaults.port) == (str(REPO / "models/shapes-sd"), "127.0.0.1", 7860)

    env = {"SEIKO_DATA_DIR": str(tmp_path), "SEIKO_MODEL": "m-env", "SEIKO_PORT": "8000"}
    from_env = Settings.from_env(environ=env)
    assert (from_env.data_dir, from_env.db_url, from_env.model, from_env.port) == (
        tmp_path,
        f"sqlite:///{tmp_path / 'seiko.db'}",
        "m-env",
        8000,
    )

    parser = argparse.ArgumentParser()
    add_arguments(parser, server=True)
    args = parser.parse_args(["--model", "m-flag", "--db-url", "postgresql+psycopg://x@h/d", "--port", "9000"])
    from_args = Settings.from_args(args, environ=env)
    assert (from_args.data_dir, from_args.db_url, from_args.model, from_args.port) == (
        tmp_path,
        "postgresql+psycopg://x@h/d",
        "m-flag",
        9000,
    )
    with pytest.raises(ValueError, match="the port must be a whole number from 1 to 65535, got 'http'"):
        Settings.from_env(environ={"SEIKO_PORT": "http"})
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['colour'\]"):
        Settings.from_env({"colour": "red"}, environ={})


def test_db_upgrade_current_downgrade(tmp_path, capsys):
    data_dir = tmp_path / "data"
    assert main(["db", "current", "--data-dir", str(data_dir)]) == 1
    assert "current: base (no schema)" in capsys.readouterr().out
    assert main(["db", "upgrade", "--data-dir", str(data_dir)]) == 0
    url = f"sqlite:///{data_dir / 'seiko.db'}"
    migrate.check_at_head(url)
    assert main(["db", "current", "--db-url", url]) == 0
    assert capsys.readouterr().out.endswith(f"current: {migrate.head_revision()}\nhead:    {migrate.head_revision()}\n")
    # found by review: one command dropped every table, ratings included, without a word
    assert main(["db", "downgrade", "base", "--db-url", url]) == 2
    assert "run it again with --yes" in capsys.readouterr().err and migrate.current_revision(url) == migrate.head_revision()
    assert main(["db", "downgrade", "base", "--db-url", url, "--yes"]) == 0
    assert migrate.current_revision(url) is None
    (backup,) = data_dir.glob("seiko.db.bak-*")
    assert migrate.current_revision(f"sqlite:///{backup}") == migrate.head_revision()  # the copy keeps everything


@pytest.mark.parametrize(("env", "message"), [
    ({"SEIKO_DATA_DIR": " "}, "the data directory must be a path"),
    ({"SEIKO_DATA_DIR": "~no-such-user-here/x"}, "names a home directory this machine does not know"),
    ({"SEIKO_DB_URL": "nonsense"}, "is not a URL"),
    ({"SEIKO_DB_URL": "sqlite://"}, "names no file"),
    ({"SEIKO_DB_URL": "mysql://u@h/db"}, "is for mysql; SQLite and PostgreSQL are supported"),
    ({"SEIKO_MODEL": " "}, "the model must be a diffusers model directory or a hub id"),
    ({"SEIKO_HOST": " "}, "the listen address \\(--host\\) must be an IP address or a host name"),
])
def test_settings_that_cannot_work_are_refused_with_a_sentence(env, message):
    """Found by review: each of these printed a traceback, or was silently read as something else (a blank data
    directory as the current one; a bad host as a busy port)."""
    from app.settings import SettingsError

    with pytest.raises(SettingsError, match=message):
        Settings.from_env(environ=env)


def test_a_data_dir_that_is_a_file_or_cannot_be_made_is_one_sentence(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    assert main(["db", "upgrade", "--data-dir", str(afile)]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    assert main(["db", "upgrade", "--db-url", f"sqlite:///{afile}/sub/seiko.db"]) == 1
    assert "could not be made" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["q?x=1", "p%41", "a#b"])
def test_the_default_database_is_in_the_data_dir_whatever_its_name(tmp_path, name):
    """An f-string URL put the database of data dir 'q?x=1' in the file 'q' beside it, and that of 'p%41' in 'pA/':
    two data dirs could share one database. Found by review."""
    data_dir = tmp_path / name
    settings = Settings.from_env({"data_dir": str(data_dir)}, environ={})
    assert main(["db", "upgrade", "--data-dir", str(data_dir)]) == 0
    assert (data_dir / "seiko.db").is_file() and migrate.current_revision(settings.db_url) == migrate.head_revision()


def test_a_postgresql_url_without_a_driver_uses_the_installed_one():
    assert Settings.from_env(environ={"SEIKO_DB_URL": "postgresql://u@h/d"}).db_url == "postgresql+psycopg://u@h/d"


def test_unknown_command_lists_the_choices(capsys):
    with pytest.raises(SystemExit):
        main(["bogus"])
    from app.__main__ import COMMANDS

    assert f"unknown command 'bogus'; choose from {sorted(COMMANDS)}" in capsys.readouterr().err


def test_python_dash_m_app_runs(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "app", "db", "current", "--data-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "head:" in done.stdout, done.stderr


def test_the_copy_before_a_downgrade_keeps_the_files_mode_and_finds_a_uri_file(tmp_path):
    """The copy was made with the default mode (0644: readable by every local user beside a 0600 database) and a
    ``?uri=true`` URL was not copied at all, silently (found by review)."""
    import os
    import stat

    path = tmp_path / "seiko.db"
    migrate.upgrade(f"sqlite:///{path}")
    os.chmod(path, 0o600)
    copy = migrate.backup_sqlite(f"sqlite:///{path}")
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    copy = migrate.backup_sqlite(f"sqlite:///file:{path}?uri=true")
    assert copy is not None and copy.parent == tmp_path and migrate.current_revision(f"sqlite:///{copy}") is not None
    assert migrate.backup_sqlite(f"sqlite:///file:{tmp_path / 'absent.db'}?uri=true") is None
    assert migrate.backup_sqlite("sqlite:///file:mem?mode=memory&uri=true") is None


def test_a_copy_that_cannot_be_made_is_one_sentence_and_leaves_no_empty_file(tmp_path, monkeypatch):
    """A directory the copy could not be written to ended in a traceback, and a failed copy left an empty .bak file
    (found by review)."""
    import sqlite3

    path = tmp_path / "seiko.db"
    migrate.upgrade(f"sqlite:///{path}")

    def no_backup(self, target, *args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(migrate, "_copy_sqlite", lambda source, target: no_backup(None, target))
    with pytest.raises(ValueError, match=r"could not copy the database to .*\.bak-.* \(disk I/O error\); nothing was "
                                         r"changed"):
        migrate.backup_sqlite(f"sqlite:///{path}")
    assert not list(tmp_path.glob("seiko.db.bak-*"))


def test_a_new_database_and_its_directory_are_the_owners_alone(tmp_path):
    """The SQLite file (password hashes, session tokens, every rating) was created with the default mode, 0644 under
    the usual umask: readable by every local user, as was the data directory with the ratings export in it (found by
    review). A new data directory is 0700 and a new database file 0600."""
    import stat

    data = tmp_path / "data"
    migrate.upgrade(f"sqlite:///{data / 'seiko.db'}")
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "seiko.db").stat().st_mode) == 0o600


def test_a_data_directory_is_the_owners_alone_when_the_database_is_elsewhere(tmp_path, capsys):
    """Only the SQLite path made the data directory (0700): with PostgreSQL, or a database file elsewhere, the first
    image or export made it with the default mode, 0755 under the usual umask, and every local user could read the
    ratings export (every rater's name and score), the images and the adapters (found by review). The web app's start
    (and the worker's) makes a missing one 0700 and takes others' access from an existing one, saying so (its
    group's is kept: a deployment may share it by group). `db upgrade` with a database elsewhere makes no data
    directory: a migration may run where there is none. A path that cannot be made one is one sentence."""
    import stat

    from app.cli_serve import build_services
    from app.settings import SettingsError

    db_url = f"sqlite:///{tmp_path / 'elsewhere' / 'seiko.db'}"
    data = tmp_path / "data"
    assert main(["db", "upgrade", "--data-dir", str(data), "--db-url", db_url]) == 0
    assert not data.exists()

    def serve(data_dir):
        engine, _ = build_services(Settings.from_env({"data_dir": str(data_dir), "db_url": db_url}, environ={}))
        engine.dispose()

    capsys.readouterr()
    serve(data)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700 and capsys.readouterr().out == ""
    old = tmp_path / "old"
    old.mkdir()
    old.chmod(0o755)
    serve(old)
    assert stat.S_IMODE(old.stat().st_mode) == 0o750
    assert f"the data directory {str(old)!r} was open to every user of this machine (mode 0755); it is now 0750" in (
        capsys.readouterr().out)
    serve(old)  # said once: nothing to say the next time
    assert stat.S_IMODE(old.stat().st_mode) == 0o750 and "open to every user" not in capsys.readouterr().out

    (tmp_path / "a-file").write_text("not a directory")
    blocked = tmp_path / "a-file" / "data"
    with pytest.raises(SettingsError, match=r"^the data directory '.*a-file/data' could not be made \(.+\)$"):
        serve(blocked)
    assert (tmp_path / "a-file").read_text() == "not a directory"


def test_a_downgrade_names_its_database_and_makes_none_where_there_is_none(tmp_path, capsys):
    """A downgrade of a data directory without a database (a typo in --data-dir) created a 0644 seiko.db, said
    'database at base' with status 0, and the next upgrade kept that mode for password hashes; nor did it say which
    database it was about to empty, though $SEIKO_DB_URL wins over --data-dir (found by review)."""
    data_dir = tmp_path / "typo"
    data_dir.mkdir()
    assert main(["db", "downgrade", "base", "--yes", "--data-dir", str(data_dir)]) == 1
    err = capsys.readouterr().err
    assert "there is no database at" in err and "nothing was changed" in err and not (data_dir / "seiko.db").exists()
    assert main(["db", "upgrade", "--data-dir", str(data_dir)]) == 0
    capsys.readouterr()
    assert main(["db", "downgrade", "0008", "--yes", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert f"downgrading the database {'sqlite:///' + str(data_dir / 'seiko.db')!r} to 0008" in out


def test_a_schema_newer_than_the_code_says_so(tmp_path):
    """A database migrated by newer code was told to run `db upgrade`, which then failed: 'Can't locate revision'
    (found by review)."""
    import sqlite3

    from db.migrate import SchemaOutOfDate

    url = f"sqlite:///{tmp_path / 'seiko.db'}"
    migrate.upgrade(url)
    with sqlite3.connect(tmp_path / "seiko.db") as db:
        db.execute("UPDATE alembic_version SET version_num = '0999'")
    with pytest.raises(SchemaOutOfDate, match=r"^the database schema is at 0999, which this code does not know: it "
                                              r"was migrated by newer code; run that code \(its own `db downgrade` "
                                              r"can take the schema back to .*\)$"):
        migrate.check_at_head(url)


@pytest.mark.parametrize(("url", "message"), [
    ("postgresql://a:S3cret@db.example:abc/seiko", "is not a URL"),
    ("postgresql://a:S3cret@db.example/seiko?foo=bar", r"cannot be used \(invalid connection option \"foo\"\)"),
    ("sqlite:////tmp/q.db?timeout=abc", r"cannot be used \(could not convert string to float: 'abc'\)"),
    ("postgresql+asyncpg://a:S3cret@db.example/seiko", r"cannot be used \(No module named 'asyncpg'\)"),
    ("sqlite+aiosqlite:////tmp/x.db", r"cannot be used \(No module named 'aiosqlite'\)"),
    ("sqlite:///file:x?mode=memory&uri=true", "names no file"),
    ("postgresql:/alice:S3cret@db/seiko", "is not a URL"),
])
def test_a_database_url_that_cannot_work_is_one_sentence_without_its_password(url, message):
    """Each of these passed the settings check and failed later with a traceback (a port that is not a number, an
    option psycopg does not know, a query value of the wrong kind, a driver that is not installed), or was an
    in-memory database; and the 'not a URL' refusal repeated the password it was given (found by review)."""
    from app.settings import SettingsError

    with pytest.raises(SettingsError, match=message) as refused:
        Settings.from_env(environ={"SEIKO_DB_URL": url})
    assert "S3cret" not in str(refused.value) and "\n" not in str(refused.value)


def test_a_sqlite_url_with_a_home_or_relative_path_is_made_absolute(tmp_path, monkeypatch):
    """sqlite:///~/x.db made a directory named '~' in the current directory (the data directory's ~ was expanded,
    the URL's was not), and a relative file moved with the current directory (found by review)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert Settings.from_env(environ={"SEIKO_DB_URL": "sqlite:///~/x.db"}).db_url == \
        f"sqlite:///{tmp_path / 'home' / 'x.db'}"
    assert Settings.from_env(environ={"SEIKO_DB_URL": "sqlite:///rel/y.db"}).db_url == f"sqlite:///{tmp_path / 'rel' / 'y.db'}"


def test_a_public_url_with_a_password_is_refused_without_repeating_it():
    from app.settings import SettingsError

    with pytest.raises(SettingsError, match="no path") as refused:
        Settings.from_env(environ={"SEIKO_PUBLIC_URL": "https://admin:Hunter2pw@seiko.example.org"})
    assert "Hunter2pw" not in str(refused.value)


@pytest.mark.parametrize(("env", "shown"), [
    ({"SEIKO_DB_URL": "bob:S3cretPW@dbhost/seiko"}, "'***@dbhost/seiko'"),
    ({"SEIKO_DB_URL": "postgresql//bob:S3cretPW@dbhost/seiko"}, "'***@dbhost/seiko'"),
    ({"SEIKO_DB_URL": "postgresql:/bob:S3cretPW@dbhost/seiko"}, "'***@dbhost/seiko'"),
    ({"SEIKO_DB_URL": "postgresql://bob:S3cretPW@dbhost:abc/seiko"}, "'postgresql://bob:***@dbhost:abc/seiko'"),
    ({"SEIKO_DB_URL": "postgresql://dbhost:abc/seiko?password=S3cretPW&x=1"}, "?password=***&x=1'"),
    ({"SEIKO_PUBLIC_URL": "bob:S3cretPW@seiko.example.org"}, "'***@seiko.example.org'"),
    ({"SEIKO_PUBLIC_URL": "https://bob:S3cretPW@seiko.example.org"}, "'https://bob:***@seiko.example.org'"),
])
def test_a_malformed_url_is_refused_without_its_password(env, shown):
    """Only a URL starting 'scheme:' then 'user:' had its password hidden: 'bob:pw@host/db' or
    'postgresql//bob:pw@host/db' was repeated with the password in clear (found by review). Everything before the
    last @ is hidden now; a well-formed scheme://user:password@ keeps its user name."""
    from app.settings import SettingsError

    with pytest.raises(SettingsError) as refused:
        Settings.from_env(environ=env)
    assert "S3cretPW" not in str(refused.value) and shown in str(refused.value), str(refused.value)


def test_db_current_does_not_print_the_password_of_a_malformed_url(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("SEIKO_")}
    proc = subprocess.run([sys.executable, "-m", "app", "db", "current", "--data-dir", str(tmp_path / "d"),
                           "--db-url", "bob:S3cretPW@dbhost/seiko"], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=300, env={**env, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "S3cretPW" not in proc.stdout + proc.stderr, proc.stderr
    assert "the database URL '***@dbhost/seiko' is not a URL" in proc.stderr


def test_an_upgrade_takes_other_users_read_access_from_an_existing_database(tmp_path):
    """A database made before new ones were created 0600 stayed 0644 (password hashes and session tokens readable by
    every local user) through every later upgrade (found by review). An upgrade now takes group and other access
    from the file and from its WAL and shared-memory files."""
    import os
    import stat

    url = f"sqlite:///{tmp_path / 'seiko.db'}"
    migrate.upgrade(url)
    os.chmod(tmp_path / "seiko.db", 0o644)
    migrate.upgrade(url)
    assert stat.S_IMODE((tmp_path / "seiko.db").stat().st_mode) == 0o600
    os.chmod(tmp_path / "seiko.db", 0o640)  # group access too
    migrate.upgrade(url)
    assert stat.S_IMODE((tmp_path / "seiko.db").stat().st_mode) == 0o600


@pytest.mark.parametrize("url", [
    "postgresql+psycopg://u@127.0.0.1/db?password=s3cret&sslmod=require",
    "postgresql://u:top/s3cret@h:x/db",
    "postgresql://u:s3cret@more@h:x/db",
    "postgresql+psycopg://u@127.0.0.1/db?sslpassword=s3cret&sslmod=require",
])
def test_no_refusal_shows_a_password_given_in_the_query_or_with_odd_characters(url):
    """SQLAlchemy hides only user:password@; a ?password= parameter was printed, and the fallback mask showed a
    password holding '/' or '@' (found by review)."""
    from app.settings import SettingsError

    with pytest.raises(SettingsError) as refused:
        Settings.from_env(environ={"SEIKO_DB_URL": url})
    assert "s3cret" not in str(refused.value), str(refused.value)


def test_a_downgrade_that_would_enable_disabled_accounts_or_names_no_revision_is_refused_first(tmp_path, capsys):
    """0002's downgrade drops raters.disabled_at, so after an upgrade a disabled account signed in again (found by
    review); and an unknown revision was refused only after the database, password hashes included, had been copied.
    Both are refused in one sentence before anything is copied or changed."""
    from app import auth
    from db.engine import make_engine, session_factory

    data_dir = tmp_path / "data"
    assert main(["db", "upgrade", "--data-dir", str(data_dir)]) == 0
    url = f"sqlite:///{data_dir / 'seiko.db'}"
    engine = make_engine(url)
    try:
        factory = session_factory(engine)
        auth.add_user(factory, name="root", role="admin", password="a long enough password")
        auth.add_user(factory, name="mallory", role="rater", password="a long enough password")
        auth.set_disabled(factory, name="mallory", disabled=True)
    finally:
        engine.dispose()
    capsys.readouterr()
    for rev, said in (("0001", "1 account(s) are disabled ('mallory'); a downgrade below 0002 drops that mark"),
                      ("0042", f"cannot downgrade from {migrate.head_revision()} to '0042'")):
        assert main(["db", "downgrade", rev, "--yes", "--data-dir", str(data_dir)]) == 1
        err = capsys.readouterr().err
        assert said in err and "nothing was changed" in err, err
        assert not list(data_dir.glob("seiko.db.bak-*"))  # no copy made
        assert migrate.current_revision(url) == migrate.head_revision()
    # a relative target counts from the database's revision, as alembic's downgrade does (a review: the check counted
    # from the newest, so at 0008 "-7" was checked as 0003 and went to 0001)
    assert main(["db", "downgrade", "0008", "--yes", "--data-dir", str(data_dir)]) == 0
    capsys.readouterr()
    assert main(["db", "downgrade", "-7", "--yes", "--data-dir", str(data_dir)]) == 1
    assert "1 account(s) are disabled" in capsys.readouterr().err and migrate.current_revision(url) == "0008"
    for expected in ("0007", "0006"):  # "-1" again and again, below the newest revision too
        assert main(["db", "downgrade", "-1", "--yes", "--data-dir", str(data_dir)]) == 0
        assert migrate.current_revision(url) == expected
    assert main(["db", "downgrade", "0002", "--yes", "--data-dir", str(data_dir)]) == 0  # the mark survives that


def test_a_downgrade_of_a_database_never_migrated_is_refused_first_in_one_sentence(tmp_path, capsys):
    """check_downgrade checked the target only against a recorded revision: a database with none (never migrated, or
    taken to base) was copied, password hashes and all, and then refused by alembic's own words ("the schema migration
    was refused: Destination 0014 is not a valid downgrade target from current head(s)", "Relative revision -1 didn't
    produce 1 migrations", "Can't locate revision identified by 'nope'"), none saying whether anything had changed.
    Found by the eighth review. Now one sentence before anything is copied; 'base' is still nothing to do."""
    import sqlite3

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    sqlite3.connect(data_dir / "seiko.db").close()  # a database file, never migrated
    for rev in ("0014", "-1", "nope"):
        assert main(["db", "downgrade", rev, "--yes", "--data-dir", str(data_dir)]) == 1
        err = capsys.readouterr().err
        assert err == (f"error: the database has no schema revision recorded (never migrated, or taken down to base), "
                       f"so there is nothing to downgrade to {rev!r}; nothing was changed\n"), err
        assert not list(data_dir.glob("seiko.db.bak-*"))  # no copy made
    assert main(["db", "downgrade", "base", "--yes", "--data-dir", str(data_dir)]) == 0
    assert "database at base (no schema)" in capsys.readouterr().out


def test_an_upgrade_or_downgrade_of_a_schema_newer_than_the_code_says_so_in_one_sentence(tmp_path, capsys):
    """Old code run on a database newer code migrated (a rolled-back deployment whose start runs `db upgrade`): the
    upgrade was refused in alembic's words, "the schema migration was refused: Can't locate revision identified by
    '0999'", and the downgrade as "cannot downgrade from 0999 to '0014' (No such revision or branch '0999'); the
    revisions are [...]": neither said that newer code had migrated it and what to run (check_at_head says so: found
    by review), the upgrade not whether anything had changed. Found by the eighth review."""
    import sqlite3

    data_dir = tmp_path / "data"
    assert main(["db", "upgrade", "--data-dir", str(data_dir)]) == 0
    with sqlite3.connect(data_dir / "seiko.db") as db:
        db.execute("UPDATE alembic_version SET version_num = '0999'")
    capsys.readouterr()
    said = (f"error: the database schema is at 0999, which this code does not know: it was migrated by newer code; "
            f"run that code (its own `db downgrade` can take the schema back to {migrate.head_revision()} for this "
            f"one); nothing was changed\n")
    for args in (["upgrade"], ["upgrade", "0014"], ["downgrade", "0014", "--yes"], ["downgrade", "-1", "--yes"]):
        assert main(["db", *args, "--data-dir", str(data_dir)]) == 1
        assert capsys.readouterr().err == said, args
    assert not list(data_dir.glob("seiko.db.bak-*"))  # no copy made
    assert migrate.current_revision(f"sqlite:///{data_dir / 'seiko.db'}") == "0999"


def test_a_revision_alembic_cannot_resolve_is_one_sentence_and_changes_nothing(tmp_path, capsys):
    """`db upgrade ""` (on any database), `db upgrade head+1` and `db downgrade ""` ended in a bare AssertionError from
    inside alembic's revision lookup, a traceback that named neither the revision nor whether anything had changed
    (a read-only review). Now each is refused like an unknown revision: one sentence naming it, status 1, the
    database where it was."""
    data_dir = tmp_path / "data"
    url = f"sqlite:///{data_dir / 'seiko.db'}"
    for args in (["upgrade", ""], ["upgrade", "head+1"]):  # a database with no revision (a new one)
        assert main(["db", *args, "--data-dir", str(data_dir)]) == 1, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and f"{args[1]!r} is not a revision" in err, err
        assert "nothing was changed" in err and migrate.current_revision(url) is None
    assert main(["db", "upgrade", "0003", "--data-dir", str(data_dir)]) == 0
    capsys.readouterr()
    for args in (["upgrade", ""], ["upgrade", "head+1"], ["upgrade", "head+20"], ["downgrade", "", "--yes"]):
        assert main(["db", *args, "--data-dir", str(data_dir)]) == 1, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and f"{args[1]!r} is not a revision" in err, err
        assert "0003" in err and "nothing was changed" in err and migrate.current_revision(url) == "0003"
    assert not list(data_dir.glob("seiko.db.bak-*"))  # no copy made
    # a relative target alembic can resolve still goes where it says
    assert main(["db", "upgrade", "+1", "--data-dir", str(data_dir)]) == 0
    assert migrate.current_revision(url) == "0004"


@pytest.mark.parametrize("rev, said", [
    ("", "'' is not a revision this schema has"),
    ("head+1", "'head+1' is not a revision this schema has"),
    ("9999", "Can't locate revision identified by '9999'"),
    ("zzz", "Can't locate revision identified by 'zzz'"),
    ("0001:0002", "Range revision not allowed"),
    ("x@head", "Can't locate revision identified by 'x'"),
    ("-1", "Relative revision -1 didn't produce 1 migrations"),
    ("+99", "Relative revision +99 didn't produce 99 migrations"),  # past head, however many there are
])
def test_a_revision_alembic_cannot_resolve_makes_no_new_database_file(tmp_path, capsys, monkeypatch, rev, said):
    """`db upgrade ""` and `db upgrade head+1` with a SQLite file that did not exist yet were refused in one sentence,
    but the empty database file had been made first (sixteenth review), and so was it for a revision alembic refuses
    itself ("9999", "zzz": a read-only review of that fix). The refusal comes before anything is made, in the words an
    empty file that exists already is refused in: neither the file nor its directory is there afterwards; a target
    that resolves still makes it. That check called alembic's private ScriptDirectory._upgrade_revs, which a newer
    alembic may rename or change without notice (eighteenth review): it is taken away here, after the existing file's
    refusal (alembic's own command.upgrade uses it), and the new file's refusal is the same."""
    from alembic.script import ScriptDirectory

    from db.errors import InvalidInput

    empty = tmp_path / "empty.db"  # a database at base that exists: refused by the migration step itself
    empty.touch()
    with pytest.raises(InvalidInput) as step_refused:
        migrate.upgrade(f"sqlite:///{empty}", rev)
    monkeypatch.delattr(ScriptDirectory, "_upgrade_revs")
    data_dir = tmp_path / "new" / "data"
    url = f"sqlite:///{data_dir / 'seiko.db'}"
    with pytest.raises(InvalidInput) as refused:
        migrate.upgrade(url, rev)
    assert str(refused.value) == str(step_refused.value) == (
        f"the schema migration was refused: {said} (the database is at base); nothing was changed")
    assert not (data_dir / "seiko.db").exists() and not data_dir.parent.exists()
    assert main(["db", "upgrade", rev, "--data-dir", str(data_dir)]) == 1
    assert capsys.readouterr().err == f"error: {refused.value}\n"
    assert not (data_dir / "seiko.db").exists() and not data_dir.parent.exists()
    monkeypatch.undo()
    assert main(["db", "upgrade", "0001", "--data-dir", str(data_dir)]) == 0
    assert migrate.current_revision(url) == "0001"


def test_db_upgrade_of_a_new_an_older_a_current_and_a_newer_database(empty_db_url, capsys):
    """`db upgrade` on each database it meets, on both backends: a new one (SQLite: no file yet) is made at the
    target; one at an older revision goes to the newest, its rows kept; one at the newest is left as it is; one newer
    code migrated (a revision this code does not know) is refused in one sentence, status 1, its rows and revision
    kept. Pinned when the new file's check left alembic's private API (eighteenth review)."""
    from sqlalchemy import text

    from db.engine import make_engine

    def read(sql: str) -> list:
        engine = make_engine(empty_db_url)
        try:
            with engine.begin() as connection:
                result = connection.execute(text(sql))
                return result.scalars().all() if result.returns_rows else []
        finally:
            engine.dispose()

    def upgrade(*rev: str) -> tuple[int, str, str]:
        code = main(["db", "upgrade", *rev, "--db-url", empty_db_url])
        out, err = capsys.readouterr()
        return code, out, err

    head = max(path.name[:4] for path in (REPO / "migrations" / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))
    path = migrate._sqlite_file(empty_db_url)
    assert path is None or not path.exists()
    assert upgrade("0005") == (0, f"database at 0005 (head is {head})\n", "")
    assert read("SELECT version_num FROM alembic_version") == ["0005"]
    read("INSERT INTO raters (name, role, password_hash, created_at) VALUES ('alice', 'rater', 'h', CURRENT_TIMESTAMP)")
    for _ in range(2):  # from 0005, then at the newest already
        assert upgrade() == (0, f"database at {head} (head is {head})\n", "")
        assert read("SELECT version_num FROM alembic_version") == [head]
        assert read("SELECT name FROM raters") == ["alice"]
    read("UPDATE alembic_version SET version_num = '0999'")
    for rev in ((), ("head",), ("0014",)):
        assert upgrade(*rev) == (1, "", "error: the database schema is at 0999, which this code does not know: it was "
                                 f"migrated by newer code; run that code (its own `db downgrade` can take the schema "
                                 f"back to {head} for this one); nothing was changed\n"), rev
        assert read("SELECT version_num FROM alembic_version") == ["0999"]
        assert read("SELECT name FROM raters") == ["alice"]


def _alice_and_an_experiment(url: str) -> tuple[int, int]:
    """A rater and an experiment in the database at ``url``: (rater id, experiment id)."""
    from db import repo
    from db.engine import make_engine, session_factory, write_session

    engine = make_engine(url)
    try:
        with write_session(session_factory(engine)) as s:
            rater = repo.create_rater(session=s, name="alice", password_hash="h").id
            exp = repo.create_experiment(session=s, name="e", model_spec="m", method="greedy", config={}, budgets=[1],
                                         prompts=["p"]).id
    finally:
        engine.dispose()
    return rater, exp


def test_the_copy_before_a_downgrade_holds_what_a_live_server_wrote_before_the_downgrade_locked(tmp_path, monkeypatch,
                                                                                               capsys):
    """`db downgrade` copied a SQLite database before the migration took the write lock: what a live server wrote in
    between, to a table or column the downgrade drops (a rater added to an experiment's list, 0015's
    experiment_raters), was in neither the copy nor the result (found by the ninth review). The copy is made inside the
    migration's transaction now, under the write lock its steps then use: a write right after the copy waits for the
    downgrade (here refused at once: no busy timeout), so every write it drops is in the copy."""
    import sqlite3

    data_dir = tmp_path / "data"
    assert main(["db", "upgrade", "--data-dir", str(data_dir)]) == 0
    path = data_dir / "seiko.db"
    rater, exp = _alice_and_an_experiment(f"sqlite:///{path}")
    copy_sqlite = migrate._copy_sqlite
    server: list[str] = []

    def copy_then_write(source, target) -> None:
        copy_sqlite(source, target)
        live = sqlite3.connect(path, timeout=0, isolation_level=None)  # a live server's write, right after the copy
        try:
            live.execute("INSERT INTO experiment_raters (experiment_id, rater_id, added_at) VALUES (?, ?, "
                         "CURRENT_TIMESTAMP)", (exp, rater))
            server.append("written")
        except sqlite3.OperationalError as exc:
            assert "database is locked" in str(exc), exc  # held off by the downgrade's write lock
            server.append("held off")
        finally:
            live.close()

    monkeypatch.setattr(migrate, "_copy_sqlite", copy_then_write)
    assert main(["db", "downgrade", "0014", "--yes", "--data-dir", str(data_dir)]) == 0
    (backup,) = data_dir.glob("seiko.db.bak-*")
    assert f"copied the database to {backup}" in capsys.readouterr().out
    copy = sqlite3.connect(backup)
    try:
        kept = copy.execute("SELECT experiment_id, rater_id FROM experiment_raters").fetchall()
    finally:
        copy.close()
    # a write the downgrade dropped is in the copy, or it was held off: never in neither
    assert kept == [(exp, rater)] if server == ["written"] else server == ["held off"] and kept == [], (server, kept)
    assert server == ["held off"], "the server's write went in between the copy and the downgrade's lock"
    assert migrate.current_revision(f"sqlite:///{path}") == "0014"


def _set_heartbeats(url, when) -> None:
    """Every live_processes row's heartbeat set to ``when``, directly (no sleeps)."""
    from sqlalchemy import update

    from db.engine import make_engine, session_factory, write_session
    from db.models import LiveProcess

    engine = make_engine(url)
    try:
        with write_session(session_factory(engine)) as s:
            s.execute(update(LiveProcess).values(heartbeat_at=when))
    finally:
        engine.dispose()


def _register(url, kind, host, pid) -> None:
    from db import presence
    from db.engine import make_engine, session_factory, write_session

    engine = make_engine(url)
    try:
        with write_session(session_factory(engine)) as s:
            presence.register(s, kind=kind, head=migrate.head_revision(), host=host, pid=pid)
    finally:
        engine.dispose()


def test_a_downgrade_beside_a_live_process_is_refused_unless_told(tmp_path, capsys):
    """`db downgrade` beside a live worker was neither refused nor warned (ninth review); then only a running job's
    lease was seen, and a server, or a worker between jobs, left no mark: the command could only warn (tenth review).
    Each now keeps a row in live_processes (migration 0016) whose heartbeat it refreshes: a fresh row, or a running
    job's live lease, refuses the downgrade in one sentence naming kind, host and pid, unless --ignore-live-processes
    (or its old name, --ignore-live-worker) is given; a row or a lease run out (a process that died) refuses
    nothing."""
    from datetime import timedelta

    from db import jobs, presence
    from db.engine import make_engine, session_factory, write_session
    from db.models import utcnow

    data_dir = tmp_path / "data"
    url = f"sqlite:///{data_dir / 'seiko.db'}"
    head = migrate.head_revision()

    def downgrade(*flags) -> int:
        for backup in data_dir.glob("seiko.db.bak-*"):
            backup.unlink()
        capsys.readouterr()
        return main(["db", "downgrade", "0014", "--yes", *flags, "--data-dir", str(data_dir)])

    def refused(*said) -> None:
        assert downgrade() == 1
        err = capsys.readouterr().err
        assert err.startswith("error: the database is in use by ") and err.count("\n") == 1, err
        assert err.endswith("): stop them first, or run it again with --ignore-live-processes; nothing was "
                            "changed\n"), err
        for part in said:
            assert part in err, (part, err)
        assert migrate.current_revision(url) == head and not list(data_dir.glob("seiko.db.bak-*"))

    assert main(["db", "upgrade", "--data-dir", str(data_dir)]) == 0
    # a server alone: no job, no lease
    _register(url, "server", "web1", 4321)
    refused("by 1 live process(es) (a server on host 'web1' with pid 4321, last heard from ")
    _register(url, "worker", "gpu1", 99)
    refused("by 2 live process(es)", "a server on host 'web1' with pid 4321", "a worker on host 'gpu1' with pid 99")
    # heartbeats older than STALE_AFTER_S: processes that died; nothing refuses
    _set_heartbeats(url, utcnow() - timedelta(seconds=presence.STALE_AFTER_S + 1))
    assert downgrade() == 0 and migrate.current_revision(url) == "0014"
    assert main(["db", "upgrade", "--data-dir", str(data_dir)]) == 0
    engine = make_engine(url)
    try:
        with write_session(session_factory(engine)) as s:
            for _ in range(2):
                jobs.enqueue_job(session=s, kind="eval")
            jobs.claim_job(session=s, worker_id="gone", lease_s=60, now=utcnow() - timedelta(hours=1))
        assert downgrade() == 0  # a lease run out: no one
        assert main(["db", "upgrade", "--data-dir", str(data_dir)]) == 0
        with write_session(session_factory(engine)) as s:
            live = jobs.claim_job(session=s, worker_id="w1", lease_s=600).id
    finally:
        engine.dispose()
    refused(f"by 1 live process(es) (worker 'w1' working on job {live} under a lease that runs to ")
    _register(url, "server", "web1", 4321)
    for flag in ("--ignore-live-worker", "--ignore-live-processes"):
        assert downgrade(flag) == 0 and migrate.current_revision(url) == "0014"
        assert main(["db", "upgrade", "--data-dir", str(data_dir)]) == 0
        _register(url, "server", "web1", 4321)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["db", "downgrade", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "Refused while a server or a worker is live" in help_text and "--ignore-live-processes" in help_text \
        and "--ignore-live-worker" in help_text and "leaves no mark" not in help_text, help_text


def test_a_process_that_registers_after_the_downgrades_first_checks_is_still_refused(tmp_path, capsys, monkeypatch):
    """The look for live processes was a read of its own before the migration began: a worker that claimed a job (or
    a server that started) between that look and the migration's lock went unseen, and the downgrade dropped what it
    wrote to (tenth review). The look is now made inside the migration's transaction, under its lock: a server that
    registers, and a worker that claims a job, after every check before the migration are refused all the same."""
    from db import jobs
    from db.engine import make_engine, session_factory, write_session

    data_dir = tmp_path / "data"
    url = f"sqlite:///{data_dir / 'seiko.db'}"
    assert main(["db", "upgrade", "--data-dir", str(data_dir)]) == 0
    engine = make_engine(url)
    try:
        with write_session(session_factory(engine)) as s:
            jobs.enqueue_job(session=s, kind="eval")
    finally:
        engine.dispose()
    migrating = migrate._run

    def started_as_the_migration_begins(*args, **kwargs):
        _register(url, "server", "late", 7)
        claimer = make_engine(url)
        try:
            with write_session(session_factory(claimer)) as s:
                jobs.claim_job(session=s, worker_id="w-late", lease_s=600)
        finally:
            claimer.dispose()
        return migrating(*args, **kwargs)

    monkeypatch.setattr(migrate, "_run", started_as_the_migration_begins)
    capsys.readouterr()
    assert main(["db", "downgrade", "0014", "--yes", "--data-dir", str(data_dir)]) == 1
    err = capsys.readouterr().err
    assert "by 2 live process(es) (a server on host 'late' with pid 7, last heard from " in err, err
    assert "; worker 'w-late' working on job 1 under a lease that runs to " in err, err
    assert migrate.current_revision(url) == migrate.head_revision() and not list(data_dir.glob("seiko.db.bak-*"))


# -- the database steps of a migration command before its one transaction (thirteenth review) --------------------------
# check_upgrade, check_downgrade's revision read and its look for disabled accounts (refuse_disabled_accounts) ran
# outside migrate._run: a lock or a statement cut there was the page's sentence ("... so the change that waited for it
# was not saved"), a refused connection the driver's words, and a caller of db.migrate got a bare OperationalError.


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one sentence, no traceback
    return err.removeprefix("error: ").rstrip("\n")


def _held(url: str, statement: str):
    """A connection of its own holding ``statement``'s lock in an open transaction (a server's, a worker's)."""
    from sqlalchemy import text

    from db.engine import make_engine

    engine = make_engine(url)
    connection = engine.connect()
    connection.execute(text(statement))
    return engine, connection


@pytest.mark.parametrize("bound", ["lock_timeout", "statement_timeout"])
def test_a_postgresql_bound_that_runs_out_before_the_migration_is_the_migrations_sentence(empty_db_url, capsys, bound):
    """PostgreSQL: a table lock held by another transaction (a migration's, an admin's) past the bound the URL sets,
    met by `db upgrade`'s check (the revision read), by `db downgrade`'s revision read and by its look for disabled
    accounts (a downgrade below 0002), and by `demo`'s upgrade: each is one sentence naming the bound in force
    (0.3 s), nothing changed, exit 1. It was the page's sentence, "... so the change that waited for it was not saved;
    try again in a moment", and db.migrate raised a bare OperationalError. The revision read says the revision could
    not be read (db.migrate.RevisionUnread), and the look for disabled accounts that a read was held off: both were
    the migration's own lock sentence (fourteenth review)."""
    if empty_db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's lock_timeout and statement_timeout set in the URL")
    from db.errors import InvalidInput

    migrate.upgrade(empty_db_url)
    head = migrate.head_revision()
    # lock_timeout=0 leaves only the statement bound: the wait is cut there (57014), not as a lock not granted (55P03)
    options = ("-c%20lock_timeout%3D300" if bound == "lock_timeout"
               else "-c%20lock_timeout%3D0%20-c%20statement_timeout%3D300")
    url = f"{empty_db_url}?options={options}"
    unread = ("the schema revision could not be read: " + (
        "another transaction held a lock the read needed for more than 0.3 s (a migration, or another open transaction)"
        if bound == "lock_timeout" else
        "the database cancelled the read at its statement_timeout of 0.3 s (set for this role, database or URL, or in "
        "the server's configuration; the read ran, or waited for a lock, that long)") +
        "; nothing was changed; try again in a moment")
    # a read is held off only by an exclusive lock (another migration's, an admin's LOCK TABLE): it said "(a server, a
    # worker or an open transaction holds it); stop them", and "a statement of the migration" (fourteenth review)
    checked = ("the database is in use: a read before the migration was held off by a lock for more than 0.3 s (a "
               "migration, or another open transaction); run it again once that is done; nothing was changed"
               if bound == "lock_timeout" else
               "a read before the migration was cancelled at the database's statement_timeout of 0.3 s (set for this "
               "role, database or URL, or in the server's configuration; the read ran, or waited for a lock, that "
               "long), so nothing was changed; run it again with a longer bound for the migration (in the database URL, SEIKO_DB_URL or --db-url, add "
               "`-c statement_timeout=0` to its options)")
    for table, said, commands in (
            ("alembic_version", unread, (["db", "upgrade"], ["db", "downgrade", "-1", "--yes"], ["demo"])),
            ("raters", checked, (["db", "downgrade", "base", "--yes"],))):
        engine, held = _held(empty_db_url, f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        try:
            for command in commands:
                assert main([*command, "--db-url", url]) == 1, command
                assert _one_error_line(capsys).startswith(said), command
            if table == "alembic_version":
                with pytest.raises(InvalidInput, match=f"^{said[:40]}"):
                    migrate.upgrade(url)
        finally:
            held.close()
            engine.dispose()
        assert migrate.current_revision(empty_db_url) == head


def test_a_sqlite_lock_held_before_the_migration_is_the_migrations_sentence(tmp_path, capsys, monkeypatch):
    """SQLite: another connection holding the database's lock (locking_mode EXCLUSIVE, as the sqlite3 shell may) past
    the busy timeout, met by `db upgrade`'s check and `db downgrade`'s revision read: the migration's one sentence
    naming the busy timeout, nothing changed, exit 1 (was the page's "... the change that waited for it was not
    saved", and a bare OperationalError from db.migrate). It says the revision could not be read: it said "its write
    lock was not granted", though a read takes none (fourteenth review)."""
    import sqlite3

    from db import engine as db_engine
    from db.errors import InvalidInput

    path = tmp_path / "held.db"
    url = f"sqlite:///{path}"
    migrate.upgrade(url, "0016")
    monkeypatch.setattr(db_engine, "BUSY_TIMEOUT_MS", 300)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode = EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("UPDATE alembic_version SET version_num = version_num")  # the lock taken, kept to the end
        said = ("the schema revision could not be read: another transaction held a lock the read needed for more "
                "than 0.3 s (a migration, or another open transaction); nothing was changed; try again in a moment")
        for command in (["db", "upgrade"], ["db", "downgrade", "-1", "--yes"]):
            assert main([*command, "--db-url", url]) == 1, command
            assert _one_error_line(capsys) == said, command
        with pytest.raises(InvalidInput) as refused:
            migrate.upgrade(url)
        assert str(refused.value) == said
    finally:
        holder.close()
    assert migrate.current_revision(url) == "0016"


def test_a_database_that_refuses_the_connection_is_one_sentence_before_the_migration(capsys):
    """A PostgreSQL server that refuses the connection (nothing listens on the port): `db upgrade`, `db downgrade` and
    `demo` say so in one sentence, nothing changed, exit 1; db.migrate raises it as InvalidInput (a bare
    OperationalError before)."""
    from db.errors import InvalidInput

    url = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"  # port 1: nothing listens there
    for command in (["db", "upgrade"], ["db", "downgrade", "-1", "--yes"], ["demo"]):
        assert main([*command, "--db-url", url]) == 1, command
        sentence = _one_error_line(capsys)
        assert sentence.startswith("the database could not be used (") and "127.0.0.1" in sentence, sentence
        assert sentence.endswith("; nothing was changed"), sentence
    for step in (lambda: migrate.upgrade(url), lambda: migrate.check_downgrade(url, "-1")):
        with pytest.raises(InvalidInput, match=r"^the database could not be used \(.*; nothing was changed$"):
            step()


def test_a_migration_whose_read_back_finds_the_database_out_of_reach_says_it_was_done(tmp_path, monkeypatch, capsys):
    """After a committed `db upgrade` or `db downgrade` the revision is read back to be shown: a database out of reach
    there (PostgreSQL's 53300 too many clients, a fail-over) went on bare, so the command said "could not be used" with
    status 1 though the migration had committed, and a `db downgrade -1` run again went down a second step. Found by
    the fourteenth review. It warns that the migration was done and only the read back failed, with status 0."""
    from sqlalchemy.exc import OperationalError

    url = f"sqlite:///{tmp_path / 'data' / 'seiko.db'}"
    too_many = OperationalError("SELECT version_num FROM alembic_version", {},
                                Exception("connection failed: FATAL:  sorry, too many clients already"))

    def then_out_of_reach(step):
        def run(*args, **kwargs) -> None:
            step(*args, **kwargs)

            def out_of_reach(url: str) -> str | None:
                raise too_many
            monkeypatch.setattr(migrate, "current_revision", out_of_reach)
        return run

    real_read = migrate.current_revision
    for name, argv, done, expected in (
            ("upgrade", ["db", "upgrade", "0016"], "the upgrade to '0016'", "0016"),
            ("downgrade", ["db", "downgrade", "0015", "--yes"], "the downgrade to '0015'", "0015")):
        monkeypatch.setattr(migrate, "current_revision", real_read)
        monkeypatch.setattr(migrate, name, then_out_of_reach(getattr(migrate, name)))
        assert main([*argv, "--db-url", url, "--data-dir", str(tmp_path / "data")]) == 0, argv
        err = capsys.readouterr().err
        assert err.endswith(f"warning: {done} was done, but the schema revision could not be read back afterwards: "
                            "the database could not be used (connection failed: FATAL:  sorry, too many clients "
                            "already); `python -m app db current` shows it\n"), err
        assert real_read(url) == expected  # the migration stands at its target
