"""``python -m app worker [--once] [--worker-id ID] [--lease-s N] [--poll-s N] [--stop-grace-s N] [--nice N] [--processes N]
[--pixels-in-memory-max-mib MIB] [--group-timeout S]``: run the background worker.

``--processes N`` (N > 1) runs train jobs data-parallel over N processes (app.train_dist; docs/worker.md).

The worker lowers its own CPU priority (``--nice``, default 10) so that, on a machine it shares with the web app,
training does not slow the answer to a rating: RELIABILITY.md measures the difference."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import uuid

from app.settings import Settings
from app.settings import add_arguments as add_settings_arguments
from db import migrate
from db.checks import check_name
from db.errors import InvalidInput, SchemaOutOfDate
from seiko_core.scratch import add_max_mib_argument

MAX_SECONDS = 86_400.0  # a day: 1e12 passed and crashed the worker (a lease's end past what a date holds; review)


def positive_seconds(value: str) -> float:
    """argparse type: a positive number of seconds, at most a day."""
    try:
        number = float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from exc
    if not 0 < number <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, at most a day ({MAX_SECONDS:g}), "
                                         f"got {value!r}")
    return number


DEFAULT_NICE = 10
GROUP_TIMEOUT_S = 120.0  # --group-timeout: app.train_dist.GROUP_TIMEOUT_S (not imported here: it imports torch)
STOP_GRACE_S = 30.0  # --stop-grace-s: a stopped job stuck longer ends the process (app.worker.Watchdog)


def default_worker_id() -> str:
    """``HOST-PID-XXXXXXXX``: the host name and process id name the worker in logs and the job table, and the random
    tail keeps it unique where those two repeat (containers with a fixed host name, each worker PID 1). Two workers
    with one id could not tell each other's job leases apart by id (``db.jobs`` fences them by attempt as well)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _niceness(value: str) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to 19, got {value!r}") from exc
    if not 0 <= number <= 19:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to 19, got {value!r}")
    return number


MAX_PROCESSES = 256
"""The most ``--processes`` taken: every rank is a process of this one machine that loads the whole model, so more
than a machine has GPUs or cores only queue for them; 10**6 was accepted (twentieth review). A bound of the CPU count
refused ``--processes 2`` on a one-core runner, where two gloo ranks are slow but right (found by its review)."""


def _processes(value: str) -> int:
    said = f"expected a whole number of processes from 1 to {MAX_PROCESSES}, got {value!r}"
    try:
        number = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(said) from exc
    if not 1 <= number <= MAX_PROCESSES:
        raise argparse.ArgumentTypeError(said)
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="process at most one job, then exit (status 1 if it failed)")
    parser.add_argument("--worker-id", help="name of this worker in the job table (default: HOST-PID-RANDOM, unique)")
    parser.add_argument("--lease-s", type=positive_seconds, default=60.0,
                        help="seconds a claimed job stays ours without a heartbeat; heartbeats come every third of it (default 60)")
    parser.add_argument("--poll-s", type=positive_seconds, default=1.0, help="seconds to wait when the queue is empty (default 1)")
    parser.add_argument("--stop-grace-s", type=positive_seconds, default=STOP_GRACE_S,
                        help="seconds a job may take to return after a stop (a stop signal, or its lease lost) before the "
                             "process ends with status 75, the job left to be taken again (after a stop signal it is "
                             "handed back first, no attempt used); a stop while no job is held (a slow start-up) ends "
                             f"the process as a stop then, status 0 or 130 for Ctrl-C (default {STOP_GRACE_S:g})")
    parser.add_argument("--nice", type=_niceness, default=DEFAULT_NICE,
                        help=f"CPU priority increment for this process, 0-19 (default {DEFAULT_NICE}: the web app answers first)")
    parser.add_argument("--processes", type=_processes, default=1,
                        help="train jobs data-parallel over N processes, one per GPU, at most 256 (default 1; see "
                             "docs/worker.md)")
    add_max_mib_argument(parser, "DATA_DIR")  # a generate job's candidates beyond it: <data dir>/scratch
    parser.add_argument("--group-timeout", type=positive_seconds, default=GROUP_TIMEOUT_S,
                        help="with --processes N: seconds rank 0 waits for every process to join the group before it "
                             "names the missing ones; a fresh group follows, and after 3 such groups in a row (or one, "
                             "with --once) the worker exits with status 1. A stop signal meanwhile is obeyed at once "
                             f"(default {GROUP_TIMEOUT_S:g})")
    add_settings_arguments(parser, model=False)  # each job loads its experiment's own model


