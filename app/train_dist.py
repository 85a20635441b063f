"""Data-parallel train jobs: ``python -m app worker --processes N`` runs one worker as N processes (ranks).

    supervisor (the command itself: no model, no job)
      ├─ rank 0: the worker. It claims jobs, heartbeats, runs generate jobs alone, and for a train job sends the
      │          job's inputs to the other ranks, trains with them, checks that every rank ended with the same
      │          adapter, then alone writes the reward model and adapter and publishes the round.
      └─ rank 1..N-1: followers. They wait for rank 0's next train job, load the same base model and previous
                 adapter, train their slice of every global batch and report their adapter's checksum.

The ranks find each other through the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT, and TORCHELASTIC_USE_AGENT_STORE: as torchrun's agent does, the supervisor hosts the rendezvous store,
on 127.0.0.1 only, ``group_store``; gloo's and NCCL's sockets are on the loopback interface too unless the operator
names one, ``group_env``), so each rank's accelerate ``Accelerator`` is an ordinary multi-process one (NCCL on GPUs,
gloo on CPUs): ``seiko_core.accel.shared_accelerator`` makes it once per process. The experiment's
``finetune.batch_size`` is the GLOBAL batch: each rank renders ``batch_size / N`` trajectories of it, so an
experiment trains the same (up to floating-point differences) on 1 or N processes.

Control messages (train job inputs, stop) go over a separate gloo group with a long timeout, as a JSON header
plus raw tensors: nothing is pickled.

Failures: if any rank ends (a crash, ``kill -9``), the supervisor kills the others, hands the running job of
this worker back to the queue (``db.jobs.fail_job(retry=True)``, one attempt used; a lease that runs out does the
same if the supervisor itself died) and starts a fresh group, which takes the job again. Rank 0 leaves the
group (exit status 75, restarted the same way) whenever a train job ended abnormally on it while the
followers may still be inside a collective. Once rank 0 has ended, whatever it told its followers, the supervisor
tells them to stop through the group's store (``FollowerStopWatch``) and kills those left after FOLLOWERS_STOP_S.
Every rank dies with the supervisor (PR_SET_PDEATHSIG on Linux).
Publishing stays exactly once: only rank 0 publishes, in ``repo.publish_round``'s one transaction.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

import torch
from sqlalchemy.exc import OperationalError

from seiko_core.scratch import MIB, PIXELS_IN_MEMORY_MAX_BYTES

log = logging.getLogger("seiko.worker.group")

GROUP_ENV = "SEIKO_WORKER_GROUP"  # set by the supervisor on its ranks: the supervisor's pid
RESTART_EXIT = 75  # a rank's exit status asking the supervisor for a fresh group (EX_TEMPFAIL)
SCHEMA_EXIT = 78  # rank 0 found the database's schema changed under it (EX_CONFIG): said once, no fresh group
# (its claims cancelled by the database CLAIM_CANCELS_MAX times in a row, app.worker.ClaimsCancelled, end it so too)
# rank 0's watchdog (app.worker.Watchdog) ended a job stuck after a stop: a fresh group as for RESTART_EXIT, and when
# none follows (stopping, --once) the supervisor exits with app.worker.EX_TEMPFAIL (75), as one worker process does.
# It was RESTART_EXIT, which the supervisor then turned into 1 ("the job failed"), so a service manager or script that
# restarts a worker on 75 did not restart this one (found by the fourth review)
WATCHDOG_EXIT = 76
QUICK_FAILURE_S = 60.0  # a group that ends sooner than this after starting counts as a quick failure
MAX_QUICK_FAILURES = 3  # the supervisor gives up after this many quick failures in a row
FOLLOWER_GRACE_S = 60.0  # a follower ended cleanly (or while stopping): how long rank 0 has to end as well
# rank 0 has ended: the supervisor tells the followers to stop through the group's store (FollowerStopWatch) and gives
# them this long, all together, before it kills the rest. It waited up to 60 s for EACH follower, and only rank 0's
# "stop" over the control group told them: rank 0 ended by its watchdog, or stopped while the group was forming, never
# sent it (found by the fifth review)
FOLLOWERS_STOP_S = 5.0
FOLLOWERS_STOP_KEY = "seiko/followers-stop"  # set in the group's store by the supervisor; its value is the reason
FOLLOWER_TOLD_S = 5.0  # a follower whose collective failed waits this long to be told to stop before it reports a crash
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}  # blocked in a rank from its start until its own handling is in place
# tests only: rank 0 pauses for SECONDS while its process group forms, before init_process_group ("init") or before
# the control group ("ctrl"): "init:5". A stop signal then lands inside the group's formation
TEST_FORMING_PAUSE_ENV = "SEIKO_TEST_RANK0_FORMING_PAUSE"
# --group-timeout: how long rank 0 waits for every rank to join its process group. The ranks joined in
# init_process_group, whose own wait (torch's, 30 minutes) a stop signal could not interrupt: rank 0 with a follower
# that never arrived stopped only when torch gave up (found by the sixth review). Each rank now says it is there in the
# group's store (ARRIVED_KEY) and waits, in Python, until every rank has, so a stop is heard at once and a missing
# rank is named after this long; init_process_group starts only when all are there
GROUP_TIMEOUT_S = 120.0
GROUP_TIMEOUT_EXIT = 69  # rank 0: a rank did not join within --group-timeout (EX_UNAVAILABLE); the supervisor says 1
ARRIVED_KEY = "seiko/arrived/rank{}"  # set in the group's store by each rank as it joins; its value is the rank's pid
FORMING_POLL_S = 0.1
CONTROL_TIMEOUT = timedelta(days=365)  # followers wait on the control group while rank 0 is idle or generating


def in_group(environ: dict[str, str] | None = None) -> bool:
    """True in a rank process started by :func:`supervise`."""
    env = os.environ if environ is None else environ
    return bool(env.get(GROUP_ENV)) and int(env.get("WORLD_SIZE", "1") or 1) > 1


def split_batch(cfg, world: int):
    """A copy of ``cfg`` whose finetune.batch_size is one rank's share of the global batch; a clear error if it does not split."""
    from seiko_core.config import from_dict, to_dict

    b = cfg.finetune.batch_size
    if b % world:
        raise ValueError(f"finetune.batch_size {b} does not split over {world} processes; "
                         f"use a multiple of {world} or a worker with another --processes")
    out = from_dict(to_dict(cfg))
    out.finetune.batch_size = b // world
    return out


