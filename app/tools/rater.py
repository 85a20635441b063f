"""One rater process of the load test (``python -m app.tools.loadtest`` starts one per account).

    python -m app.tools.rater URL NAME PASSWORD RATER_ID N THINK_MS START_FILE OUT gradio_client|raw

Signs in, writes ``OUT.ready``, waits for START_FILE, then loops ``next_batch`` / ``submit_rating`` until N
ratings are acknowledged, timing each call around the client (what a client waits for), and writes the
timings and the acknowledged ratings to OUT as JSON. Imports nothing of the app: a rater is only a client.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from typing import Any


class RawClient:
    """Gradio's documented HTTP protocol (POST /gradio_api/call/NAME, then its event stream), for comparison
    with gradio_client: the same API without the client library's own overhead."""

    def __init__(self, url: str, name: str, password: str) -> None:
        import httpx

        self.http = httpx.Client(base_url=url, timeout=120)
        assert self.http.post("/login", data={"username": name, "password": password}).status_code == 200

    def predict(self, api_name: str, **kwargs: Any) -> Any:
        data = [kwargs["limit"], kwargs["experiment"]] if api_name == "/next_batch" else [kwargs["image_id"], kwargs["score"]]
        event_id = self.http.post(f"/gradio_api/call{api_name}", json={"data": data}).json()["event_id"]
        event = None
        with self.http.stream("GET", f"/gradio_api/call{api_name}/{event_id}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    value = json.loads(line[5:])
                    if event == "error":
                        raise RuntimeError(str(value))
                    return value[0]
        raise RuntimeError("the event stream ended without a result")

    def close(self) -> None:
        self.http.close()


def connect(url: str, name: str, password: str, mode: str) -> Any:
    if mode == "gradio_client":
        from gradio_client import Client

        return Client(url, auth=(name, password), verbose=False)
    if mode == "raw":
        return RawClient(url, name, password)
    raise ValueError(f"unknown client {mode!r}; choose gradio_client or raw")


def rate(client: Any, rater_id: int, n: int, think_ms: float) -> dict[str, Any]:
    """Rate until ``n`` ratings are acknowledged (or 20 errors, or no images left); the timings and what was acknowledged."""
    rng = random.Random(rater_id)
    submit: list[float] = []
    batch: list[float] = []
    acked: list[list[int]] = []
    errors: list[str] = []
    t_start = time.time()
    while len(acked) < n and len(errors) < 20:
        t0 = time.perf_counter()
        got = client.predict(limit=10, experiment="load", api_name="/next_batch")
        batch.append(time.perf_counter() - t0)
        if not got["items"]:
            errors.append("next_batch returned no images: " + got["message"])
            break
        for item in got["items"]:
            if len(acked) >= n:
                break
            if think_ms:
                time.sleep(rng.expovariate(1000.0 / think_ms))
            score = 1 + (item["image_id"] * 7 + rater_id * 3) % 10
            t0 = time.perf_counter()
            try:
                res = client.predict(image_id=item["image_id"], score=score, api_name="/submit_rating")
            except Exception as exc:  # recorded and reported as an error of the run
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            submit.append(time.perf_counter() - t0)
            assert res["score"] == score and res["edited"] is False, res
            acked.append([item["image_id"], score])
    return {"submit_s": submit, "next_batch_s": batch, "acked": acked, "errors": errors, "started": t_start,
            "finished": time.time()}


def main(argv: list[str]) -> int:
    if len(argv) != 9:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    url, name, password, rater_id, n, think_ms, start_file, out, mode = argv
    client = connect(url, name, password, mode)
    try:
        open(out + ".ready", "w").close()
        while not os.path.exists(start_file):
            time.sleep(0.005)
        result = rate(client, int(rater_id), int(n), float(think_ms))
        with open(out, "w") as f:
            json.dump({"name": name, "rater_id": int(rater_id), **result}, f)
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
