"""The web app: ``build_demo(services) -> gr.Blocks`` and what ``launch`` needs (``launch_kwargs``).

Three tabs: Rate (a keyboard-first grid of the open round's images), Dashboard (per-round metrics,
the eval grid, the worker's state; refreshes itself) and Admin (experiments, rounds, users; in admins' pages
only: a rater's page config has none of it, ``app.rater_page``; and every admin handler checks the role on the server); besides them Pairs and Compare, and
Account (anyone signed in changes their own password: ``app.ui_account``).

Each tab has its own builder, which lays the tab out and wires its handlers (methods of a handlers class at
module level): ``app.ui_rate_tab``, ``app.ui_pairs``, ``app.ui_dashboard_tab``, ``app.ui_compare``,
``app.ui_admin_tab``. The work itself is in ``app.ui_rate``, ``app.ui_dashboard``, ``app.ui_admin`` (and their
siblings) as plain functions; a handler only finds who is asking (``gr.Request``), calls them and turns their
results and refusals into Gradio outputs, ``gr.Warning`` or ``gr.Error``. Per-browser state is in ``gr.State``.

Public API (documented, for ``gradio_client``): ``/next_batch``, ``/submit_rating``, ``/next_pair`` and ``/submit_comparison``. Every other
event is private. Images reach the browser as ``data:`` URIs, so no file route ever serves the data
dir; the data dir, the SQLite database files and the model directory are also in ``blocked_paths``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from gradio import utils as gradio_utils
from sqlalchemy import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app import (
    auth,
    gradio_routes,
    ui_account,  # every signed-in account's own password (the twelfth review)
    ui_admin,
    ui_admin_tab,
    ui_compare,  # issue 14 item 3: the Compare tab (blind A/B), its dashboard table, rollback
    ui_dashboard_tab,
    ui_export,
    ui_pairs,  # issue 14 item 1: the Pairs tab (pairwise preferences) and the feedback setting
    ui_rate,
    ui_rate_tab,
    web_guard,
)
from app.auth import AuthError, Who
from app.settings import Settings
from app.storage import UnsafePath
from app.ui_assets import CSS
from db.checks import UNICODE_REFUSAL, findable_id, shown, whole_number
from db.engine import bound_refusal

TITLE = "SEIKO studio"

log = logging.getLogger(__name__)

# Gradio's queue looks for work every 1 ms while it has none (queueing.Queue.sleep_when_free on Linux) and for progress
# every 10 ms: with nobody connected that measured 8% of a core and about 830 wake-ups a second, taken from the worker
# that trains beside the server on a laptop (BENCHMARKS.md, "The web server's idle polling"). 20 ms and 100 ms add at
# most 20 ms to the first request after a quiet spell and 0.1 s to a progress bar.
QUEUE_IDLE_POLL_S = 0.02
QUEUE_PROGRESS_POLL_S = 0.1
# How many calls of one page event (a page load, a tab shown, a timer's refresh) run at once, for everyone together.
# Gradio's default is one: each event had one queue for all users, so a rater with 24 page loads in flight held every
# other user's page load 4-7 s instead of 0.22 s (the sixth review of 5 Dec 2026). These handlers read (or lease
# images under the experiment's lock, as next_batch does four at a time), and the guard lets one account have
# ``gradio_routes.EVENTS_PER_HANDLER`` (3) of an event waiting or running, so 8 lets two accounts and part of a third
# fill an event before others wait; on 2 cores more would only interleave the same work. Events that change state (the admin's buttons and
# switches) set a limit of one, as before, and the rating group ("rating": ratings, skips, votes) its own 4.
PAGE_CONCURRENCY = 8


@dataclass(frozen=True)
class AppServices:
    """What the app needs: the database, the settings, and whether it runs without accounts."""

    factory: sessionmaker[Session]
    settings: Settings
    local_mode: bool  # no accounts: localhost only, everyone is the local admin
    batch_size: int = 8  # images per rating batch
    dashboard_refresh_s: float = 5.0
    rate_poll_s: float = 10.0  # how often an empty rating page looks for new images
    # local mode: the secret a browser or script must show (app.web_guard), drawn here unless given
    # (SEIKO_LOCAL_TOKEN); None with accounts
    local_token: str | None = None

    def __post_init__(self) -> None:
        token = (self.local_token or self.settings.local_token or web_guard.new_local_token()) if self.local_mode else None
        object.__setattr__(self, "local_token", token)

    def local_url(self, base: str) -> str:
        """``base`` (the app's address) with the local-mode token to open it with; ``base`` itself with accounts."""
        return f"{base.rstrip('/')}/?token={self.local_token}" if self.local_token else base


# ---------------------------------------------------------------------------------------------
# who is asking; errors for the user
# ---------------------------------------------------------------------------------------------


def who_from_request(services: AppServices, request: gr.Request | None) -> Who:
    """The rater behind ``request`` (AuthError if refused)."""
    username = getattr(request, "username", None) if request is not None else None
    client = getattr(request, "client", None) if request is not None else None
    host = getattr(client, "host", None) if client is not None else None
    who = auth.identify(services.factory, local_mode=services.local_mode, username=username, client_host=host)
    # the session is checked again when the event runs, not only when its request came in (seventh review)
    if not services.local_mode and (why := web_guard.session_ended(request)) is not None:
        raise AuthError(why)
    return who


def _sentence(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text[0].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


def refusal(message: str, **kwargs: Any) -> gr.Error:
    """The gr.Error that answers a refusal: its sentence for the person, and no traceback in the server's log.
    Gradio prints one for every gr.Error by default, so a script repeating a bad request (any rater can) wrote about
    3 KB of log per request (found by review); a fault that is not a refusal is logged where it is caught."""
    return gr.Error(message, print_exception=False, **kwargs)


def _who(services: AppServices, request: gr.Request | None) -> Who:
    try:
        return who_from_request(services, request)
    except AuthError as e:
        raise refusal(_sentence(e), title="Not allowed") from e


def _admin(services: AppServices, request: gr.Request | None) -> Who:
    who = _who(services, request)
    try:
        return auth.require_admin(who)
    except AuthError as e:
        raise refusal(_sentence(e), title="Admins only") from e


def _shown(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; a refusal (a ValueError from the db layer or a form check, or AuthError) or a fault of the files
    it reads (an adapter whose files no longer match its manifest, a model that cannot be loaded) becomes a gr.Error
    with its sentence, not Gradio's bare "Error". A fault whose text is Python's (a UnicodeError) or names a server
    path (a path leading out of the data dir, a file error) gets a sentence of its own; the log has the details."""
    from seiko_core.checkpoint import CheckpointError
    from seiko_core.models import ModelLoadError

    try:
        return fn()
    except UnicodeError as e:  # a ValueError whose text is Python's ("'utf-8' codec can't encode character ..."): a
        # text no check refused reached an encoder (found by the fourth review); db.engine refuses such text first
        log.exception("a text could not be encoded or decoded")
        raise refusal(UNICODE_REFUSAL if isinstance(e, UnicodeEncodeError)
                      else "A text could not be read as Unicode; the server's log has the details.") from e  # logged
    except UnsafePath as e:  # a path from the database leads out of the data dir: its text names the data dir
        log.error("%s", e)
        raise refusal("A file of the data directory could not be read safely; the server's log names it.") from e
    except (AuthError, ValueError, CheckpointError, ModelLoadError) as e:
        raise refusal(_sentence(e)) from e
    except OperationalError as e:
        if (busy := bound_refusal(e)) is None:  # the database away or broken: Gradio's "Error", the traceback logged
            raise
        # a lock held past the bound (SQLite's busy timeout, PostgreSQL's lock_timeout) or a statement cancelled at
        # PostgreSQL's statement_timeout (db.engine.WEB_STATEMENT_TIMEOUT_MS): rolled back, try again
        raise refusal(_sentence(busy)) from e
    except OSError as e:  # a full disk or a permission: the file writes are atomic, so nothing half-written stays
        log.exception("a file could not be read or written")
        # the path stays in the log: the toast named the server's file (its data dir) to whoever asked (fourth review)
        raise refusal(f"A file could not be read or written ({e.strerror or type(e).__name__}); the server's log names "
                      "it.") from e  # logged above


def banner_html(services: AppServices, who: Who) -> str:
    import html

    if who.local:
        return (
            "<div class='seiko-banner local' id='local-mode'><b>Local mode:</b> no user accounts exist, so this app "
            "answers only on this computer (127.0.0.1) and you act as the single local admin. To let other people rate, "
            "add accounts with <code>python -m app users add NAME --role admin|rater</code> and restart the app; "
            "then everyone signs in.</div>"
        )
    # Log out is a POST (app.web_guard): a GET /logout ends nothing, so a link on another site cannot sign anyone out.
    return (f"<div class='seiko-banner user' id='signed-in'>Signed in as <b>{html.escape(who.name)}</b> ({who.role})"
            "<form method='post' action='/logout' style='display:inline'>"
            "<button type='submit' id='logout-button' class='seiko-logout'>Log out</button></form></div>")


# ---------------------------------------------------------------------------------------------
# launching
# ---------------------------------------------------------------------------------------------


def blocked_paths(settings: Settings) -> list[str]:
    """Absolute paths Gradio's file routes must never serve: the data dir, the SQLite files, the model dir, and the
    deep-link snapshots in Gradio's shared temporary folder (sessions' input values; the app makes none, see
    ``app.gradio_routes``, but another Gradio app on the machine may)."""
    paths = [settings.data_dir.resolve(), (Path(gradio_utils.get_upload_folder()) / "deep_links").resolve()]
    url = make_url(settings.db_url)
    if url.get_backend_name() == "sqlite" and url.database:
        db_file = Path(url.database).resolve()
        paths += [db_file.with_name(db_file.name + suffix) for suffix in ("", "-wal", "-shm", "-journal")]
    model = Path(settings.model).expanduser()
    if model.exists():
        paths.append(model.resolve())
    out: list[str] = []
    for p in paths:
        if str(p) not in out:
            out.append(str(p))
    return out


def _url_host(host: str) -> str:
    """``host`` as a URL spells it: an IPv6 address in brackets. Gradio builds its own address from the name it is
    given (and asks it for its start-up call): ``--host ::1`` stopped `serve` with httpx's "Invalid port: ':1:7860'"
    and a traceback (found by the seventh review of 5 Dec 2026); Gradio takes the brackets off to listen."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def launch_kwargs(services: AppServices) -> dict[str, Any]:
    """Keyword arguments for ``build_demo(services).launch(...)``: CSS, file-route blocks, and sign-in with accounts."""
    kwargs: dict[str, Any] = {
        "css": CSS,
        "blocked_paths": blocked_paths(services.settings),
        "run_history": False,
        # FastAPI's default /openapi.json answers without sign-in (Gradio turns off /docs and /redoc, not the schema);
        # the API is documented at /gradio_api/info, behind sign-in. Found by tests/reliability/test_rel_access.py.
        # app.web_guard goes in front of everything Gradio builds when the server starts: Host and Origin checks,
        # SameSite=Lax cookies, throttled sign-in off the event loop, server-side sessions, log out by POST.
        # routes: GET /seiko/export/<id>, the one download route of exports built on the admin tab (app.ui_export).
        "app_kwargs": {"openapi_url": None, "lifespan": web_guard.lifespan(services), "routes": ui_export.routes(services)},
        "footer_links": ["api", "gradio"],
        # pinned whatever the environment says (GRADIO_SSR_MODE, GRADIO_MCP_SERVER): a Node front server or an MCP
        # endpoint would answer requests the guard was not written for
        "ssr_mode": False,
        "mcp_server": False,
        # and GRADIO_NUM_WORKERS (twelfth review, 6 Dec 2026): without accounts (no ``auth``) Gradio started static file
        # servers of its own on the next ports, outside the guard: no local token, any Host, CORS "*", and uploads of
        # any size into its temporary folder
        "num_workers": 0,
        # and GRADIO_SHARE: it downloaded Gradio's tunnel client and opened a public tunnel to the port
        "share": False,
        "server_name": _url_host(services.settings.host),
        "server_port": services.settings.port,
        # Gradio's check of its own front page once it has started (networking.url_ok): a HEAD / with a 3 s timeout,
        # not tried again after a timeout, and then "When localhost is not accessible, a shareable link must be
        # created" and no app. Its startup-events request, which waits for an answer however long it takes, has
        # already reached the server by then; the first page takes longer than 3 s on a machine whose cores are busy
        # (the whole suite in two processes beside a browser saw it). The private switch is the check's only use.
        "_frontend": False,
    }
    if not services.local_mode:
        kwargs["auth"] = auth.refuse_direct_sign_in  # shows Gradio's login page; app.web_guard answers POST /login
        kwargs["auth_message"] = f"{TITLE}: sign in with the account an admin made for you."
    return kwargs


# ---------------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------------


def quiet_idle_polling(demo: gr.Blocks) -> bool:
    """Make ``demo``'s Gradio queue poll every QUEUE_IDLE_POLL_S / QUEUE_PROGRESS_POLL_S instead of every 1 / 10 ms.

    These are private attributes of gradio's Queue (gradio is pinned in pyproject.toml); where a Gradio release lacks
    them, the app still works at Gradio's own rate and a warning says so. Returns whether they were set."""
    queue = getattr(demo, "_queue", None)
    names = ("sleep_when_free", "progress_update_sleep_when_free")
    if queue is None or not all(isinstance(getattr(queue, name, None), (int, float)) for name in names):
        log.warning("this Gradio release has no queue poll intervals to set; its queue keeps its own (1 ms when idle)")
        return False
    queue.sleep_when_free = QUEUE_IDLE_POLL_S
    queue.progress_update_sleep_when_free = QUEUE_PROGRESS_POLL_S
    return True


def build_demo(services: AppServices) -> gr.Blocks:
    """The whole app as a gr.Blocks; launch it with ``demo.launch(**launch_kwargs(services))``.

    One builder per tab (``app.ui_rate_tab``, ``app.ui_pairs``, ``app.ui_dashboard_tab``, ``app.ui_compare``,
    ``app.ui_admin_tab``), each laying out its tab and wiring its own handlers; here only the header, the page load,
    the experiment selector and the public API."""
    factory, data_dir, size = services.factory, services.settings.data_dir, services.batch_size
    private: dict[str, Any] = {"api_visibility": "private"}

    def who_of(request: gr.Request | None) -> Who:
        return _who(services, request)

    def admin_of(request: gr.Request | None) -> Who:
        return _admin(services, request)

    def warn(message) -> None:
        gr.Warning(_sentence(message))

    def dashboard_visible(who: Who, exp_id: int | None) -> bool:
        return ui_dashboard_tab.visible(factory, who, exp_id)

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        rate_state = gr.State(None)
        exp_state = gr.State(None)
        dash_state = gr.State({})

        with gr.Row(elem_classes="seiko-header", equal_height=True):
            gr.HTML(f"<h1>{TITLE}</h1>", padding=False)
            experiment_dd = gr.Dropdown(label="Experiment", choices=[], value=None, interactive=True, scale=0, min_width=260)
        banner = gr.HTML(elem_id="banner")

        with gr.Tabs() as tabs:
            rate = ui_rate_tab.build(services, rate_state, who_of, warn, private)
            picks = rate.handlers.picks  # the experiment each browser session last picked (for the timers)

            # issue 14 item 1: pairwise preferences, left / right / tie with the keyboard (app.ui_pairs)
            ui_pairs.build_tab(services, exp_state, lambda request: _who(services, request), _shown,
                               lambda message: gr.Warning(_sentence(message)), private=private, picks=picks)

            # shown to admins, and to raters only where the experiment allows it (its plots can bias ratings)
            dash = ui_dashboard_tab.build(services, exp_state, dash_state, who_of, private)

            ui_compare.build_tab(services, exp_state, lambda request: _who(services, request), _shown, kind="ab",
                                 label="Compare", private=private)

            # admins only (a rater's page config has none of it: app.rater_page)
            admin = ui_admin_tab.build(services, exp_state, experiment_dd, who_of, admin_of, _shown, private,
                                       picks=picks)

            # everyone with an account: their own password (hidden in local mode, which has none)
            account = ui_account.build(services, who_of, _shown, private)
        ui_admin_tab.timer_while_selected(tabs, admin, private)

        # ---- page load ---------------------------------------------------------------------

        def on_load(state, request: gr.Request):
            who = _who(services, request)
            choices = ui_admin.experiment_choices(factory, who)  # a rater's: only those they may rate (app.members)
            view = ui_rate.load_batch(factory, data_dir, who, state, batch_size=size)
            exp_id = view.state["experiment_id"]
            return (banner_html(services, who), gr.Dropdown(choices=choices, value=exp_id),
                    *rate.handlers.view_outputs(view), exp_id, gr.Tab(visible=dashboard_visible(who, exp_id)),
                    gr.Tab(visible=not who.local))

        # nothing of the Admin tab: a rater's page config leaves the tab out (app.rater_page), and every event the
        # page needs must then touch none of it
        load_outputs = [banner, experiment_dd, *rate.outputs, exp_state, dash.tab, account.tab]
        demo.load(on_load, [rate_state], load_outputs, **private)

        # ---- experiment selector ------------------------------------------------------------

        def on_experiment(exp_id, state, request: gr.Request):
            who = _who(services, request)
            if exp_id is None:
                return gr.skip()
            exp_id = whole_number(exp_id)  # int() raised a TypeError on a list (a traceback; found by review)
            if not findable_id(exp_id):
                raise refusal(f"An experiment is picked by its id, a positive whole number, not {shown(exp_id)}.")
            # recorded before the batch is drawn: a timer's tick that read the old experiment writes nothing and
            # leases nothing (ui_rate_tab.Picks); put back if this pick fails (the page then stays as it was)
            before = picks.pick(request, rate=exp_id, shown=exp_id)
            try:
                view = _shown(lambda: ui_rate.load_batch(factory, data_dir, who, state, batch_size=size,
                                                         experiment_id=exp_id))
                # the Admin tab's round status follows exp_state on the tab's own event (to admins only); as an output
                # here it was named in every rater's page config (fourteenth review)
                return (*rate.handlers.view_outputs(view), exp_id, {}, gr.Tab(visible=dashboard_visible(who, exp_id)))
            except BaseException:
                picks.restore(request, before, rate=exp_id, shown=exp_id)
                raise

        experiment_dd.input(on_experiment, [experiment_dd, rate_state],
                            [*rate.outputs, exp_state, dash_state, dash.tab], **private)

        def forget_session(request: gr.Request):
            picks.forget(request)  # the page closed: its pick is not needed any more
            # its actions' numbers are kept (ui_rate_tab.Answered, bounded by its MAX): Gradio runs unload when the
            # page's heartbeat ends, while an undo the page gave up may still run; forgetting here let it take back a
            # later rating (twelfth review, 6 Dec 2026)

        demo.unload(forget_session)

        # ---- the public API -----------------------------------------------------------------

        def next_batch(limit: int = 8, experiment: str = "", request: gr.Request = None) -> dict:
            """Get the next images for you to rate (the open round of an experiment).

            An image is offered to you until you rate it (or skip it on the web page); images other
            raters have already rated as often as the experiment wants (its overlap) are not offered.
            An experiment may hand you, now and then, an image you rated before: your score for it then
            is kept apart (it measures consistency) and leaves your first rating as it was.
            Images handed to you are reserved to you for 10 minutes; you hold at most your share of the
            round unrated at a time (its images x overlap / the raters, at least the page's batch size),
            so past it you get fewer than "limit" (your unrated ones again): rate them to get more.

            Parameters:
                limit: how many images to return, from 1 to 64.
                experiment: the experiment's name; empty for the experiment now being labeled.
            Returns:
                A dict with "experiment", "round", "message", "progress" (round and personal counts) and
                "items": a list of {"image_id", "prompt", "seed", "png_base64"} (the PNG file, base64;
                null when the server cannot read the image's file).
            """
            who = _who(services, request)
            return _shown(lambda: ui_rate.api_batch(factory, data_dir, who, limit=limit, experiment=experiment,
                                                    batch_size=size))

        def submit_rating(image_id: int, score: int, request: gr.Request = None) -> dict:
            """Rate one image from 1 (worst) to 10 (best); saved at once, durable when this call returns.

            Rating an image you rated before changes your score (an edit; for an image handed to you
            again, the score you gave it that time). Accepted, whether or not next_batch handed it to you:
            any image of a round open for labeling that you rated before, that you have on your page
            (handed to you by next_batch or the web page: for 10 minutes, or until the page takes a new
            batch), or that still needs ratings (other raters have not already given or reserved the
            ratings it needs; an image you skipped too: rating it takes the skip back). Refused, changing
            nothing: a score outside 1-10, an unknown image, an image of a round closed for labeling, an
            evaluation image, an image of an experiment that asks for comparisons only, and an image not
            offered to you (other raters already gave or reserved the ratings it needs).

            Parameters:
                image_id: an image's id, as the "image_id" of an item from next_batch (or any image taken as above).
                score: a whole number from 1 to 10.
            Returns:
                A dict with "image_id", "score", "previous_score" (None for a new rating), "edited" and "progress".
            """
            who = _who(services, request)
            return _shown(lambda: ui_rate.submit(factory, who, image_id, score))

        def next_pair(experiment: str = "", request: gr.Request = None) -> dict:
            """Get the next pair of images for you to compare (the open round of an experiment that asks for comparisons).

            Both images have the same prompt (two images each alone with its prompt: "prompt" is "left / right",
            and each side carries its own); say which is better with submit_comparison. A pair is offered
            to you until you vote on it or skip it; pairs other raters have already compared as often as the experiment
            wants (its overlap) are not offered. Left and right are the sides the server drew for the pair, the
            same the Pairs tab shows. An experiment that asks for 1-10 ratings only gives no pair and says so.

            Parameters:
                experiment: the experiment's name; empty for the experiment now being labeled.
            Returns:
                A dict with "experiment", "round", "message", "progress" (round and personal counts) and
                "pair": None when there is nothing to compare, else {"pair_id", "prompt", "left", "right"},
                each side a {"image_id", "seed", "prompt", "png_base64"} (the PNG file, base64).
            """
            who = _who(services, request)
            return _shown(lambda: ui_pairs.api_pair(factory, data_dir, who, experiment=experiment))

        def submit_comparison(pair_id: int, choice: str, request: gr.Request = None) -> dict:
            """Say which image of a pair is better: "left", "right" or "tie", or "skip"; saved at once, durable when this call returns.

            "a" and "b" are accepted for left and right. Voting again on a pair you compared changes your
            choice (an edit). "skip" (can't judge) sets the pair aside for you: not offered again, counted
            nowhere; refused for a pair you voted on. Refused, changing nothing: any other choice, an unknown pair, a pair of a round
            closed for labeling, a pair of an experiment that asks for 1-10 ratings only, and a pair not
            offered to you (other raters already gave it the comparisons it needs).

            Parameters:
                pair_id: the "pair_id" of the pair from next_pair.
                choice: "left", "right", "tie" or "skip".
            Returns:
                A dict with "pair_id", "choice" (stored as "a" left, "b" right or "tie"; or "skip"), "side" ("left",
                "right", "tie" or "skip"), "previous_choice" and "previous_side" (None for a new vote), "edited" and
                "progress".
            """
            who = _who(services, request)
            return _shown(lambda: ui_pairs.api_vote(factory, who, pair_id, choice))

        gr.api(next_batch, api_name="next_batch", concurrency_limit=4, concurrency_id="api_read")
        gr.api(submit_rating, api_name="submit_rating", concurrency_limit=4, concurrency_id="rating")
        # pairwise comparisons (issue 14 item 1): the reads share next_batch's group, the votes the ratings' (as the tab's)
        gr.api(next_pair, api_name="next_pair", concurrency_limit=4, concurrency_id="api_read")
        gr.api(submit_comparison, api_name="submit_comparison", concurrency_limit=4, concurrency_id="rating")
        gradio_routes.name_admin_outputs(demo)  # the last thing in the Blocks: every event is declared

    demo.queue(default_concurrency_limit=PAGE_CONCURRENCY)  # events that set no limit of their own (the page's reads)
    quiet_idle_polling(demo)  # after queue(): it makes a new Queue
    return demo