def check_worker_id(worker_id: str, processes: int) -> str:
    """``worker_id`` if the job table takes it as a lease's owner (``db.checks.check_name``: not blank, no leading or
    trailing spaces, no control characters, at most ``db.models.NAME_MAX`` characters), else InvalidInput with one
    sentence. With ``processes`` > 1 the followers are named ID/rank1 ... (app.train_dist.run_rank): those must fit
    too, or every follower would fail at its start."""
    check_name("the worker id (--worker-id)", worker_id)
    if processes > 1:
        check_name(f"the worker id (--worker-id) with its last process's suffix /rank{processes - 1}",
                   f"{worker_id}/rank{processes - 1}")
    return worker_id


def main(args: argparse.Namespace) -> int:
    settings = Settings.from_args(args)
    worker_id = args.worker_id or default_worker_id()
    try:
        # a name the job table refuses crashed the worker with a traceback at every claim (found by review); refused
        # here, before the heavy imports and, with --processes, before any rank starts
        check_worker_id(worker_id, args.processes)
    except InvalidInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        migrate.check_at_head(settings.db_url)  # before the heavy imports, so a refusal is quick and alone on stderr
    except SchemaOutOfDate as exc:
        print(exc, file=sys.stderr)
        return 1
    from app import train_dist

    rank = f"[rank {os.environ.get('RANK')}] " if train_dist.in_group() else ""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s {rank}%(name)s: %(message)s")
    if args.processes > 1 and not train_dist.in_group():  # the supervisor: no model, no job, its ranks do the work
        return train_dist.run_supervisor(args, settings, worker_id)  # with its own row in live_processes
    if args.nice:
        os.nice(args.nice)  # before torch starts its threads, which inherit it
    if train_dist.in_group():
        return train_dist.run_rank(args, settings, worker_id)
    from app.worker import Watchdog, Worker, WorkerRefused

    worker = Worker(settings, worker_id, lease_s=args.lease_s, poll_s=args.poll_s,
                    pixels_in_memory_max_bytes=args.pixels_in_memory_max_bytes)

    # idle: SIGTERM makes run_forever return (exit 0), Ctrl-C exits 130; busy: the job is handed back (queued again,
    # no attempt used), then the worker exits; a second signal does not interrupt that hand-back. A job stuck in a
    # call that never returns ends the process with status 75 --stop-grace-s seconds after the stop, handed back by
    # the Watchdog; a stop with no job held (start-up stuck) ends it then with 0 or 130, as above
    signal.signal(signal.SIGTERM, worker.interrupt_for_signal)
    signal.signal(signal.SIGINT, worker.interrupt_for_signal)
    watchdog = Watchdog(worker, args.stop_grace_s)
    try:
        try:
            worker.start()
        except (SchemaOutOfDate, WorkerRefused) as exc:
            print(exc, file=sys.stderr)
            return 1
        if args.once:
            worker.run_once()
            return 0 if worker.last_error is None else 1
        worker.run_forever()
        return 0
    # the schema changed under a running worker (`db upgrade`), or the database cancelled its claims of a job
    # CLAIM_CANCELS_MAX times in a row (ClaimsCancelled: the operator's statement_timeout): one sentence
    except (SchemaOutOfDate, WorkerRefused) as exc:
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: run_once has already handed the current job back
        return 130
    finally:
        worker.close()
        watchdog.close()
