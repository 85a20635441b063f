"""The README walk-through, run for real: `make demo`'s app, two rated rounds, screenshots, an exported LoRA.

    python -m app.tools.walkthrough --data-dir /tmp/seiko-walk --rounds 2 --shots docs/images

1. starts `python -m app demo` (worker + UI) on a fresh data directory, on the embedded shapes model;
2. rates each open round through the public API (`next_batch` / `submit_rating`) as a rater who likes
   purple: the score is the `purple` oracle mapped to 1-10 (a stand-in for a person with that taste);
3. closes the round (the admin action) and waits for the worker to train and open the next one;
4. takes screenshots of the rating page and the dashboard in headless Chromium;
5. exports the last round's LoRA with `python -m app export` and loads it in plain diffusers.
Prints the per-round mean rating, so the improvement (or not) is visible in the log.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app import services
from app.settings import DEFAULT_MODEL, Settings
from app.tools.harness import wait_for
from db import repo
from db.engine import make_engine, read_session, session_factory
from seiko_core.oracles import ORACLES


def purple_score(png_b64: str) -> int:
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(png_b64))).convert("RGB"), dtype=np.float32) / 255.0
    t = torch.from_numpy(img).permute(2, 0, 1)[None]
    raw = float(ORACLES["purple"].fn(t, [""])[0])  # 0..10
    return int(np.clip(round(1 + raw * 0.9), 1, 10))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m app.tools.walkthrough", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="/tmp/seiko-walk")
    ap.add_argument("--model", help=f"base model directory [$SEIKO_MODEL, default {DEFAULT_MODEL}, from the current directory]")
    ap.add_argument("--port", type=int, default=7861)
    ap.add_argument("--rounds", type=int, default=2, help="rounds to rate and train")
    ap.add_argument("--shots", default=None, help="folder for rating.png and dashboard.png (none: no screenshots)")
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args(argv)

    data = Path(args.data_dir)
    if data.exists() and any(data.iterdir()):
        ap.error(f"{data} is not empty; give a fresh --data-dir")
    settings = Settings.from_env({"data_dir": str(data), "port": args.port, "model": args.model})
    model = Path(settings.model).resolve() if Path(settings.model).exists() else settings.model
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    log = open(data.parent / f"{data.name}-demo.log", "w")
    demo = subprocess.Popen([sys.executable, "-m", "app", "demo", "--data-dir", str(data), "--port", str(args.port),
                             "--model", str(model)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        from gradio_client import Client

        url = f"http://127.0.0.1:{args.port}/"
        client = wait_for("the web app", lambda: _client(Client, url), 300, poll=2.0)
        factory = session_factory(make_engine(settings.db_url))
        t0 = time.time()
        for k in range(args.rounds + 1):
            batch = wait_for(f"round {k}'s images", lambda: _batch(client), args.timeout, poll=2.0)
            scores = []
            last = k == args.rounds  # leave part of the last round unrated, for the rating-page screenshot
            while batch["items"] and not (last and len(scores) >= 12):
                for item in batch["items"][: 12 - len(scores) if last else None]:
                    s = purple_score(item["png_base64"])
                    client.predict(item["image_id"], s, api_name="/submit_rating")
                    scores.append(s)
                batch = client.predict(32, "", api_name="/next_batch")
            print(f"round {k}: rated {len(scores)} images, mean rating {np.mean(scores):.2f} "
                  f"(share >= 6: {np.mean(np.array(scores) >= 6):.2f}) at {time.time() - t0:.0f} s", flush=True)
            if k == args.rounds:
                break
            with read_session(factory) as s:
                exp_id = repo.list_experiments(session=s)[0].id
            services.close_round(factory=factory, experiment_id=exp_id)
        if args.shots:
            shoot(url, Path(args.shots))
        out = data / "export-lora"
        subprocess.run([sys.executable, "-m", "app", "export", "lora", "--data-dir", str(data), "--experiment", "1",
                        "--round", str(args.rounds), "--format", "diffusers", "--out", str(out)], env=env, check=True)
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(model, local_files_only=True)
        pipe.load_lora_weights(str(out))
        img = pipe(["a shape"] * 4, num_inference_steps=20, guidance_scale=7.5, eta=1.0,
                   generator=[torch.Generator().manual_seed(s) for s in range(4)]).images
        print(f"exported round {args.rounds}'s LoRA to {out}; plain diffusers loaded it and drew {len(img)} images", flush=True)
        return 0
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(60)
        except subprocess.TimeoutExpired:
            demo.kill()


def _client(Client, url):
    try:
        return Client(url, verbose=False)
    except Exception as exc:  # noqa: BLE001 - the server is still starting: report and retry
        print(f"waiting for the web app ({type(exc).__name__})", flush=True)
        return None


def _batch(client):
    b = client.predict(32, "", api_name="/next_batch")
    return b if b.get("items") else None


def shoot(url: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.wait_for_timeout(4000)
        page.screenshot(path=str(out / "rating.png"), full_page=True)
        page.get_by_role("tab", name="Dashboard").click()
        page.wait_for_timeout(6000)
        page.screenshot(path=str(out / "dashboard.png"), full_page=True)
        browser.close()
    print(f"screenshots in {out}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
