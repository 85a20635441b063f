"""One rater process of the load test (``python -m app.tools.loadtest`` starts one per account).

    python -m app.tools.rater URL NAME PASSWORD RATER_ID N THINK_MS START_FILE OUT gradio_client|raw

Signs in, writes ``OUT.ready``, waits for START_FILE, then loops ``next_batch`` / ``submit_rating`` until N
ratings are acknowledged, timing each call around the client (what a client waits for), and writes the
timings and the acknowledged ratings to OUT as JSON. Imports nothing of the app: a rater is only a client.

The sign-in is this module's own (``sign_in``), for both clients: the server checks a few sign-ins at a time and
answers the others 503 "try again in a few seconds" (and its throttle 429), with Retry-After, and 20 raters
signing in at once get that answer; a rater tries again after the wait, as the login page tells a person to, up
to ``SIGN_IN_PATIENCE_S``. gradio_client's own sign-in tried once and said only "Could not login" (status 1 of
all 20 raters past the fourth, found by the nineteenth review); a refusal now says the server's answer.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from typing import Any

SIGN_IN_PATIENCE_S = 120.0  # how long a rater keeps trying a sign-in the server answers "try again" (429, 503)
MIN_TRY_S = 0.5  # the shortest wait before a sign-in is tried again, and the shortest bound of one try


class SignInRefused(Exception):
    """The server did not sign the rater in; the message says its answer."""


def sign_in(url: str, name: str, password: str, *, patience_s: float = SIGN_IN_PATIENCE_S) -> tuple[dict[str, str], int]:
    """Sign in as ``name`` (``POST /login``, the form the login page sends): the session's cookies and how many tries
    the server answered "try again" first (429 or 503: each tried again after its Retry-After, within ``patience_s``).
    Any other refusal, or one past the patience, is ``SignInRefused`` with the server's status and sentence."""
    import httpx

    began = time.monotonic()
    deadline = began + patience_s
    refused = 0
    while True:
        try:  # each try bounded by what is left of the patience (at least MIN_TRY_S), not 120 s more
            answer = httpx.post(url.rstrip("/") + "/login", data={"username": name, "password": password},
                                timeout=max(MIN_TRY_S, deadline - time.monotonic()))
        except httpx.HTTPError as exc:
            raise SignInRefused(f"could not reach {url} to sign in as {name!r}: {type(exc).__name__}: {exc}") from exc
        if answer.is_success:
            return {k: v for k, v in answer.cookies.items() if v is not None}, refused
        try:
            body = answer.json()
        except ValueError:  # the guard's plain-text refusals (origin, body size)
            body = None
        said = body["detail"] if isinstance(body, dict) and "detail" in body else answer.text
        wait = _retry_after(answer.headers.get("retry-after"))
        if answer.status_code not in (429, 503) or wait is None or time.monotonic() + wait > deadline:
            why = ""
            if answer.status_code in (429, 503):  # why a "try again" was not tried again
                why = (" (it named no wait)" if wait is None else
                       f" (its wait of {wait:g} s would end past the rater's patience of {patience_s:g} s)")
            tried = f"; {refused} such answers before, in {time.monotonic() - began:.0f} s" if refused else ""
            raise SignInRefused(f"could not sign in to {url} as {name!r}: the server answered {answer.status_code}: "
                                f"{str(said).strip()[:300]}{why}{tried}")
        refused += 1
        print(f"sign-in as {name!r} answered {answer.status_code}: {said}; trying again in {wait:g} s", flush=True)
        time.sleep(wait)


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the server sends whole seconds), at least MIN_TRY_S, or None when absent or not a
    finite number (0, a negative number or nan were a wait of 0: the sign-in posted again at once for the whole
    patience; read-only review)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return None if seconds is None or not math.isfinite(seconds) else max(MIN_TRY_S, seconds)


class RawClient:
    """Gradio's documented HTTP protocol (POST /gradio_api/call/NAME, then its event stream), for comparison
    with gradio_client: the same API without the client library's own overhead."""

    def __init__(self, url: str, name: str, password: str) -> None:
        import httpx

        cookies, self.sign_in_refused = sign_in(url, name, password)
        self.http = httpx.Client(base_url=url, timeout=120, cookies=cookies)

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


def connect(url: str, name: str, password: str, mode: str) -> tuple[Any, int]:
    """A client of ``mode`` signed in as ``name`` (``sign_in``), and how many sign-in tries were answered "try again"."""
    if mode == "gradio_client":
        from gradio_client import Client

        cookies, refused = sign_in(url, name, password)
        # the session's cookies, as gradio_client's own sign-in would have kept them (it reads them from httpx_kwargs)
        return Client(url, verbose=False, httpx_kwargs={"cookies": cookies}), refused
    if mode == "raw":
        client = RawClient(url, name, password)
        return client, client.sign_in_refused
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
    try:
        client, refused = connect(url, name, password, mode)
    except SignInRefused as exc:
        print(f"rater {name}: {exc}", file=sys.stderr)
        return 1
    try:
        open(out + ".ready", "w").close()
        while not os.path.exists(start_file):
            time.sleep(0.005)
        result = rate(client, int(rater_id), int(n), float(think_ms))
        with open(out, "w") as f:
            json.dump({"name": name, "rater_id": int(rater_id), "sign_in_refused": refused, **result}, f)
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
