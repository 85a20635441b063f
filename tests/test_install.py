"""The project is an installable package (`pip install -e .`, what `make setup` does), with known-good versions.

The fresh-venv test installs the checkout editable into a new virtual environment, offline and in seconds: the
dependencies are those of the environment the tests run in, chained into the new one by a ``.pth`` line (what
``--system-site-packages`` would do if the system Python had them), so pip resolves pyproject.toml's dependencies
against the known-good set without downloading anything. Then app, db and seiko_core must import from outside the
checkout, from the checkout's files, and the tools must run as modules.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import site
import subprocess
import tomllib
import venv
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
FAST_MOVING = ("diffusers", "peft", "transformers", "accelerate", "gradio")


def project_dependencies() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}


def constraints() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_fast_moving_dependencies_have_upper_bounds_that_the_known_good_versions_satisfy():
    deps, pins = project_dependencies(), constraints()
    for name in FAST_MOVING:
        assert any(s.operator in ("<", "<=", "==", "~=") for s in deps[name].specifier), f"{name} has no upper bound"
        assert name in pins, f"constraints.txt pins no version of {name}"
    for name, version in pins.items():
        if name in deps:
            assert deps[name].specifier.contains(version), f"constraints.txt's {name}=={version} is outside pyproject's {deps[name]}"


def test_the_tests_run_on_the_known_good_versions():
    """What constraints.txt calls known-good is what this suite just ran on (update it with the versions you test)."""
    for name, version in constraints().items():
        installed = Version(importlib.metadata.version(name))
        assert installed.public == version.public, f"{name} {installed} is installed but constraints.txt says {version}"


def test_no_sys_path_edits():
    """The packages are installed, so nothing puts the checkout on sys.path (nor on PYTHONPATH for a child process)."""
    pattern = re.compile(r"sys\.path\.(insert|append|extend)|sys\.path\s*[+]?=|PYTHONPATH")
    offenders = []
    for top in ("app", "db", "seiko_core", "tests", "scripts", "migrations"):
        for path in sorted((REPO / top).rglob("*.py")):
            if path == Path(__file__).resolve():
                continue
            for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_pip_install_editable_in_a_fresh_venv_then_import_from_outside_the_checkout(tmp_path):
    env_dir, outside = tmp_path / "venv", tmp_path / "elsewhere"
    outside.mkdir()
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)  # on the base interpreter of this one
    python = str(env_dir / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], outside, env).stdout.strip()
    assert purelib.startswith(str(env_dir)), purelib
    # The known-good dependencies (and pip, setuptools) of this environment, without its own install of the project:
    # a plain path line, so that this environment's .pth files (the project's editable hook) are not run.
    Path(purelib, "known_good_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    before = _run([python, "-c", "import app"], outside, env)
    assert before.returncode != 0 and "No module named 'app'" in before.stderr, before.stderr

    install = _run([python, "-m", "pip", "install", "--no-index", "--no-build-isolation", "-e", str(REPO)], outside, env)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    probe = ("import importlib.metadata as m, app, db, seiko_core, app.tools.harness\n"
             "print(app.__file__, db.__file__, seiko_core.__file__, app.tools.harness.__file__)\n"
             "print(m.distribution('seiko-studio').locate_file(''))\n"
             "for name in ('tests', 'scripts', 'migrations', 'models', 'configs'):\n"
             "    try:\n"
             "        __import__(name)\n"
             "    except ImportError:\n"
             "        continue\n"
             "    raise SystemExit(f'the install made {name!r} importable')\n")
    out = _run([python, "-c", probe], outside, env)
    assert out.returncode == 0, out.stderr[-3000:]
    files, dist = out.stdout.split("\n")[:2]
    for file in files.split():
        assert Path(file).is_relative_to(REPO), file  # the checkout's files (editable), found from elsewhere
    assert Path(dist).resolve().is_relative_to(env_dir.resolve()), dist  # installed in the new environment

    for module in ("app", "app.tools.fault_matrix"):
        helped = _run([python, "-m", module, "--help"], outside, env)
        assert helped.returncode == 0 and "usage:" in helped.stdout, helped.stdout[-2000:] + helped.stderr[-2000:]
