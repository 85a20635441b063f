"""Several raters and an admin at once, measured (RELIABILITY.md, issue 13 items 4 and 5):

    python -m app.tools.raters_check --db-url postgresql+psycopg://... --trials 100 --json out.json
    python -m app.tools.raters_check --trials 100                       # a fresh SQLite file

``close-race``: a rating's transaction is open (the image locked, the rating written, not committed) when an
admin closes the round; after a pause the rating commits. Counted: ratings that end up in the round but above
the training job's watermark (left out of training without anyone being told).

``collisions``: R raters at once, each drawing a batch of the open round (overlap 1) through the page's
``ui_rate.load_batch`` and rating it through ``ui_rate.submit``, until the round is done. Counted: ratings refused
because another rater got the image first (a judgement thrown away after the fact), and images handed out to two
raters at the same time (more than the overlap with ``--overlap``), and any error a rater hit.

``--without-fix`` runs the same with the fix taken out, for comparison: the round lock in ``repo.lock_round`` made
a plain read (close-race), and leases not granted (collisions).
With ``--db-url`` the checks run in a database of their own made on that PostgreSQL server (the URL's user needs
CREATEDB) and dropped afterwards; the database the URL names is not touched.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from app import services, storage, ui_rate
from app.auth import Who
from app.settings import Settings
from db import jobs as job_queue
from db import migrate, repo
from db import testing as dbt
from db.engine import make_engine, read_session, session_factory, write_session
from db.errors import Conflict
from seiko_core.atomic import write_text


def _world(factory, data_dir: Path, name: str, n_images: int, n_raters: int, overlap: int = 1) -> tuple[int, int, list[int]]:
    import numpy as np

    with write_session(factory) as s:
        exp = repo.create_experiment(session=s, name=name, model_spec="m", method="greedy", config={}, budgets=[n_images],
                                     prompts=["a shape"], overlap=overlap)
        rnd = repo.create_round(session=s, experiment_id=exp.id)
        for i in range(n_images):
            pixels = np.full((8, 8, 3), i % 256, dtype=np.uint8)
            pixels[0, 0, 0] = i // 256
            stored = storage.write_image(data_dir, storage.encode_png(pixels))
            repo.add_image(session=s, round_id=rnd.id, prompt="a shape", seed=i, file_path=stored.path, sha256=stored.sha256,
                           embedding=bytes(16), embedding_dim=4)
        repo.open_round(session=s, round_id=rnd.id)
        raters = [repo.create_rater(session=s, name=f"{name}-r{k}", password_hash="x").id for k in range(n_raters)]
        return exp.id, rnd.id, raters


def _race_trial(factory, data_dir: Path, t: int, pause_s: float) -> str:
    """One trial: 'counted' (the rating is in the training snapshot), 'refused' or 'left_out' (above the watermark)."""
    eid, rid, (a, b) = _world(factory, data_dir, f"race-{t}", 2, 2)
    with read_session(factory) as s:
        first, second = [im.id for im in repo.list_images(session=s, round_id=rid)]
    with write_session(factory) as s:
        repo.add_rating(session=s, image_id=first, rater_id=a, score=5)
    started, may_commit, out = threading.Event(), threading.Event(), {}

    def rater() -> None:
        try:
            with write_session(factory) as s:
                repo.lock_image_for_rating(session=s, image_id=second)
                out["rating"] = repo.add_rating(session=s, image_id=second, rater_id=b, score=9).id
                started.set()
                may_commit.wait(30)
        except Conflict:
            out["refused"] = True
            started.set()

    def admin() -> None:
        out["job"] = services.close_round(factory=factory, experiment_id=eid)

    th = threading.Thread(target=rater)
    th.start()
    started.wait(30)
    closer = threading.Thread(target=admin)
    closer.start()
    time.sleep(pause_s)
    may_commit.set()
    th.join(30)
    closer.join(30)
    with read_session(factory) as s:
        watermark = job_queue.get_job(session=s, job_id=out["job"]).payload["watermark"]
        stored = repo.find_rating(session=s, image_id=second, rater_id=b)
        stored_id = None if stored is None else stored.id
    if out.get("refused") or stored_id is None:
        return "refused"
    return "left_out" if stored_id > watermark else "counted"


def close_race(factory, data_dir: Path, trials: int, pause_s: float = 0.2) -> dict:
    outcomes = Counter(_race_trial(factory, data_dir, t, pause_s) for t in range(trials))
    return {"trials": trials, "ratings_left_out_of_training": outcomes["left_out"],
            "ratings_in_training": outcomes["counted"], "ratings_refused": outcomes["refused"]}


def collisions(factory, data_dir: Path, n_raters: int, n_images: int, batch: int, overlap: int = 1) -> dict:
    eid, rid, raters = _world(factory, data_dir, f"collide-{time.monotonic_ns()}", n_images, n_raters, overlap)
    counts: Counter = Counter()
    lock = threading.Lock()
    holding: dict[int, set[int]] = {}  # image -> raters showing it right now
    double = set()
    errors: list[str] = []  # anything but a refusal (a deadlock, a server error) ends that rater's run and is reported
    start = threading.Barrier(n_raters)

    def run(k: int, rater_id: int) -> None:
        who = Who(rater_id, f"r{k}", "rater", local=False)
        start.wait(60)
        state = None
        while True:
            view = ui_rate.load_batch(factory, data_dir, who, state, batch_size=batch)
            state = view.state
            ids = list(state["batch"])
            if not ids:
                return
            with lock:
                for i in ids:
                    holding.setdefault(i, set()).add(rater_id)
                    if len(holding[i]) > overlap:
                        double.add(i)
            for i in ids:
                try:
                    ui_rate.submit(factory, who, i, 1 + (i + k) % 10)
                    with lock:
                        counts["rated"] += 1
                except ui_rate.NotOffered:
                    with lock:
                        counts["refused"] += 1
                with lock:
                    holding[i].discard(rater_id)

    def guarded(k: int, rater_id: int) -> None:
        try:
            run(k, rater_id)
        except Exception as exc:  # reported in the result (and the run fails the check), not hidden
            with lock:
                errors.append(f"rater {k}: {type(exc).__name__}: {exc}"[:300])

    threads = [threading.Thread(target=guarded, args=(k, r)) for k, r in enumerate(raters)]
    began = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join(600)
    with read_session(factory) as s:
        p = repo.round_progress(session=s, round_id=rid)
    return {"raters": n_raters, "images": n_images, "batch": batch, "overlap": overlap, "ratings_stored": p.ratings,
            "ratings_refused_after_the_fact": counts["refused"],
            "images_shown_to_more_raters_than_the_overlap_at_once": len(double),
            "round_complete": p.complete_images == n_images, "errors": errors, "seconds": round(time.monotonic() - began, 2)}


class CheckError(Exception):
    """What stops the check before it measures anything; the message is one sentence."""


def _check(args, tmp: Path) -> dict:
    """The two checks on a fresh database: one made for them on the PostgreSQL server of ``args.db_url`` and dropped
    afterwards, or a SQLite file in ``tmp``. The database the URL names was wiped (DROP SCHEMA public CASCADE), so
    the URL of the app's own database, given by mistake, lost every account, experiment and rating, and a SQLite URL
    was a traceback (nineteenth review); it is not touched now."""
    if not args.db_url:
        return _measure(args, tmp, dbt.sqlite_url(tmp / "seiko.db"))
    scheme = args.db_url.split(":", 1)[0][:40]  # never what follows it: a URL that does not parse may hold a password
    try:
        parsed = make_url(args.db_url)
        backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        raise CheckError(f"--db-url (scheme {scheme!r}) is not a database URL") from exc
    if backend != "postgresql" or driver != "psycopg":
        raise CheckError(f"--db-url must name a PostgreSQL server through psycopg (postgresql+psycopg://...), not "
                         f"{scheme}; without it the check uses a SQLite file of its own")
    made = dbt.temporary_postgres_database(args.db_url)
    try:
        url = made.__enter__()
    except DBAPIError as exc:
        raise CheckError("a database of the check's own could not be made on the server of --db-url ("
                         f"{str(exc.orig or exc).strip().splitlines()[0]})") from exc
    try:
        result = _measure(args, tmp, url)
    finally:
        # its drop failing (the server gone meanwhile) is said with the database left behind and the DROP to run,
        # and the check ends as it would have: its result printed, or the measuring's own failure raised (the drop's
        # traceback had taken the place of both: found by a read-only review)
        try:
            made.__exit__(None, None, None)
        except dbt.DatabaseLeft as exc:
            print(f"warning: {exc}", file=sys.stderr)
    return result

def _measure(args, tmp: Path, url: str) -> dict:
    """The two checks on the empty database ``url``, migrated here."""
    migrate.upgrade(url)
    settings = Settings.from_env({"data_dir": str(tmp / "data"), "db_url": url, "model": "m"}, environ={})
    engine = make_engine(url)
    factory = session_factory(engine)
    if args.without_fix:
        repo.lock_round = lambda *, session, round_id: repo.get_round(session=session, round_id=round_id)
        repo.lease_images = lambda *, session, round_id, rater_id, image_ids, lease_s, now=None: list(dict.fromkeys(image_ids))
    try:
        return {"backend": engine.dialect.name, "without_fix": args.without_fix,
                "close_race": close_race(factory, settings.data_dir, args.trials),
                "collisions": [collisions(factory, settings.data_dir, args.raters, args.images, args.batch, args.overlap)
                               for _ in range(args.repeat)]}
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db-url", help="a PostgreSQL URL: the checks run in a database of their own made on its server "
                                     "and dropped afterwards; default: a fresh SQLite file")
    ap.add_argument("--trials", type=int, default=50, help="close-race trials")
    ap.add_argument("--raters", type=int, default=8)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--overlap", type=int, default=1, help="ratings wanted per image in the collisions check")
    ap.add_argument("--repeat", type=int, default=5, help="collision runs")
    ap.add_argument("--without-fix", action="store_true", help="take the fixes out, for comparison")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="seiko-raters-check-"))
    try:  # its database (SQLite) and data dir are scratch: removed however the check ends (they were left in /tmp)
        result = _check(args, tmp)
    except CheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(tmp)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        write_text(args.json, text + "\n")
    return 1 if any(c["errors"] for c in result["collisions"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
