"""How much CPU does the web app take while nobody uses it? (The worker trains beside it on the same cores.)

    python -m app.tools.idle_cpu --seconds 10 --blocks 3 --json idle.json

Serves the real app (``app.ui.build_demo`` with ``launch_kwargs``, local mode, a fresh SQLite database at head in a
temporary directory) on 127.0.0.1 with no client connected, and measures this process's CPU time (user + system, all
threads) and context switches over ``--seconds`` per block, in alternating blocks: the app as shipped
(``ui.quiet_idle_polling``) and Gradio's own queue poll intervals (1 ms idle, 10 ms progress on Linux), so that the
machine's background load weighs on both alike. Prints one line per block and the means; ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

from seiko_core.atomic import write_text

GRADIO_IDLE_POLL_S = 0.001  # gradio.queueing.Queue's values on Linux (gradio 6.x)
GRADIO_PROGRESS_POLL_S = 0.01


def _usage() -> tuple[float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_nvcsw + r.ru_nivcsw


def _block(seconds: float) -> dict[str, float]:
    cpu0, switches0 = _usage()
    t0 = time.monotonic()
    time.sleep(seconds)
    cpu1, switches1 = _usage()
    wall = time.monotonic() - t0
    return {"cpu_percent_of_a_core": 100 * (cpu1 - cpu0) / wall, "context_switches_per_s": (switches1 - switches0) / wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.tools.idle_cpu", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of one measuring block (default 10)")
    parser.add_argument("--blocks", type=int, default=3, help="blocks per setting, alternating (default 3)")
    parser.add_argument("--json", type=Path, default=None, help="write the blocks and means here")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.blocks < 1:
        print("error: --seconds must be above 0 and --blocks at least 1", file=sys.stderr)
        return 2
    from app.cli_serve import root_path_refused

    if root_path_refused():  # Gradio would serve the page under it; refused before the database is made
        return 1

    from app import ui
    from app.settings import Settings
    from app.tools.harness import free_port
    from db import migrate
    from db.engine import make_engine, session_factory

    with tempfile.TemporaryDirectory(prefix="seiko-idle-") as tmp:
        db_url = f"sqlite:///{Path(tmp) / 'seiko.db'}"
        migrate.upgrade(db_url)
        settings = Settings.from_env({"data_dir": tmp, "db_url": db_url, "host": "127.0.0.1", "port": free_port()}, environ={})
        engine = make_engine(db_url)
        services = ui.AppServices(factory=session_factory(engine), settings=settings, local_mode=True)
        demo = ui.build_demo(services)
        demo.launch(prevent_thread_lock=True, quiet=True, **ui.launch_kwargs(services))
        queue = demo._queue
        settings_by_name = {
            "shipped": (ui.QUEUE_IDLE_POLL_S, ui.QUEUE_PROGRESS_POLL_S),
            "gradio defaults": (GRADIO_IDLE_POLL_S, GRADIO_PROGRESS_POLL_S),
        }
        results: dict[str, list[dict[str, float]]] = {name: [] for name in settings_by_name}
        try:
            time.sleep(2.0)  # let start-up work finish
            for _ in range(args.blocks):
                for name, (idle, progress) in settings_by_name.items():
                    queue.sleep_when_free, queue.progress_update_sleep_when_free = idle, progress
                    time.sleep(0.2)
                    block = _block(args.seconds)
                    results[name].append(block)
                    print(f"{name:16s} idle poll {idle * 1000:g} ms: {block['cpu_percent_of_a_core']:.1f}% of a core, "
                          f"{block['context_switches_per_s']:.0f} context switches/s", flush=True)
        finally:
            demo.close()
            engine.dispose()

    means = {name: {key: sum(b[key] for b in blocks) / len(blocks) for key in blocks[0]} for name, blocks in results.items()}
    for name, mean in means.items():
        print(f"mean {name:16s}: {mean['cpu_percent_of_a_core']:.1f}% of a core, "
              f"{mean['context_switches_per_s']:.0f} context switches/s")
    if args.json is not None:
        # a temporary name renamed into place: a run stopped while writing leaves the earlier file whole, not half a file
        write_text(args.json, json.dumps({"seconds": args.seconds, "blocks": results, "means": means,
                                          "machine": platform.platform(), "python": sys.version.split()[0]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
