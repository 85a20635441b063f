"""``python -m app demo`` (what ``make demo`` runs): the whole product on one machine.

1. migrate the database to the newest schema;
2. create the experiment 'demo' (preset ``shapes`` on the embedded model) if there is no experiment;
3. start the worker as a subprocess (``python -m app worker``) and the web app on http://127.0.0.1:7860;
4. Ctrl-C or SIGTERM stops both: the web app closes, the worker gets SIGTERM (it hands its job back)
   and is killed only if it has not exited after ``--stop-timeout`` seconds.
If the worker exits on its own, the demo stops too and says so.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading

from app import services as lifecycle
from app.cli_serve import ServeError, build_services, check_model, check_root_path, install_stop_handlers, launch, register_server
from app.cli_worker import STOP_GRACE_S
from app.cli_worker import positive_seconds as seconds
from app.settings import ENV_VARS, Settings
from app.settings import add_arguments as add_settings_arguments
from db import migrate, repo
from db.engine import read_session

DEMO_EXPERIMENT = "demo"


# The worker's own stop takes up to its --stop-grace-s for a stuck job, then up to app.worker.Watchdog.HAND_BACK_S (5 s)
# to hand the job back without using an attempt; 10 s more to exit. At 30 s (the grace alone) the demo killed a stuck
# worker before its hand-back, so the job used an attempt (found by the fourth review).
STOP_TIMEOUT_S = STOP_GRACE_S + 5.0 + 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, server=True)
    parser.add_argument("--batch-size", type=int, default=8, help="images per rating batch (default 8)")
    parser.add_argument("--no-worker", action="store_true", help="start only the web app (run `python -m app worker` yourself)")
    # a positive number: a negative one killed the worker at once, before it could hand its job back (found by review)
    parser.add_argument("--stop-timeout", type=seconds, default=STOP_TIMEOUT_S,
                        help=f"seconds the worker gets to stop before it is killed (default {STOP_TIMEOUT_S:g})")


def ensure_demo_experiment(factory, settings: Settings) -> int | None:
    """Create the 'demo' experiment (preset shapes) when the database has no experiment; returns its id, or None."""
    with read_session(factory) as s:
        if repo.list_experiments(session=s):
            return None
    spec = lifecycle.ExperimentSpec(name=DEMO_EXPERIMENT, preset="shapes")
    return lifecycle.create_experiment(factory=factory, spec=spec, default_model=settings.model)


# The status a worker exits with when its watchdog ended a job stuck after a stop (app.worker.EX_TEMPFAIL): the job
# is taken again by the next worker, so the demo starts a fresh one rather than stopping, at most MAX_WORKER_RESTARTS
# times a run.
WORKER_RESTART_STATUS = 75
MAX_WORKER_RESTARTS = 5


def worker_command(settings: Settings) -> list[str]:
    """The worker's command line. The database URL is not on it (it may hold a password, and a command line is
    readable by every local user in ps: found by review); ``worker_env`` hands it over."""
    return [sys.executable, "-m", "app", "worker", "--data-dir", str(settings.data_dir)]


def worker_env(settings: Settings, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The worker's environment: ours, unbuffered, with SEIKO_DB_URL set to the database this process uses."""
    environ = dict(os.environ if environ is None else environ)
    return {**environ, "PYTHONUNBUFFERED": "1", ENV_VARS["db_url"]: settings.db_url}


def stop_worker(worker: subprocess.Popen, timeout: float) -> int:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; returns the exit status."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            return worker.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"the worker did not stop within {timeout:g} s; killing it", file=sys.stderr, flush=True)
            worker.kill()
    return worker.wait()


def main(args: argparse.Namespace) -> int:
    settings = Settings.from_args(args)
    try:
        check_root_path()  # before the migration and the worker: refused after both before (thirteenth review)
        check_model(settings.model)
        migrate.upgrade(settings.db_url)
        engine, services = build_services(settings, batch_size=args.batch_size)
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        presence = register_server(services.factory)  # `db downgrade` refuses while it runs (db.presence)
    except ServeError as exc:
        engine.dispose()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    created = ensure_demo_experiment(services.factory, settings)
    if created is not None:
        print(f"created experiment {DEMO_EXPERIMENT!r} (preset shapes, model {settings.model}); the worker generates round 0",
              flush=True)
    stop = threading.Event()
    restore = install_stop_handlers(stop)
    worker: subprocess.Popen | None = None
    demo = None
    status = 0
    try:
        if not args.no_worker:
            # Its own process group: a Ctrl-C in the terminal reaches only us, and we stop the worker in order.
            worker = subprocess.Popen(worker_command(settings), env=worker_env(settings), start_new_session=True)
            print(f"worker started (pid {worker.pid})", flush=True)
        try:
            demo = launch(services)
        except ServeError as exc:  # a port in use, a host that does not resolve: one sentence, as `serve` says it
            print(f"error: {exc}", file=sys.stderr)
            return 1
        restarts = 0
        while not stop.wait(0.5):
            if worker is not None and worker.poll() is not None:
                if worker.returncode == WORKER_RESTART_STATUS and restarts < MAX_WORKER_RESTARTS and not stop.is_set():
                    restarts += 1
                    worker = subprocess.Popen(worker_command(settings), env=worker_env(settings), start_new_session=True)
                    print(f"the worker ended a job that was stuck after a stop (status {WORKER_RESTART_STATUS}); started a "
                          f"fresh worker (pid {worker.pid}; restart {restarts} of at most {MAX_WORKER_RESTARTS})",
                          file=sys.stderr, flush=True)
                    continue
                print(f"the worker exited with status {worker.returncode}; stopping the demo", file=sys.stderr, flush=True)
                status = 1
                break
        print("stopping the demo", flush=True)
        return status
    finally:
        if demo is not None:
            demo.close()
        if worker is not None:
            rc = stop_worker(worker, args.stop_timeout)
            print(f"worker stopped (status {rc})", flush=True)
        restore()
        presence.close()
        engine.dispose()