def adapter_digest(unet, adapter: str) -> str:
    """sha256 of the adapter's LoRA tensors (names and float32 bytes, in name order)."""
    h = hashlib.sha256()
    for name, p in sorted(unet.named_parameters()):
        if "lora_" in name and f".{adapter}." in name:
            h.update(name.encode())
            h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


_DTYPES = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64, "int32": torch.int32}


class GroupFormationTimeout(RuntimeError):
    """Not every rank joined the process group within --group-timeout; the message names the missing ranks."""

    def __init__(self, missing: list[int], world: int, timeout_s: float) -> None:
        ranks = f"rank {missing[0]}" if len(missing) == 1 else "ranks " + ", ".join(str(r) for r in missing)
        super().__init__(f"{ranks} of {world} did not join the process group within {timeout_s:g} s (--group-timeout)")
        self.missing, self.timeout_s = missing, timeout_s


def await_ranks(timeout_s: float = GROUP_TIMEOUT_S, *, poll_s: float = FORMING_POLL_S) -> None:
    """Say in the group's store that this rank is there (ARRIVED_KEY), then wait until every rank has, polling in
    Python so that a stop signal's handler runs at once; GroupFormationTimeout naming the missing ranks after
    ``timeout_s`` (a follower waits a minute longer: rank 0 decides, and the supervisor then tells it to stop)."""
    import torch.distributed as dist

    rank, world = int(os.environ.get("RANK", "0") or 0), int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), None, is_master=False,
                          timeout=timedelta(seconds=60), wait_for_workers=False)
    store.set(ARRIVED_KEY.format(rank), str(os.getpid()))
    if rank == 0:
        log.info("rank 0 waits up to %g s (--group-timeout) for the group's %d processes to join", timeout_s, world)
    timeout_s += 0.0 if rank == 0 else 60.0
    deadline = time.monotonic() + timeout_s
    waiting = [r for r in range(world) if r != rank]
    while True:
        waiting = [r for r in waiting if not store.check([ARRIVED_KEY.format(r)])]
        if not waiting:
            return
        if time.monotonic() >= deadline:
            raise GroupFormationTimeout(waiting, world, timeout_s)
        time.sleep(poll_s)


