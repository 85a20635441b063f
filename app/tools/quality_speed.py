"""How long the Admin tab's rater-quality report takes on a large experiment (it is built at every admin page load).

    python -m app.tools.quality_speed --ratings 1000 10000 100000 --repeats 3 --json quality-speed.json

For each size, a fresh SQLite file migrated to head gets one experiment of ``--rounds`` rounds, ``--raters`` raters
and enough query images that each image is rated by ``--overlap`` raters (the experiment's overlap), the scores
drawn from numpy ``default_rng(--seed)``; 2% of the ratings also get a repeat rating and 20 images a gold score.
Rows are inserted in bulk (the report reads the tables, not how they were filled). Then ``app.ui_quality.report``,
the function the Admin tab calls, runs ``--repeats`` times as an admin; the wall time of each call is printed, and
the first call is reported apart from the rest (SQLite's page cache is cold for it). Run it alone, pinned to one
core, for figures that mean anything.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import insert

from app import auth, ui_quality
from db import migrate, repo
from db.engine import make_engine, session_factory, write_session
from db.models import GoldScore, Image, Rating, RepeatRating, Round
from db.testing import sqlite_url
from seiko_core.atomic import write_text


def build(url: str, *, n_ratings: int, rounds: int, raters: int, overlap: int, seed: int) -> auth.Who:
    """Fill the database at ``url`` with one experiment of ``n_ratings`` ratings; returns an admin's identity."""
    rng = np.random.default_rng(seed)
    engine = make_engine(url)
    factory = session_factory(engine)
    stamp = datetime.now(UTC)
    per_round = max(1, n_ratings // (rounds * overlap))
    with write_session(factory) as s:
        exp = repo.create_experiment(session=s, name="speed", model_spec="models/shapes-sd", method="bootstrap",
                                     config={}, budgets=[per_round] * rounds, prompts=["a shape"], overlap=overlap)
        exp_id = exp.id
    auth.add_user(factory, name="root", role="admin", password="quality-speed-pass")
    rater_hash = auth.hash_password("quality-speed-pass")
    with write_session(factory) as s:
        rater_ids = [repo.create_rater(session=s, name=f"r{i}", password_hash=rater_hash).id for i in range(raters)]
    bias = rng.normal(0, 1, raters)
    image_id = 0
    with write_session(factory) as s:
        for k in range(rounds):
            rnd = Round(experiment_id=exp_id, index=k, status="done", metrics={})
            s.add(rnd)
            s.flush()
            images, ratings = [], []
            for j in range(per_round):
                image_id += 1
                images.append(dict(id=image_id, round_id=rnd.id, prompt="a shape", seed=j, file_path=f"x/{image_id}.png",
                                   sha256="0" * 64, embedding=b"\0\0\0\0", embedding_dim=1, kind="query", created_at=stamp))
                quality = rng.normal(0, 1.5)
                for r in rng.choice(raters, size=min(overlap, raters), replace=False):
                    score = int(np.clip(np.rint(5.5 + quality + bias[r] + rng.normal(0, 1)), 1, 10))
                    ratings.append(dict(image_id=image_id, rater_id=rater_ids[r], score=score, created_at=stamp,
                                        updated_at=stamp))
            s.execute(insert(Image), images)
            s.execute(insert(Rating), ratings)
            repeats = [dict(image_id=r["image_id"], rater_id=r["rater_id"],
                            score=int(np.clip(r["score"] + rng.integers(-1, 2), 1, 10)), created_at=stamp)
                       for r in ratings if rng.random() < 0.02]
            if repeats:
                s.execute(insert(RepeatRating), repeats)
        s.execute(insert(GoldScore), [dict(image_id=i, score=int(rng.integers(1, 11)), created_at=stamp)
                                      for i in range(1, min(20, image_id) + 1)])
    who = auth.identify(factory, local_mode=False, username="root", client_host="127.0.0.1")
    engine.dispose()
    return who


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ratings", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--raters", type=int, default=20)
    p.add_argument("--overlap", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    out = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "python": platform.python_version(),
           "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}, "sizes": []}
    for n in a.ratings:
        with tempfile.TemporaryDirectory() as tmp:
            url = sqlite_url(Path(tmp) / "seiko.db")
            migrate.upgrade(url)
            t0 = time.perf_counter()
            who = build(url, n_ratings=n, rounds=a.rounds, raters=a.raters, overlap=a.overlap, seed=a.seed)
            built = time.perf_counter() - t0
            engine = make_engine(url)
            factory = session_factory(engine)
            times, rows = [], 0
            for _ in range(a.repeats):
                t = time.perf_counter()
                _, table = ui_quality.report(factory, who, None)
                times.append(time.perf_counter() - t)
                rows = len(table)
            engine.dispose()
            line = {"ratings": n, "build_s": round(built, 2), "report_s": [round(x, 3) for x in times], "table_rows": rows}
            out["sizes"].append(line)
            print(json.dumps(line), flush=True)
    if a.json:
        write_text(a.json, json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
