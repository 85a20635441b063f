"""Helpers shared by the tests and the reliability tools (app.tools.fault_matrix); not used by the app.

    python -m app.testing write-ratings DB_URL ROUND_ID RATER,RATER,... STOP_FILE [PAUSE_S]

writes ratings to one open round, one transaction each, until STOP_FILE appears, and prints
``image_id rater_id score`` for every rating once it is committed (acknowledged).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any


def tiny_worker_config(config: dict[str, Any]) -> dict[str, Any]:
    """An experiment's stored config made tiny: 3 sampling steps, 2 trajectories (and 2 anchor candidates), a 2x2 eval
    grid, a short reward fit, no fine-tuning time limit."""
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    cfg["sampling"].update(steps=3, batch_size=8)
    # no time limit: a tiny run counts its steps, whatever the machine's pace (the preset's limit is for real rounds)
    cfg["finetune"].update(trajectories_per_epoch=2, batch_size=2, grad_accum=1, truncation_k=1, epochs=1, max_seconds=None,
                           anchor_candidates=2)  # a denoising anchor turned on draws 2 images, not 32
    cfg["reward"].update(max_epochs=8, patience=3)
    cfg["eval_prompts"] = list(cfg["eval_prompts"])[:2]
    cfg["eval_seeds"] = [0, 1]
    return cfg


def write_ratings(url: str, round_id: int, raters: list[int], stop_file: str, pause_s: float) -> None:
    """Rate the round's images in turn until ``stop_file`` exists; print each rating once it is committed."""
    from db import repo
    from db.engine import make_engine, session_factory, write_session

    factory = session_factory(make_engine(url))
    with write_session(factory) as s:
        images = [im.id for im in repo.list_images(session=s, round_id=round_id)]
    n = 0
    while not os.path.exists(stop_file):
        image_id, rater_id = images[n % len(images)], raters[(n // len(images)) % len(raters)]
        score = 1 + (n * 7) % 10
        with write_session(factory) as s:
            repo.add_rating(session=s, image_id=image_id, rater_id=rater_id, score=score)
        print(image_id, rater_id, score, flush=True)  # acknowledged: committed
        n += 1
        time.sleep(pause_s)


def main(argv: list[str]) -> int:
    if len(argv) not in (5, 6) or argv[0] != "write-ratings":
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    url, round_id, raters, stop_file = argv[1], int(argv[2]), [int(r) for r in argv[3].split(",")], argv[4]
    write_ratings(url, round_id, raters, stop_file, float(argv[5]) if len(argv) == 6 else 0.02)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