class Group:
    """One rank's view of the worker's process group: the control channel, the Accelerator and the train step."""

    def __init__(self, timeout_s: float = GROUP_TIMEOUT_S) -> None:
        import torch.distributed as dist

        from seiko_core.accel import shared_accelerator

        self.cpu = not torch.cuda.is_available()
        _test_forming_pause("init")
        await_ranks(timeout_s)  # every rank is there: init_process_group does not wait on one that never comes
        acc = shared_accelerator("no", cpu=self.cpu)  # joins the process group (once per process)
        if acc.num_processes < 2:
            raise RuntimeError(f"the worker group expected several processes but accelerate sees {acc.num_processes}")
        self.rank, self.world, self.device = acc.process_index, acc.num_processes, acc.device
        _test_forming_pause("ctrl")
        self.ctrl = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
        self.broken = False  # rank 0: a train job ended abnormally; leave the group so that it restarts

    # -- control channel: a JSON header and raw tensors, broadcast from rank 0 -------------------

    def send(self, header: dict[str, Any], tensors: tuple[torch.Tensor, ...] = ()) -> None:
        import torch.distributed as dist

        tensors = tuple(t.detach().to("cpu").contiguous() for t in tensors)
        header = {**header, "tensors": [{"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} for t in tensors]}
        data = json.dumps(header).encode()
        dist.broadcast(torch.tensor([len(data)], dtype=torch.int64), 0, group=self.ctrl)
        dist.broadcast(torch.frombuffer(bytearray(data), dtype=torch.uint8), 0, group=self.ctrl)
        for t in tensors:
            dist.broadcast(t, 0, group=self.ctrl)

    def receive(self) -> tuple[dict[str, Any], list[torch.Tensor]]:
        import torch.distributed as dist

        n = torch.zeros(1, dtype=torch.int64)
        dist.broadcast(n, 0, group=self.ctrl)
        buf = torch.empty(int(n.item()), dtype=torch.uint8)
        dist.broadcast(buf, 0, group=self.ctrl)
        header = json.loads(bytes(buf.numpy()).decode())
        tensors = []
        for spec in header.get("tensors", []):
            dtype = _DTYPES.get(spec["dtype"]) or getattr(torch, spec["dtype"], None)
            if not isinstance(dtype, torch.dtype):
                raise RuntimeError(f"rank {self.rank} got a tensor of unknown dtype {spec['dtype']!r} from rank 0")
            t = torch.empty(spec["shape"], dtype=dtype)
            dist.broadcast(t, 0, group=self.ctrl)
            tensors.append(t)
        return header, tensors

    def check_identical(self, unet, adapter: str) -> list[str]:
        """Gather every rank's adapter checksum; raises on rank 0 if they differ. Returns them (rank 0) or [mine]."""
        import torch.distributed as dist

        mine = adapter_digest(unet, adapter)
        log.info("rank %d: adapter %s sha256 %s", self.rank, adapter, mine)
        gathered = [torch.zeros(32, dtype=torch.uint8) for _ in range(self.world)]
        dist.all_gather(gathered, torch.frombuffer(bytearray(bytes.fromhex(mine)), dtype=torch.uint8), group=self.ctrl)
        digests = [bytes(g.numpy()).hex() for g in gathered]
        if len(set(digests)) != 1:
            raise RuntimeError(f"the {self.world} processes ended with different adapters (sha256 {digests}); nothing is published")
        return digests

    # -- a train job --------------------------------------------------------------------------

    def train(self, worker, parts, model_spec: str, round_info, embeddings: torch.Tensor, scores: torch.Tensor, cfg, *,
              new_index: int, prev_adapter: str | None, seed: int, on_progress, attempt: int,
              pairs: torch.Tensor | None = None):
        """Rank 0: run ``train_round`` data-parallel on every rank; the outcome as on one process.

        ``scores`` may be None and ``pairs`` given (pairwise feedback): both go to the followers as they are."""
        from seiko_core.config import to_dict
        from seiko_core.loop import train_round

        rank_cfg = split_batch(cfg, self.world)  # refused before anything is sent: the group stays usable
        try:
            header = {"cmd": "train", "model_spec": model_spec, "cfg": to_dict(cfg), "new_index": new_index, "seed": seed,
                      "attempt": attempt,
                      "round": {"id": round_info.id, "index": round_info.index, "status": round_info.status,
                                "adapter_path": round_info.adapter_path, "manifest_sha256": round_info.manifest_sha256}}
            named = {"embeddings": embeddings, "scores": scores, "pairs": pairs}
            named = {k: v for k, v in named.items() if v is not None}
            self.send({**header, "names": list(named)}, tuple(named.values()))
            outcome = train_round(parts, embeddings, scores, rank_cfg, new_index=new_index, prev_adapter=prev_adapter,
                                  seed=seed, on_progress=on_progress, accelerator=self._accelerator(cfg), pairs=pairs)
            digests = self.check_identical(parts.unet, outcome.adapter)
            log.info("%d processes ended with the same adapter %s (sha256 %s)", self.world, outcome.adapter, digests[0])
            outcome.metrics["processes"] = self.world
            return outcome
        except BaseException:
            self.broken = True  # the followers may be inside a collective: this group cannot take another job
            raise

    def follow_train(self, worker, header: dict[str, Any], tensors: list[torch.Tensor]) -> None:
        """Rank > 0: the same train_round as rank 0 on this rank's slice of every global batch; writes nothing."""
        from app.worker import _RoundInfo, fault_point
        from seiko_core.config import from_dict
        from seiko_core.loop import train_round

        cfg = from_dict(header["cfg"])
        rank_cfg = split_batch(cfg, self.world)
        named = dict(zip(header["names"], tensors))
        parts = worker._parts(header["model_spec"])
        prev_adapter = worker._use_adapter(parts, _RoundInfo(**header["round"]))
        attempt = int(header.get("attempt", 0))

        def on_progress(step: int, total: int, metrics: dict) -> None:  # only the fault-injection hook on followers
            fault_point(f"rank{self.rank}:{metrics.get('phase') or 'work'}", attempt)

        outcome = train_round(parts, named["embeddings"], named.get("scores"), rank_cfg, new_index=int(header["new_index"]),
                              prev_adapter=prev_adapter, seed=int(header["seed"]), on_progress=on_progress,
                              accelerator=self._accelerator(cfg), pairs=named.get("pairs"))
        worker._adapters.pop(outcome.adapter, None)
        self.check_identical(parts.unet, outcome.adapter)

    def _accelerator(self, cfg):
        from seiko_core.accel import shared_accelerator

        return shared_accelerator(cfg.finetune.mixed_precision, cpu=self.cpu)

    def stop_followers(self) -> None:
        self.send({"cmd": "stop"})


def _test_forming_pause(point: str) -> None:
    """Tests only (TEST_FORMING_PAUSE_ENV): rank 0 sleeps at ``point`` of its group's formation, saying so first."""
    spec = os.environ.get(TEST_FORMING_PAUSE_ENV, "")
    if not spec or int(os.environ.get("RANK", "0") or 0) != 0:
        return
    where, _, seconds = spec.partition(":")
    if where == point:
        log.warning("test hook %s: rank 0 pauses %s s before %s while its process group forms", TEST_FORMING_PAUSE_ENV,
                    seconds, "init_process_group" if point == "init" else "the control group")
        for handler in logging.getLogger().handlers:
            handler.flush()
        time.sleep(float(seconds))


# ---------------------------------------------------------------------------------------------
# a rank process
# ---------------------------------------------------------------------------------------------


class StoppedWhileForming(BaseException):
    """Rank 0 got a stop signal while its process group was forming (raised by its handler at that time)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_forming_stops: list[int] = []  # the stop signals rank 0 got while its group was forming


def _stop_while_forming(signum: int, frame: Any = None) -> None:
    """Rank 0's SIGTERM and SIGINT handler while its group forms: the first raises, a later one (the supervisor's
    forwarded SIGTERM after a terminal's Ctrl-C) must not interrupt that stop, and only logs."""
    _forming_stops.append(signum)
    if len(_forming_stops) == 1:
        raise StoppedWhileForming(signum)
    log.warning("rank 0: signal %d while it stops; the stop is under way", signum)


class FollowerStopWatch:
    """A follower's ear on the group's store: when the supervisor sets FOLLOWERS_STOP_KEY (rank 0 has ended), the
    follower says so in one sentence and ends at once with status 0, whatever its main thread is in (the group's
    formation, a collective, loading a model). Rank 0's "stop" over the control group reaches a follower only when
    rank 0 sends it: rank 0 ended by its watchdog, or stopped while the group was forming, left its followers in a
    collective or in the formation until the supervisor killed them, up to 60 s each later, or to die of gloo's
    "Connection closed by peer" with a traceback (found by the fifth review)."""

    POLL_S = 0.1

    def __init__(self, rank: int, worker_id: str) -> None:
        import threading

        import torch.distributed as dist

        self.rank, self.worker_id = rank, worker_id
        self.told = threading.Event()
        self._store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), None, is_master=False,
                                    timeout=timedelta(seconds=60), wait_for_workers=False)
        threading.Thread(target=self._run, name="follower-stop-watch", daemon=True).start()

    def _run(self) -> None:
        try:
            while not self._store.check([FOLLOWERS_STOP_KEY]):
                time.sleep(self.POLL_S)
            reason = self._store.get(FOLLOWERS_STOP_KEY).decode(errors="replace")
        except Exception:  # the supervisor's store is gone: the supervisor is too, and this rank dies with it
            log.exception("rank %d of worker %r: the group's store could not be read; a stop is not heard from it",
                          self.rank, self.worker_id)
            return
        log.info("rank %d of worker %r stops: %s", self.rank, self.worker_id, reason)
        for handler in logging.getLogger().handlers:
            handler.flush()
        self.told.set()  # after the sentence: a main thread waiting for it (its collective failed) returns at once
        os._exit(0)


def _ignore_stop_signals() -> None:
    """A follower leaves on rank 0's "stop" (or dies with the supervisor), not on the SIGTERM or Ctrl-C that a service
    manager or a terminal sends to the whole process group: dying at once, it looked like a crash, and the
    supervisor killed rank 0 before rank 0 could hand its job back without using an attempt."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _die_with_parent() -> None:
    """SIGKILL this process when the supervisor dies (Linux), so no rank outlives it."""
    parent = int(os.environ.get(GROUP_ENV, "0") or 0)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent and os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def run_rank(args: argparse.Namespace, settings, worker_id: str) -> int:
    """The body of one rank (``python -m app worker`` started by the supervisor)."""
    from app.worker import ClaimsCancelled, Watchdog, Worker

    _die_with_parent()
    rank = int(os.environ.get("RANK", "0") or 0)
    if rank > 0:  # before the group forms: the signals can come at any time
        _ignore_stop_signals()
        watch = FollowerStopWatch(rank, worker_id)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked since the start (supervise)
        try:
            group = Group(args.group_timeout)
        except GroupFormationTimeout as exc:  # rank 0 never came, and no supervisor told this rank to stop
            log.error("rank %d of worker %r: %s; it stops", rank, worker_id, exc)
            return 1
        worker = Worker(settings, f"{worker_id}/rank{group.rank}", lease_s=args.lease_s, poll_s=args.poll_s, device=group.device,
                        pixels_in_memory_max_bytes=_pixels_limit(args))
        try:
            while True:
                header, tensors = group.receive()
                if header.get("cmd") == "stop":
                    return 0
                if header.get("cmd") != "train":
                    raise RuntimeError(f"rank {group.rank} got an unknown command {header.get('cmd')!r} from rank 0")
                group.follow_train(worker, header, tensors)
        except RuntimeError:  # gloo's "Connection closed by peer" when rank 0 has ended: the supervisor says so
            if watch.told.wait(FOLLOWER_TOLD_S):
                return 0  # the watch said why, in one sentence, and ends the process
            raise
        finally:
            worker.close()

    # a stop while the group forms: the process ended of SIGTERM's default action (the supervisor reported a rank
    # killed by signal 15), or printed Ctrl-C's traceback from inside init_process_group, and the followers waited in
    # the formation until the supervisor killed them, 60 s each later (found by the fifth review). The signals are
    # blocked from the rank's start (supervise) to here, so one that came while it started up is handled now
    signal.signal(signal.SIGTERM, _stop_while_forming)
    signal.signal(signal.SIGINT, _stop_while_forming)
    held: list[int] = []  # a stop signal between the formation and the worker's own handler: replayed to it
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        group = Group(args.group_timeout)
        signal.signal(signal.SIGTERM, lambda signum, frame: held.append(signum))
        signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    except GroupFormationTimeout as exc:
        log.error("rank 0 of worker %r: %s; it held no job, and the supervisor stops the group", worker_id, exc)
        return GROUP_TIMEOUT_EXIT
    except StoppedWhileForming as exc:
        ctrl_c = exc.signum == signal.SIGINT
        log.warning("rank 0 of worker %r was stopped by %s while its process group was forming; it held no job, and "
                    "the supervisor tells its followers to stop", worker_id, "Ctrl-C (SIGINT)" if ctrl_c else "SIGTERM")
        return 128 + signal.SIGINT if ctrl_c else 0  # as a stopped idle worker
    worker = Worker(settings, worker_id, lease_s=args.lease_s, poll_s=args.poll_s, device=group.device,
                    pixels_in_memory_max_bytes=_pixels_limit(args))
    worker.group = group

    # busy: hand the job back, then leave (the supervisor stops the rest); a terminal's Ctrl-C reaches rank 0 as well
    # as the SIGTERM the supervisor forwards, and the second signal must not interrupt that hand-back
    signal.signal(signal.SIGTERM, worker.interrupt_for_signal)
    signal.signal(signal.SIGINT, worker.interrupt_for_signal)
    # a job stuck in a call that never returns: WATCHDOG_EXIT, which the supervisor tells apart from RESTART_EXIT
    watchdog = Watchdog(worker, args.stop_grace_s, status=WATCHDOG_EXIT)
    from db.errors import SchemaOutOfDate

    told: list[bool] = []  # "stop" was sent (or begun): a stop signal inside that send must not start a second one

    def stop_followers() -> None:
        if not told:
            told.append(True)
            group.stop_followers()

    try:
        for signum in held:  # as if they came now: SIGTERM stops the idle worker, Ctrl-C raises KeyboardInterrupt
            worker.interrupt_for_signal(signum)
        worker.start()
        had_job: bool | None = False
        while not worker._stopping.is_set():
            try:
                had_job = worker.run_once_outlasting_outages()  # None: the database was out, waited for
            # `db upgrade` under a running group, or a statement_timeout that cancels every claim: no job was claimed
            except (SchemaOutOfDate, ClaimsCancelled) as exc:
                stop_followers()
                print(exc, file=sys.stderr)
                return SCHEMA_EXIT
            if group.broken:
                log.warning("rank 0: a train job ended abnormally; leaving so that the supervisor starts a fresh group")
                return RESTART_EXIT
            if args.once:
                break
            if had_job is False:
                worker._stopping.wait(worker.poll_s)
        stop_followers()
        if args.once and had_job is None:  # its one try met a database outage: not a job done (found by review)
            return 1
        return 0 if worker.last_error is None or not args.once else 1
    except (KeyboardInterrupt, SystemExit) as exc:
        # a stop signal (Worker.interrupt_for_signal): a job held was handed back by run_once. The KeyboardInterrupt
        # of Ctrl-C left run_rank with a Python traceback, and rank 0 died without telling its followers to stop, so
        # each printed gloo's "Connection closed by peer" traceback as well (found by the second review)
        if not (isinstance(exc, KeyboardInterrupt) or worker._stopping.is_set()):
            raise  # a SystemExit of a job's own code, no stop asked: run_once recorded it as the job's failure
        ctrl_c = isinstance(exc, KeyboardInterrupt)
        if group.broken:  # a train job was stopped: the followers may be inside a collective, "stop" cannot reach them
            then = "a train job was under way, so the supervisor stops its followers"
        else:
            then = "its followers were told to stop"
            stop_followers()
        log.warning("rank 0 of worker %r was stopped by %s; %s", worker_id, "Ctrl-C (SIGINT)" if ctrl_c else "SIGTERM",
                    then)
        if ctrl_c:
            return 128 + signal.SIGINT
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        worker.close()
        watchdog.close()


# ---------------------------------------------------------------------------------------------
# the supervisor
# ---------------------------------------------------------------------------------------------


GROUP_ADDR = "127.0.0.1"  # every rank is a child of the supervisor, on this machine
LOOPBACK_INTERFACES = ("lo", "lo0")  # Linux's, the BSDs' and macOS's name of the loopback interface
TRANSPORT_INTERFACE_ENV = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")


def group_store(addr: str = GROUP_ADDR) -> tuple[Any, int]:
    """The group's rendezvous store, hosted by the supervisor (as torchrun's agent hosts it), listening on ``addr``
    only: (the store, its port). The ranks connect to it as clients (``TORCHELASTIC_USE_AGENT_STORE``,
    ``group_env``). Rank 0 hosted it before, and torch's TCPStore listens on every interface whatever MASTER_ADDR
    says (``*:port``; fourth review, 5 Dec 2026): anyone who could reach the machine could read and write the group's
    keys. Here the socket is bound to ``addr`` first and handed to the store (``master_listen_fd``), which also ends
    the race of a port found free, closed, and bound again later by rank 0."""
    import torch.distributed as dist
    from torch.distributed.constants import default_pg_timeout

    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    listener = socket.create_server((addr, 0), family=family)
    port = listener.getsockname()[1]
    store = dist.TCPStore(addr, port, None, is_master=True, timeout=default_pg_timeout, wait_for_workers=False,
                          master_listen_fd=listener.detach())  # the store owns the socket from here
    return store, port


def loopback_interface() -> str | None:
    """This machine's loopback interface's name, or None where it is not one of LOOPBACK_INTERFACES."""
    try:
        names = {name for _, name in socket.if_nameindex()}
    except OSError:
        return None
    return next((name for name in LOOPBACK_INTERFACES if name in names), None)


def group_env(environ: dict[str, str], settings, n: int, port: int, addr: str = GROUP_ADDR) -> dict[str, str]:
    """The environment of every rank of a group of ``n`` (RANK and LOCAL_RANK added per rank): ``environ`` with the
    rendezvous at ``addr:port`` (``group_store``, joined as a client), and gloo's and NCCL's own sockets on the
    loopback interface unless the operator named one (``GLOO_SOCKET_IFNAME``, ``NCCL_SOCKET_IFNAME`` in
    ``environ``): gloo binds to the address this machine's name resolves to, NCCL to the first interface that is not
    loopback, either reachable from the network."""
    env = {**environ, GROUP_ENV: str(os.getpid()), "WORLD_SIZE": str(n), "LOCAL_WORLD_SIZE": str(n),
           "MASTER_ADDR": addr, "MASTER_PORT": str(port), "TORCHELASTIC_USE_AGENT_STORE": "True",
           "SEIKO_DB_URL": settings.db_url, "SEIKO_DATA_DIR": str(settings.data_dir), "SEIKO_MODEL": str(settings.model)}
    loopback = loopback_interface()
    for name in TRANSPORT_INTERFACE_ENV:
        if loopback and not environ.get(name):
            env[name] = loopback
    return env


def _pixels_limit(args: argparse.Namespace) -> int:
    """``--pixels-in-memory-max-mib`` in bytes; the default where ``args`` were not made by ``app.cli_worker``."""
    return getattr(args, "pixels_in_memory_max_bytes", PIXELS_IN_MEMORY_MAX_BYTES)


def rank_command(args: argparse.Namespace, worker_id: str) -> list[str]:
    cmd = [sys.executable, "-m", "app", "worker", "--worker-id", worker_id, "--lease-s", str(args.lease_s),
           "--poll-s", str(args.poll_s), "--stop-grace-s", str(args.stop_grace_s), "--nice", str(args.nice),
           "--pixels-in-memory-max-mib", repr(_pixels_limit(args) / MIB),
           "--group-timeout", str(args.group_timeout)]
    return cmd + (["--once"] if args.once else [])


def hand_back_jobs(settings, worker_id: str, reason: str, *, counted: bool = True) -> list[int]:
    """Queue again every job still running under ``worker_id``; returns their ids. ``counted``: one attempt used
    (``fail_job``, the reason its error); else none (``yield_job``: the group was stopped, the job did not fail)."""
    from db import jobs as job_queue
    from db.engine import make_engine, session_factory, write_session
    from db.errors import LeaseLost

    engine = make_engine(settings.db_url)
    handed = []
    try:
        factory = session_factory(engine)
        try:
            with write_session(factory) as s:
                claims = job_queue.held_job_claims(session=s, worker_id=worker_id)
        except OperationalError:  # the supervisor carries on: the jobs' leases run out and a worker takes them again
            log.exception("worker %r: the database could not be reached to hand its jobs back", worker_id)
            return handed
        for job_id, claim in claims:
            try:
                with write_session(factory) as s:
                    # under the claim read above: a twin with the same worker id that claimed the job again since
                    # (its lease ran out) is not failed in its place (found by review)
                    if counted:
                        job = job_queue.fail_job(session=s, job_id=job_id, worker_id=worker_id, error=reason,
                                                 retry=True, claim=claim)
                    else:
                        job = job_queue.yield_job(session=s, job_id=job_id, worker_id=worker_id, claim=claim)
                    log.warning("job %d handed back (%s): %s", job_id, job.status, reason)
                    handed.append(job_id)
            except LeaseLost as exc:  # finished or taken over in between: nothing to hand back
                log.info("job %d: %s", job_id, exc)
            except OperationalError:
                log.exception("job %d could not be handed back; its lease runs out and a worker takes it again", job_id)
    finally:
        engine.dispose()
    return handed


def _describe(code: int) -> str:
    if code == WATCHDOG_EXIT:
        return f"exited with status {code} (its watchdog ended a job stuck after a stop)"
    if code == GROUP_TIMEOUT_EXIT:
        return f"exited with status {code} (not every rank joined its process group within --group-timeout)"
    return f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"


def _stopped_status(code: int) -> int:
    """The supervisor's status for a group that ended abnormally with ``code`` (rank 0's, or the rank that ended
    first) when no fresh group follows (``--once``, or stopping). RESTART_EXIT is rank 0 asking for a fresh group after
    its train job failed, not a status for the caller: ``--once`` promises 1 when its job failed, and returned 75
    (found by review). WATCHDOG_EXIT (rank 0's watchdog ended a stuck job) is EX_TEMPFAIL, 75, as one worker's is."""
    from app.worker import EX_TEMPFAIL

    if code == WATCHDOG_EXIT:
        return EX_TEMPFAIL
    return 1 if code in (0, RESTART_EXIT, GROUP_TIMEOUT_EXIT) else (128 - code if code < 0 else code)


def _tell_followers(store, reason: str) -> None:
    """Tell the group's followers to stop (FollowerStopWatch), ``reason`` the sentence each logs; a store that does not
    take it is logged, and the followers are killed as before."""
    try:
        store.set(FOLLOWERS_STOP_KEY, reason)
    except Exception:
        log.exception("the followers could not be told to stop through the group's store; they are killed instead")


def _end_followers(followers: list[subprocess.Popen], grace_s: float) -> None:
    """Wait up to ``grace_s`` seconds in all for the told ``followers`` to end, then kill those left."""
    deadline = time.monotonic() + grace_s
    for p in followers:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


SUPERVISOR_KIND = "supervisor"  # the supervisor's kind in live_processes (db.presence, migration 0017)


def run_supervisor(args: argparse.Namespace, settings, worker_id: str) -> int:
    """``supervise`` with the supervisor's own row in the database's live processes (``db.presence.Presence``, kind
    'supervisor'), registered before it starts a rank and removed when it returns: the ranks kept rows and the
    supervisor none, so between two groups (one ended, the next not started) `db downgrade` saw nothing live and ran
    while the supervisor was alive and about to start ranks against the downgraded schema (found by review, eleventh).
    A schema that moved since this code's check (the registration reads it once more) is refused in one sentence,
    status 1, before any rank starts."""
    from db import migrate
    from db.engine import make_engine, session_factory
    from db.errors import SchemaOutOfDate
    from db.presence import Presence

    engine = make_engine(settings.db_url)
    try:
        presence = Presence(session_factory(engine), SUPERVISOR_KIND, migrate.head_revision())
        try:
            presence.start()
        except SchemaOutOfDate as exc:  # as a worker says it (app.cli_worker)
            print(exc, file=sys.stderr)
            return 1
        try:
            return supervise(args, settings, worker_id)
        finally:
            presence.close()  # its row removed: `db downgrade` may go on once the ranks' rows are gone too
    finally:
        engine.dispose()


def supervise(args: argparse.Namespace, settings, worker_id: str) -> int:
    """Start N ranks, restart them all when one ends abnormally; return when rank 0 ends normally (or gives up)."""
    n = int(args.processes)
    stopping: int | None = None  # the stop signal received, if any
    forwarded = False  # the current group's rank 0 was sent SIGTERM
    procs: list[subprocess.Popen] = []

    def forward() -> None:
        nonlocal forwarded
        if not forwarded and procs and procs[0].poll() is None:
            forwarded = True  # once: a second signal must not interrupt rank 0's hand-back of its job
            procs[0].send_signal(signal.SIGTERM)  # rank 0 hands its job back and stops the followers

    def on_signal(signum, frame) -> None:
        nonlocal stopping
        stopping = stopping or signum
        forward()  # with no group running (none yet, or the last one dead) the poll loop forwards it, or none starts

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    quick = 0
    code: int | None = None  # the status the last group ended with
    while True:
        store, port = group_store()  # a fresh one per group (no keys of the last), dropped with the next
        if stopping:
            # stopped while no group ran (before the first, or after the last ended and its jobs were handed back): a
            # fresh group started anyway, and nothing forwarded the stop to it, so the supervisor ran until SIGKILL
            # (found by review). As one idle worker: 0 for SIGTERM, 130 for Ctrl-C; after a group that failed, its status
            log.info("worker %r: stopped (signal %d) with no group running; no fresh group", worker_id, stopping)
            if code is None:
                return 128 + stopping if stopping == signal.SIGINT else 0
            return _stopped_status(code)
        forwarded = False
        procs = []
        env = group_env(dict(os.environ), settings, n, port)
        for r in range(n):
            # each rank starts with the stop signals blocked (the mask is inherited) and unblocks them once its own
            # handling is in place (run_rank): one that came earlier, during its imports, killed rank 0 outright
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            try:
                procs.append(subprocess.Popen(rank_command(args, worker_id),
                                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}))
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            log.info("worker %r: rank %d of %d started (pid %d)", worker_id, r, n, procs[-1].pid)
        started = time.monotonic()
        ended = None
        while ended is None:
            if stopping:
                forward()  # a signal that came while this group was starting, when rank 0 was not there to get it
            for r, p in enumerate(procs):
                if p.poll() is not None:
                    ended = r
                    break
            else:
                time.sleep(0.2)
        code = procs[ended].returncode
        if ended != 0 and (code == 0 or stopping):
            # a follower leaves with 0 only on rank 0's "stop" (rank 0 is ending too), and while stopping rank 0 hands
            # its job back and leaves: rank 0 decides; a follower that ended first was taken for a crash (found by
            # review), which killed rank 0 before its hand-back and, with --once, started group after group
            try:
                procs[0].wait(timeout=FOLLOWER_GRACE_S)
                ended, code = 0, procs[0].returncode
            except subprocess.TimeoutExpired:
                pass  # rank 0 carries on without it: the group is broken
        if procs[0].poll() is not None:  # rank 0 has ended: its followers are told to stop, whatever it told them
            _tell_followers(store, f"rank 0 {_describe(procs[0].returncode)}")
        # rank 0 ended by itself: a clean end, or SCHEMA_EXIT (it said why, once; it held no job, so nothing is handed
        # back and no fresh group is started)
        if ended == 0 and (code == SCHEMA_EXIT or code in (0, 1) and (stopping or args.once or code == 0)):
            _end_followers(procs[1:], FOLLOWERS_STOP_S)
            return 1 if code == SCHEMA_EXIT else code
        obeyed = stopping and ended == 0 and code in (128 + signal.SIGINT, 128 + signal.SIGTERM, WATCHDOG_EXIT)
        if obeyed:
            # rank 0 obeyed the stop (Worker.interrupt_for_signal: its job handed back, its followers told to stop
            # unless a train step's collective held them), or its watchdog ended a job stuck after it (handed back
            # too, unless the database did not take it); this said "the job handed back" as a warning, for a job
            # that rank 0 had handed back itself or that there never was (found by the second review)
            stuck = " (its watchdog ended a job stuck after the stop)" if code == WATCHDOG_EXIT else ""
            reason = f"worker {worker_id!r} was stopped (signal {stopping}): rank 0 ended with status {code}{stuck}"
            log.info("%s; the group is stopped", reason)
        else:
            # a group that never formed held no job: nothing to hand back (the sixth review found this said it was)
            after = ("the group is given up; no job was claimed" if ended == 0 and code == GROUP_TIMEOUT_EXIT
                     else "the group was stopped and the job handed back")
            reason = f"rank {ended} of worker {worker_id!r} {_describe(code)}; {after}"
            log.warning("%s", reason)
        if procs[0].poll() is None:  # a follower ended first: rank 0 is killed, its followers told as well
            procs[0].kill()
            procs[0].wait()
            _tell_followers(store, f"rank {ended} {_describe(code)}")
        _end_followers(procs[1:], FOLLOWERS_STOP_S)
        # a job rank 0 could not hand back after a stop is queued again without using an attempt, as rank 0's own
        # hand-back would have: the group was stopped, the job did not fail (found by the fourth review)
        hand_back_jobs(settings, worker_id, reason, counted=not obeyed)
        if stopping or args.once:  # --once runs one group: another would be a second run (found by review)
            return _stopped_status(code)
        # a group that did not form counts as a quick failure however long --group-timeout is: three in a row and the
        # supervisor gives up, rather than wait that long again and again for a rank that does not come
        quick = quick + 1 if (time.monotonic() - started < QUICK_FAILURE_S and code not in (RESTART_EXIT, WATCHDOG_EXIT)
                              or ended == 0 and code == GROUP_TIMEOUT_EXIT) else 0
        if quick >= MAX_QUICK_FAILURES:
            if ended == 0 and code == GROUP_TIMEOUT_EXIT:
                log.error("worker %r: the group did not form %d times in a row within --group-timeout (%g s); giving up",
                          worker_id, quick, args.group_timeout)
            else:
                log.error("worker %r: the group ended %d times in a row within %.0f s of starting; giving up",
                          worker_id, quick, QUICK_FAILURE_S)
            return 1
        log.info("worker %r: starting a fresh group of %d processes", worker_id, n)
