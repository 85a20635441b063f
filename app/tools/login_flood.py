"""Login flood: does a rater's rating latency stay within 2x its usual p95 while wrong sign-ins pour in?

    python -m app.tools.login_flood --json flood.json                       # all three modes, 50 wrong logins/s
    python -m app.tools.login_flood --mode guard --ratings 100 --rate 50    # a quick look at the shipped setup

A lab (SQLite at head, an open round of plain rows, accounts alice and root with real scrypt hashes) is served by
a separate server process on 127.0.0.1. One rater, signed in as alice in this process, calls ``submit_rating``
through Gradio's HTTP API (the load test's raw client) one call after another: ``--ratings`` calls alone (the
baseline) and ``--ratings`` calls while another process sends ``--rate`` wrong sign-ins a second (open loop: a new
request every 1/rate s whatever the answers; half for alice, half for names that do not exist), in ``--blocks``
alternating blocks so that the machine's background load weighs on both alike. The p95 of each phase and their
ratio are printed and written to --json, with how the flood was answered.

Modes (the server process differs only in how it signs people in):
- ``guard``: the app as shipped (app.web_guard: hashing in its own thread, per-address and per-account throttling);
- ``guard-no-throttle``: the same with throttling off, so every sign-in that finds room is hashed: what the thread
  pool alone buys;
- ``gradio``: the code before issue 13, Gradio's own /login with the blocking scrypt check on the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from seiko_core.atomic import write_text

MODES = ("guard", "guard-no-throttle", "gradio")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def summary_ms(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": round(1000 * pct(values, 0.50), 1), "p95": round(1000 * pct(values, 0.95), 1),
            "p99": round(1000 * pct(values, 0.99), 1), "max": round(1000 * max(values), 1)}


# ---------------------------------------------------------------------------------------------
# the server process: python -m app.tools.login_flood serve DB_URL DATA_DIR PORT MODE
# ---------------------------------------------------------------------------------------------


def serve(db_url: str, data_dir: str, port: int, mode: str) -> int:
    from app import auth, sessions, ui, web_guard
    from app.settings import Settings
    from app.ui import AppServices
    from db.engine import make_engine, session_factory

    settings = Settings.from_env({"db_url": db_url, "data_dir": data_dir, "host": "127.0.0.1", "port": port}, environ={})
    factory = session_factory(make_engine(db_url))
    services = AppServices(factory=factory, settings=settings, local_mode=False)
    kwargs = {**ui.launch_kwargs(services), "quiet": True}
    if mode == "guard-no-throttle":
        off = sessions.ThrottleRule(free=10**9, base_s=1, max_s=1)
        kwargs["app_kwargs"] = {**kwargs["app_kwargs"],
                                "lifespan": web_guard.lifespan(services, throttle=sessions.LoginThrottle(per_ip=off, per_account=off))}
    elif mode == "gradio":  # before issue 13: Gradio's /login calls the blocking check on the event loop
        kwargs["app_kwargs"] = {"openapi_url": None}
        kwargs["auth"] = auth.authenticator(factory)
    demo = ui.build_demo(services)
    demo.launch(prevent_thread_lock=True, **kwargs)
    guard = web_guard.installed(demo.server_app)
    print(f"serving {mode} on {demo.local_url} (guard {'on' if guard else 'off'})", flush=True)
    stats_file = Path(data_dir) / "guard-stats.json"
    written = None
    try:
        while True:
            time.sleep(0.5)
            if guard is not None:
                text = json.dumps({"refused": guard.stats.refused, "logins": guard.stats.logins})
                if text != written:  # renamed into place: the measuring process reads it while this one runs
                    write_text(stats_file, text)
                    written = text
    finally:
        demo.close()


# ---------------------------------------------------------------------------------------------
# the flood process: python -m app.tools.login_flood flood URL RATE OUT
# ---------------------------------------------------------------------------------------------


def flood(url: str, rate: float, out: str) -> int:
    """While the file OUT.on exists, send ``rate`` wrong sign-ins a second (open loop); stop when OUT.stop appears.
    Writes how they were answered to OUT (renamed into place whole: the measuring process reads it). Plain asyncio
    sockets, one connection per request, so the attacker's own CPU use stays small next to the server's on a shared
    machine."""
    from urllib.parse import urlencode, urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    on_file, stop_file = Path(out + ".on"), Path(out + ".stop")
    counts: dict[str, int] = {}
    answer_s: list[float] = []
    in_flight = 0

    async def one(i: int) -> None:
        nonlocal in_flight
        name = "alice" if i % 2 == 0 else f"nobody-{random.randrange(10**6)}"
        body = urlencode({"username": name, "password": f"wrong guess {i}"}).encode()
        request = (f"POST /login HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                   f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
        t0 = time.perf_counter()
        writer = None
        in_flight += 1
        try:
            async with asyncio.timeout(10):
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(request)
                await writer.drain()
                status = (await reader.readline()).split()
            key = status[1].decode() if len(status) > 1 else "no answer"
        except TimeoutError:
            key = "timeout (10 s)"
        except OSError as e:
            key = type(e).__name__
        finally:
            in_flight -= 1
            if writer is not None:
                writer.transport.abort()
        answer_s.append(time.perf_counter() - t0)
        counts[key] = counts.get(key, 0) + 1

    async def run() -> tuple[int, float]:
        tasks: set[asyncio.Task] = set()
        sent, sending_s = 0, 0.0
        while not stop_file.exists():
            if not on_file.exists():
                await asyncio.sleep(0.05)
                continue
            start, i = time.perf_counter(), 0
            while on_file.exists() and not stop_file.exists():
                due = start + i / rate
                now = time.perf_counter()
                if due > now:
                    await asyncio.sleep(due - now)
                if in_flight >= 1000:
                    counts["not sent: 1000 in flight"] = counts.get("not sent: 1000 in flight", 0) + 1
                else:
                    task = asyncio.create_task(one(sent))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    sent += 1
                i += 1
            sending_s += time.perf_counter() - start
        if tasks:
            await asyncio.wait(tasks, timeout=15)
        return sent, sending_s

    open(out + ".ready", "w").close()
    sent, seconds = asyncio.run(run())
    write_text(out, json.dumps({"sent": sent, "seconds": round(seconds, 2), "rate": round(sent / max(seconds, 1e-9), 1),
                                "answers": counts, "answer_ms": summary_ms(answer_s)}))
    return 0


# ---------------------------------------------------------------------------------------------
# the measurement
# ---------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"cpus": os.cpu_count(), "cpu": model, "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_before": os.getloadavg()}


def run_mode(mode: str, *, ratings: int, rate: float, root: Path, blocks: int = 3, max_phase_s: float = 120.0,
             call_timeout_s: float = 30.0) -> dict[str, Any]:
    """Serve a fresh lab in ``mode``; rate ``ratings`` times without the flood and ``ratings`` times during it, in
    ``blocks`` alternating blocks (so that a change in the machine's background load hits both phases alike)."""
    import httpx

    from app import auth
    from app.tools import harness
    from app.tools.rater import RawClient

    lab = harness.make_lab(root / mode, root / mode / "no-model")
    server = flooder = None
    try:
        auth.add_user(lab.factory, name="root", role="admin", password=harness.PASSWORD)
        auth.add_user(lab.factory, name="alice", role="rater", password=harness.PASSWORD)
        _, _, image_ids = harness.fake_open_round(lab, "flood", 2 * ratings + 40)
        port = harness.free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = root / f"{mode}-server.log"
        with open(log_path, "wb") as log:
            server = subprocess.Popen([sys.executable, "-m", "app.tools.login_flood", "serve", lab.db_url,
                                       str(lab.data_dir), str(port), mode], env=lab.env(), stdout=log, stderr=subprocess.STDOUT)

        def up() -> bool:
            if server.poll() is not None:
                raise AssertionError(f"the server exited: {log_path.read_text()[-2000:]}")
            try:
                return httpx.get(url + "/", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        harness.wait_for("the server", up, 180, poll=0.2)
        flood_out = root / f"{mode}-flood.json"
        flooder = subprocess.Popen([sys.executable, "-m", "app.tools.login_flood", "flood", url, str(rate), str(flood_out)],
                                   env=lab.env())
        harness.wait_for("the flood process", lambda: Path(f"{flood_out}.ready").exists(), 120, poll=0.1)
        client = RawClient(url, "alice", harness.PASSWORD)
        client.http.timeout = httpx.Timeout(call_timeout_s)
        ids = iter(image_ids)
        timeouts = 0

        def rate_n(n: int, budget_s: float) -> list[float]:
            """``n`` ratings one after another (fewer if they take longer than ``budget_s``). A call that gets no
            answer within ``call_timeout_s`` counts with that time (a lower bound) and ends the phase."""
            nonlocal timeouts
            times: list[float] = []
            deadline = time.monotonic() + budget_s
            while len(times) < n and time.monotonic() < deadline:
                image_id = next(ids)
                t0 = time.perf_counter()
                try:
                    answer = client.predict("/submit_rating", image_id=image_id, score=1 + image_id % 10)
                except httpx.TimeoutException:
                    times.append(time.perf_counter() - t0)
                    timeouts += 1
                    harness.log(f"{mode}: a rating got no answer within {call_timeout_s:g} s; the phase ends")
                    break
                times.append(time.perf_counter() - t0)
                assert answer["image_id"] == image_id, answer
            return times

        def settle() -> None:
            """Wait until the server answers a trivial request within 0.5 s again (the flood's backlog drained)."""
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                time.sleep(1.0)
                t0 = time.perf_counter()
                try:
                    httpx.get(url + "/gradio_api/app_id", timeout=30)
                except httpx.TimeoutException:
                    continue
                if time.perf_counter() - t0 < 0.5:
                    return
            harness.log(f"{mode}: the server was still slow 180 s after the flood stopped")

        rate_n(20, 60)  # warm-up
        baseline: list[float] = []
        during: list[float] = []
        per_block = max(1, ratings // blocks)
        for b in range(blocks):
            harness.log(f"{mode}: block {b + 1}/{blocks}: {per_block} ratings alone, then {per_block} during the flood")
            baseline += rate_n(per_block, max_phase_s / blocks)
            Path(f"{flood_out}.on").touch()
            time.sleep(1.5)  # the flood into its stride
            during += rate_n(per_block, max_phase_s / blocks)
            Path(f"{flood_out}.on").unlink()
            settle()
        client.close()
        Path(f"{flood_out}.stop").touch()
        flooder.wait(timeout=60)
        flood_stats = json.loads(flood_out.read_text())
        stats_file = lab.data_dir / "guard-stats.json"
        guard_stats = json.loads(stats_file.read_text()) if stats_file.exists() else None
        base, under = summary_ms(baseline), summary_ms(during)
        return {"mode": mode, "baseline_ms": base, "flood_ms": under, "p95_ratio": round(under["p95"] / base["p95"], 2),
                "rating_timeouts": timeouts, "flood": flood_stats, "server_login_stats": guard_stats}
    finally:
        for proc in (flooder, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
        lab.close()


def main(argv: list[str] | None = None) -> int:
    from app.cli_serve import root_path_refused

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return 1 if root_path_refused() else serve(argv[1], argv[2], int(argv[3]), argv[4])
    if argv[:1] == ["flood"]:
        return flood(argv[1], float(argv[2]), argv[3])
    parser = argparse.ArgumentParser(prog="python -m app.tools.login_flood", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=[*MODES, "all"], default="all")
    parser.add_argument("--ratings", type=int, default=300, help="ratings per phase (default 300)")
    parser.add_argument("--rate", type=float, default=50.0, help="wrong sign-ins a second during the flood (default 50)")
    parser.add_argument("--blocks", type=int, default=3, help="alternating quiet/flood blocks (default 3)")
    parser.add_argument("--max-phase-s", type=float, default=120.0,
                        help="end a phase after this many seconds even if it has fewer ratings (default 120)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.ratings < 20 or not 0 < args.rate <= 1000 or not 1 <= args.blocks <= args.ratings:
        parser.error("--ratings must be at least 20, --rate from 0 to 1000 and --blocks from 1 to --ratings")
    if root_path_refused():  # each mode's server would serve its page under it; refused before any lab is made
        return 1
    results = {"machine": machine(), "ratings": args.ratings, "rate": args.rate, "runs": []}
    with tempfile.TemporaryDirectory(prefix="seiko-flood-") as tmp:
        for mode in (MODES if args.mode == "all" else (args.mode,)):
            run = run_mode(mode, ratings=args.ratings, rate=args.rate, root=Path(tmp), blocks=args.blocks,
                           max_phase_s=args.max_phase_s)
            results["runs"].append(run)
            results["machine"]["loadavg_after"] = os.getloadavg()
            if args.json:  # after each mode, so a later failure keeps the earlier figures (whole: renamed into place)
                write_text(args.json, json.dumps(results, indent=2))
            f = run["flood"]
            print(f"{mode:>18}: submit_rating p95 {run['baseline_ms']['p95']} ms alone, {run['flood_ms']['p95']} ms during "
                  f"{f['rate']} wrong sign-ins/s (x{run['p95_ratio']}); p50 {run['baseline_ms']['p50']} -> "
                  f"{run['flood_ms']['p50']} ms ({run['flood_ms']['n']} ratings, {run['rating_timeouts']} without an answer "
                  f"in 30 s); flood answered {f['answers']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
