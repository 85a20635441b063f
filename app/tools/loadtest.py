"""Load test: N raters, each its own process with its own gradio_client Client signed in as its own account,
rate M images each through the public API of ``python -m app serve`` on 127.0.0.1, while a worker process
trains (and generates) another experiment's rounds the whole time.

    python -m app.tools.loadtest --json load.json                        # 20 raters x 200 ratings, flat out
    python -m app.tools.loadtest --think-ms 500 --json load-paced.json   # people: ~0.5 s between key presses
    python -m app.tools.loadtest --raters 4 --ratings 20 --no-train      # a quick look

Each rater (``app.tools.rater``) loops: ``next_batch(limit=10)``, then ``submit_rating`` for every item (optionally after an
exponentially distributed think time). Latency is measured in the rater process around ``Client.predict``
(what a client waits for: the HTTP call, Gradio's queue, the handler and its two short transactions).

Afterwards the database must hold exactly raters x ratings rows for the load round, every acknowledged
(image, rater, score) present, no pair twice: zero lost, zero duplicated. The figures (p50/p95/p99 of
submit_rating, throughput, the machine's load) are printed and written to --json; RELIABILITY.md has ours.
``--profile`` also times the submit_rating handler in-process (no HTTP, no queue) to split the latency.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from app import auth
from app.tools import harness
from db import jobs as job_queue
from db.engine import read_session
from db.models import Image, Job, Rating
from seiko_core.atomic import write_text


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def summary_ms(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": round(1000 * pct(values, 0.50), 1), "p95": round(1000 * pct(values, 0.95), 1),
            "p99": round(1000 * pct(values, 0.99), 1), "max": round(1000 * max(values), 1) if values else None,
            "mean": round(1000 * statistics.fmean(values), 1) if values else None}


def top_processes(n: int = 6) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pcpu,ni,comm,args", "--sort=-pcpu"], capture_output=True, text=True).stdout
    return [line[:140] for line in out.splitlines()[1:n + 1]]


class Trainer(threading.Thread):
    """Keeps the worker busy: whenever the training experiment has a round open, rate it and close it (queues training);
    samples once a second what the worker is doing."""

    def __init__(self, lab: harness.Lab, eid: int, raters: list[int]) -> None:
        super().__init__(daemon=True)
        self.lab, self.eid, self.raters = lab, eid, raters
        self.stop = threading.Event()
        self.samples: list[tuple[float, str | None]] = []
        self.rated: dict[tuple[int, int], int] = {}
        self.failure: str | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                harness.rate_and_close(self.lab, self.eid, self.raters, self.rated)
                with read_session(self.lab.factory) as s:
                    running = [j for j in s.query(Job).filter_by(experiment_id=self.eid, status="running")]
                    phase = (running[0].progress or {}).get("phase", "claimed") if running else None
                    self.samples.append((time.time(), f"{running[0].kind}:{phase}" if running else None))
                self.stop.wait(1.0)
        except Exception as exc:  # reported by main() as a failure of the run
            self.failure = f"{type(exc).__name__}: {exc}"
            raise

    def busy_fraction(self, t0: float, t1: float) -> float:
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        return sum(1 for _, what in inside if what) / len(inside) if inside else 0.0

    def phases(self, t0: float, t1: float) -> dict[str, int]:
        out: dict[str, int] = {}
        for at, what in self.samples:
            if t0 <= at <= t1 and what:
                out[what] = out.get(what, 0) + 1
        return out


def profile_handler(lab: harness.Lab, n: int = 200) -> dict[str, Any]:
    """The submit_rating handler in-process (no HTTP, no Gradio queue): its own share of the latency."""
    from app import ui_rate
    from app.auth import Who

    _, round_id, ids = harness.fake_open_round(lab, "profile", n, overlap=1, real_pngs=False)
    rater = auth.add_user(lab.factory, name="profiler", role="rater", password=harness.PASSWORD)
    who = Who(rater, "profiler", "rater", local=False)
    times = []
    for image_id in ids:
        t0 = time.perf_counter()
        ui_rate.submit(lab.factory, who, image_id, 5)
        times.append(time.perf_counter() - t0)
    import sqlite3

    db = Path(lab.db_url.removeprefix("sqlite:///"))
    c = sqlite3.connect(db)
    fsync = []
    try:
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=FULL")
        c.execute("CREATE TABLE IF NOT EXISTS _fsync_probe (x)")
        for i in range(50):
            t0 = time.perf_counter()
            c.execute("INSERT INTO _fsync_probe VALUES (?)", (i,))
            c.commit()
            fsync.append(time.perf_counter() - t0)
        c.execute("DROP TABLE _fsync_probe")
        c.commit()
    finally:
        c.close()
    return {"handler_submit_ms": summary_ms(times), "bare_sqlite_commit_ms": summary_ms(fsync)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raters", type=int, default=20)
    parser.add_argument("--ratings", type=int, default=200, help="ratings per rater (default 200)")
    parser.add_argument("--think-ms", type=float, default=0.0, help="mean pause before each rating (default 0: flat out)")
    parser.add_argument("--no-train", action="store_true", help="no worker training alongside")
    parser.add_argument("--profile", action="store_true", help="also time the handler in-process")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--client", choices=("gradio_client", "raw"), default="gradio_client",
                        help="gradio_client (default) or raw HTTP calls of the same API, to separate the client's own overhead")
    parser.add_argument("--workdir", type=Path, help="keep everything here, a new or empty folder (default: a temporary "
                        "directory, removed)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    harness.check_fresh_workdir(parser, args.workdir)

    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="loadtest-")
    root = args.workdir or Path(tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    results: dict[str, Any] = {"argv": sys.argv, "raters": args.raters, "ratings_per_rater": args.ratings,
                               "think_ms": args.think_ms, "client": args.client, "cpus": os.cpu_count(), "loadavg_before": os.getloadavg(),
                               "top_processes_before": top_processes()}
    harness.log(f"setting up in {root}")
    model_dir = harness.build_model(root / "model")  # serve refuses a directory that is not a model, --no-train too
    lab = harness.make_lab(root / "lab", model_dir)
    n_images = args.ratings + 20
    _, load_round, image_ids = harness.fake_open_round(lab, "load", n_images, overlap=args.raters, real_pngs=True)
    accounts = {}
    for i in range(args.raters):
        accounts[f"rater{i:02d}"] = auth.add_user(lab.factory, name=f"rater{i:02d}", role="rater", password=harness.PASSWORD)
    worker = trainer = None
    server = harness.ServerProc(lab, logs, "server", batch_size=args.batch_size)
    ok = False
    try:
        if not args.no_train:
            eid = harness.create_experiment(lab, "train")
            trainer = Trainer(lab, eid, harness.make_raters(lab, 2, prefix="trainer"))
            worker = harness.WorkerProc(lab, "load-worker", logs)
        server.wait_ready()
        if trainer is not None:
            harness.wait_for("the worker's first job", lambda: any(True for j in harness.job_rows(lab, eid) if j["status"] != "queued"), 300)
            trainer.start()
            harness.wait_for("the worker training", lambda: any(j["kind"] == "train" and j["status"] == "running"
                                                           for j in harness.job_rows(lab, eid)), 300, poll=0.2)
        start = root / "start"
        procs = []
        harness.log(f"signing in {args.raters} raters")
        for name, rater_id in accounts.items():
            out = root / f"{name}.json"
            procs.append((out, subprocess.Popen(
                [sys.executable, "-m", "app.tools.rater", server.url, name, harness.PASSWORD, str(rater_id), str(args.ratings), str(args.think_ms),
                 str(start), str(out), args.client], cwd=lab.root, env=lab.env(), stdout=open(logs / f"{name}.log", "wb"),
                stderr=subprocess.STDOUT)))
        harness.wait_for("every rater signed in", lambda: all(Path(str(o) + ".ready").exists() or p.poll() is not None
                                                         for o, p in procs), 600, poll=0.1)
        harness.log("go")
        results["loadavg_at_start"] = os.getloadavg()
        t0 = time.time()
        start.touch()
        for _, p in procs:
            p.wait(timeout=3600)
        t1 = time.time()
        results["loadavg_at_end"] = os.getloadavg()
        results["top_processes_during"] = top_processes()
        raters = []
        for out, p in procs:
            if p.returncode != 0 or not out.exists():
                raise AssertionError(f"rater {out.stem} exited with {p.returncode}:\n{(logs / f'{out.stem}.log').read_text()[-2000:]}")
            raters.append(json.loads(out.read_text()))
        submit = [x for r in raters for x in r["submit_s"]]
        batch = [x for r in raters for x in r["next_batch_s"]]
        errors = [e for r in raters for e in r["errors"]]
        acked = {(image_id, r["rater_id"]): score for r in raters for image_id, score in r["acked"]}
        with read_session(lab.factory) as s:
            rows = [(r.image_id, r.rater_id, r.score) for r in s.query(Rating).join(Image).filter(Image.round_id == load_round)]
        stored = {(i, r): sc for i, r, sc in rows}
        lost = {k: v for k, v in acked.items() if stored.get(k) != v}
        duplicated = len(rows) - len(stored)
        unexpected = {k for k in stored if k not in acked}
        results.update({
            "wall_s": round(t1 - t0, 1),
            "submit_rating_ms": summary_ms(submit),
            "next_batch_ms": summary_ms(batch),
            "ratings_per_s": round(len(submit) / (t1 - t0), 1),
            "acknowledged": len(acked), "stored": len(rows), "lost": len(lost), "duplicated": duplicated,
            "stored_without_ack": len(unexpected), "errors": errors[:10], "n_errors": len(errors),
            # sign-ins the server answered "try again" (503: it checks a few at a time; 429) before each rater got in
            "sign_in_tries_refused": sum(r["sign_in_refused"] for r in raters),
        })
        if trainer is not None:
            results["worker_busy_fraction"] = round(trainer.busy_fraction(t0, t1), 2)
            results["worker_phases_sampled"] = trainer.phases(t0, t1)
            with read_session(lab.factory) as s:
                results["worker_jobs_done_during_run"] = sum(1 for j in job_queue.list_jobs(session=s, experiment_id=eid, limit=1000)
                                                             if j.status == "done")
        if args.profile:
            results["profile"] = profile_handler(lab)
        ok = (not lost and not duplicated and not unexpected and not errors
              and len(rows) == args.raters * args.ratings and (trainer is None or trainer.failure is None))
        results["ok"] = ok
    finally:
        if trainer is not None:
            trainer.stop.set()
            trainer.join(timeout=30)
            results["trainer_failure"] = trainer.failure
        if worker is not None:
            worker.kill()
        server.stop()
        results["server_log_tracebacks"] = server.log.read_text(errors="replace").count("Traceback")
        lab.close()
        print(json.dumps(results, indent=2, default=str))
        if args.json:
            write_text(args.json, json.dumps(results, indent=2, default=str))
        if tmp is not None:
            tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
