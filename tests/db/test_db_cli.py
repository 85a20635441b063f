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
    assert (defaults.model, defaults.host, defaults.port) == ("models/shapes-sd", "127.0.0.1", 7860)

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
    assert main(["db", "downgrade", "base", "--db-url", url]) == 0
    assert migrate.current_revision(url) is None


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
