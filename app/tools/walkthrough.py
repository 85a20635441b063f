"""The README walk-through, run for real: `make demo`'s app, a simulated person rating 4 rounds, screenshots, an exported LoRA.

    python -m app.tools.walkthrough --data-dir /tmp/seiko-walk --shots docs/images [--person gold_on_black] [--rounds 4]

1. checks the person (``--person``: a built-in person of app.people, default ``gold_on_black``, or
   ``path/to/file.py:function``); a person that cannot be loaded stops the run before anything starts;
2. starts `python -m app demo` (worker + UI) on a fresh data directory, on the embedded shapes model, with the
   app's defaults;
3. rates each open round through the public API (``next_batch`` / ``submit_rating``): every image the API hands
   out, decoded from its PNG and rated by the person in batches (``person.rate(images, prompts)``, as bench-taste
   does); only 12 images of the last round, so the rating page still has images to show;
4. closes the round (``services.close_round``, the admin action) and waits for the worker to train and open the
   next one: the wait is from just after the close to the moment ``next_batch`` returns the next round's images;
   rounds 0 .. R are rated (R = ``--rounds`` trainings);
5. prints per round the images rated, the mean rating, the share rated >= 6 and the wait; with ``--shots`` the
   same table goes to ``<shots>/walkthrough.json`` (written before the screenshots), for the README to quote;
6. takes screenshots in headless Chromium (``--shots``): ``rating.png`` (the rating page), ``dashboard.png``
   (the dashboard; its first plot is the taste plot: mean rating and share >= 6 per round) and
   ``dashboard-grid.png`` (an image of the dashboard's fixed-seed eval grid, the last round's model on the first
   prompt, clicked to enlarge it);
7. exports the last round's LoRA with `python -m app export` and loads it in plain diffusers.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from app import people, services, taste_stats, web_guard
from app.settings import DEFAULT_MODEL, Settings
from app.tools.harness import wait_for
from db import repo
from db.engine import make_engine, read_session, session_factory
from seiko_core.atomic import write_text

LAST_ROUND_RATED = 12  # the last round is rated only this far: the rating page's screenshot shows the rest
BATCH = 32  # images per next_batch call
POLL_S = 0.25  # how often next_batch is asked while the next round is awaited (the wait's resolution)


class WalkError(RuntimeError):
    """The walk-through cannot go on; the message says why in one sentence."""


def decode_png(b64: str) -> torch.Tensor:
    """A base64 PNG as a float (3, H, W) tensor in [0, 1]."""
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1)


def rate_items(person: people.Person, items: list[dict[str, Any]]) -> list[int]:
    """The person's ratings of next_batch's ``items``, all in one call (images (B, 3, H, W) in [0, 1], prompts)."""
    images = torch.stack([decode_png(it["png_base64"]) for it in items])
    return person.rate(images, [it["prompt"] for it in items])


def round_row(index: int, scores: list[int], wait_s: float | None) -> dict[str, Any]:
    """One line of the table: round, rated, mean, share_ge6 (ratings >= 6), wait_s (None for round 0)."""
    t = taste_stats.round_taste(index, scores)
    return {"round": index, "rated": t.n, "mean": t.mean, "share_ge6": t.share,
            "wait_s": None if wait_s is None else round(wait_s, 1)}


def row_line(row: dict[str, Any]) -> str:
    mean = "-" if row["mean"] is None else f"{row['mean']:.2f}"
    share = "-" if row["share_ge6"] is None else f"{100 * row['share_ge6']:.0f}%"
    wait = "-" if row["wait_s"] is None else f"{row['wait_s']:.1f} s"
    return (f"round {row['round']}: rated {row['rated']}, mean rating {mean}, "
            f"share >= {taste_stats.LIKED} {share}, wait {wait}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m app.tools.walkthrough", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="/tmp/seiko-walk")
    ap.add_argument("--model", help=f"base model directory [$SEIKO_MODEL, default {DEFAULT_MODEL}, from the current directory]")
    ap.add_argument("--port", type=int, default=7861)
    ap.add_argument("--person", default="gold_on_black",
                    help=f"who rates: a built-in person ({', '.join(sorted(people.BUILT_IN))}) or path/to/file.py:function "
                         "(default gold_on_black)")
    ap.add_argument("--rounds", type=int, default=4, help="rounds to train (default 4); rounds 0 .. ROUNDS are rated")
    ap.add_argument("--shots", default=None,
                    help="folder for rating.png, dashboard.png, dashboard-grid.png and walkthrough.json (none: no screenshots)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds to wait for a round's images (default 1800)")
    args = ap.parse_args(argv)

    try:  # the person first: a wrong one stops here, before any model or server starts
        person = people.load_person(args.person)
        people.check_person(person)
    except people.PersonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1, got {args.rounds}")
    data = Path(args.data_dir)
    if data.exists() and any(data.iterdir()):
        ap.error(f"{data} is not empty; give a fresh --data-dir")
    settings = Settings.from_env({"data_dir": str(data), "port": args.port, "model": args.model})
    model = Path(settings.model).resolve() if Path(settings.model).exists() else settings.model
    token = web_guard.new_local_token()  # local mode's secret for this run (the demo would draw one and print it)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "SEIKO_LOCAL_TOKEN": token}
    data.parent.mkdir(parents=True, exist_ok=True)
    # the log holds the printed address and so the token: readable by this user only
    log = os.fdopen(os.open(data.parent / f"{data.name}-demo.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w")
    demo = subprocess.Popen([sys.executable, "-m", "app", "demo", "--data-dir", str(data), "--port", str(args.port),
                             "--model", str(model)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        from gradio_client import Client

        url = f"http://127.0.0.1:{args.port}/"
        client = wait_for("the web app", lambda: _client(Client, url, token), 300, poll=2.0)
        factory = session_factory(make_engine(settings.db_url))
        print(f"the person: {person.name}", flush=True)
        t0 = time.monotonic()
        rows: list[dict[str, Any]] = []
        closed_at: float | None = None
        for k in range(args.rounds + 1):
            batch, came = _await_round(client, demo, k, args.timeout)
            wait_s = None if closed_at is None else came - closed_at
            last = k == args.rounds  # leave part of the last round unrated, for the rating-page screenshot
            scores: list[int] = []
            while batch["items"] and batch["round"] == k and not (last and len(scores) >= LAST_ROUND_RATED):
                items = batch["items"][: LAST_ROUND_RATED - len(scores) if last else None]
                for item, score in zip(items, rate_items(person, items)):
                    client.predict(item["image_id"], score, api_name="/submit_rating")
                    scores.append(score)
                if last and len(scores) >= LAST_ROUND_RATED:
                    break
                batch = client.predict(BATCH, "", api_name="/next_batch")
            rows.append(round_row(k, scores, wait_s))
            print(f"{row_line(rows[-1])} (at {time.monotonic() - t0:.0f} s)", flush=True)
            if last:
                break
            with read_session(factory) as s:
                exp_id = repo.list_experiments(session=s)[0].id
            services.close_round(factory=factory, experiment_id=exp_id)
            closed_at = time.monotonic()
        if args.shots:
            shots = Path(args.shots)
            shots.mkdir(parents=True, exist_ok=True)
            doc = {"person": person.name, "rounds_trained": args.rounds, "rounds": rows}
            write_text(shots / "walkthrough.json", json.dumps(doc, indent=2) + "\n")
            shoot(f"{url.rstrip('/')}/?token={token}", shots, last_round=args.rounds, timeout_s=args.timeout)
        out = data / "export-lora"
        subprocess.run([sys.executable, "-m", "app", "export", "lora", "--data-dir", str(data), "--experiment", "1",
                        "--round", str(args.rounds), "--format", "diffusers", "--out", str(out)], env=env, check=True)
        from diffusers import StableDiffusionPipeline

        # safetensors only, here too: a model with pickled (.bin) weights is refused, not unpickled
        pipe = StableDiffusionPipeline.from_pretrained(model, local_files_only=True, use_safetensors=True,
                                                       safety_checker=None, requires_safety_checker=False)
        pipe.load_lora_weights(str(out), use_safetensors=True)
        img = pipe(["a shape"] * 4, num_inference_steps=20, guidance_scale=7.5, eta=1.0,
                   generator=[torch.Generator().manual_seed(s) for s in range(4)]).images
        print(f"exported round {args.rounds}'s LoRA to {out}; plain diffusers loaded it and drew {len(img)} images", flush=True)
        return 0
    except (people.PersonError, WalkError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(60)
        except subprocess.TimeoutExpired:
            demo.kill()
        log.close()


def _client(Client, url, token):
    try:
        return Client(url, verbose=False, headers={"X-Seiko-Token": token})
    except Exception as exc:  # noqa: BLE001 - the server is still starting: report and retry
        print(f"waiting for the web app ({type(exc).__name__})", flush=True)
        return None


def _await_round(client, demo: subprocess.Popen, index: int, timeout_s: float) -> tuple[dict[str, Any], float]:
    """Ask next_batch until it returns round ``index``'s images; the batch and the moment it returned them."""
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.predict(BATCH, "", api_name="/next_batch")
        if batch.get("items") and batch.get("round") == index:
            return batch, time.monotonic()
        if demo.poll() is not None:
            raise WalkError(f"`python -m app demo` exited with status {demo.returncode} while round {index} was awaited; see its log")
        if time.monotonic() > deadline:
            raise WalkError(f"round {index}'s images did not come within {timeout_s:g} s")
        time.sleep(POLL_S)


def shoot(url: str, out: Path, *, last_round: int, timeout_s: float = 600) -> None:
    """rating.png, dashboard.png and dashboard-grid.png (an eval-grid image clicked to enlarge it) in ``out``; ``url``:
    the address as the app printed it (in local mode with its token)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"]
    wait_ms = int(timeout_s * 1000)

    def settle(selector: str, what: str, ms: int) -> bool:
        try:
            page.wait_for_selector(selector, timeout=ms)
            return True
        except PlaywrightTimeout:
            print(f"note: {what} did not appear within {ms / 1000:.0f} s; the screenshot is taken without it", flush=True)
            return False

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        settle("#rating-grid .rg-card", "the rating page's images", 60_000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(out / "rating.png"), full_page=True)

        page.get_by_role("tab", name="Dashboard").click()
        settle("#taste-plot img, #taste-plot svg, #taste-plot canvas", "the taste plot", 60_000)
        # the last round's eval job renders its eval grid after the query images are out: wait for that column
        settle(f"#eval-grid th:text-is('round {last_round}')", f"round {last_round}'s eval-grid column", wait_ms)
        page.wait_for_timeout(4000)  # the dashboard's next refresh draws what came meanwhile
        page.screenshot(path=str(out / "dashboard.png"), full_page=True)

        # a click focuses an eval-grid image, which the page's CSS shows large (app.ui_assets); first prompt, last round
        cell = page.locator("#eval-grid .seiko-evalgrid tr").nth(1).locator("td img").last
        if cell.count():
            cell.click()
            page.wait_for_timeout(800)
            if cell.evaluate("el => document.activeElement === el"):
                page.screenshot(path=str(out / "dashboard-grid.png"))  # the viewport: the enlarged image is fixed in it
            else:
                print("note: the clicked eval-grid image did not take the focus; no dashboard-grid.png", flush=True)
        else:
            print("note: the dashboard has no eval-grid image; no dashboard-grid.png", flush=True)
        browser.close()
    print(f"screenshots in {out}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
