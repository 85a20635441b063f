"""What the front door (``app.web_guard``) checks of Gradio's own routes, beyond the sign-in.

Gradio answers routes whatever the page holds, and some of them act outside the app's event handlers, so the
handlers' own checks (who is signed in, their role) never see them. A review (3 Dec 2026) showed what that allowed:

- **Deep links.** ``GET /gradio_api/deep_link?session_hash=H`` writes a snapshot of session H's input values to disk,
  and ``GET /?deep_link=...`` (or ``/config?deep_link=...``) renders a page from that snapshot for whoever opens the
  link. Gradio stores an event's inputs in the session before the handler runs, so a rater who sent HTML as the
  input of an ``gr.HTML`` component, then snapshotted the session, had a link that ran their script in an admin's
  page (and made an admin account); each snapshot also stayed on disk, so any rater could fill it. The app uses no
  deep links: the route is not answered (404) and a ``deep_link`` parameter is refused (400) on every request.
- **Pages.** ``GET /?page=NAME`` (Gradio's multipage parameter) looked NAME up unchecked: any name but the app's one
  page was a KeyError, a 500 and a traceback per request (twelfth review): 404 and one sentence (``page_refusal``).
- **Files in an event's inputs.** Gradio walks every input value for a file object (a dict whose ``meta._type`` is
  ``gradio.FileData``) and fetches it into its cache, from a URL too, before the handler (and its role check) runs.
  The app takes no files (its upload routes are not answered either), so an event body that carries one is refused
  (400) before Gradio reads it.
- **Session hashes and events.** ``/gradio_api/queue/data``, ``/heartbeat/H`` and ``/cancel`` take the session
  hash from the caller and never compare it with the signed-in user (``/heartbeat`` and ``/cancel`` need no sign-in
  at all): whoever learnt an admin's hash (from a proxy's log) could read the admin's event results or close their
  session. ``Owners`` binds each hash to the account that first used it; another account gets 403, nobody signed in
  401; a query naming two hashes is refused (400: the guard would check one, Gradio read the other). Likewise
  ``GET /gradio_api/call/{api}/{event id}`` read any event's results (and, given a session hash in place of an event
  id, that session's): an event id is bound to the account whose request made it (the guard reads the id in the
  answer) and any other id gets 404. Each account's bindings are bounded by its own count only, so nobody can push
  another account's out.
- **Results that are not waiting** (a review of 5 Dec 2026): ``/queue/data`` naming a session Gradio holds no
  messages for (a new hash, ``has_results_stream``), and ``GET /call/{api}/{event id}`` for an event whose results
  were read (``waiting``), reached Gradio, which started a 200 event stream and raised a 404 inside it: ~5 KB of
  chained tracebacks in the log per request. Both are a 404 with one sentence now, and an event made
  by ``POST /call/{api}`` is read only under that ``api`` (the guard records it). A session hash is what Gradio's
  clients make (``SESSION_HASH``: the page's is base 36, gradio_client's a UUID); any other (a NUL in
  ``/heartbeat/%00`` logged an httpx.InvalidURL traceback) is refused (400) in a query, a path or a JSON body.
- **Input values** (a review of 5 Dec 2026): Gradio checks an event's values against its components before the
  handler runs, and answered a wrong one with a traceback in the log (or an empty ``error: null``), even on an
  admin's event sent by a rater: a choice not in a dropdown's list, text where a number goes (a TypeError in its
  bounds check). An event whose handler is marked ``admin_only`` (where it is declared) is refused for anyone but an
  admin with the handlers' own sentence (403), and each value is checked for its component's kind (``value_refusal``:
  a number, true or false, text, one of the choices) and refused in one sentence naming the input (400). A number
  outside its component's minimum or maximum still met Gradio's own range check, a traceback in the log for each (a
  second review): it is refused too, the sentence naming the range. On ``/queue/join`` (``is_page_join``) these
  refusals are JSON, ``{"detail": sentence}``, which the page shows in its error toast.
- **Memory.** Gradio keeps every session's input values in memory (a copy of each input an event was sent), up to
  10,000 sessions, whoever made them; a curl-style ``POST /gradio_api/call/{api}`` with no session hash makes a
  session of its own. A signed-in rater sending 200 KB inputs under fresh hashes grew the server by 0.47 MB a session,
  towards 4.7 GB. An account now keeps ``SESSIONS_PER_ACCOUNT`` sessions and ``EVENTS_PER_ACCOUNT`` event ids: the
  state of a session its account forgets is dropped (``drop_session_state``), and ``sweep_unowned`` drops the state
  of any session no account holds (one an event made after its id was forgotten) once it is ``UNOWNED_GRACE_S`` old.
  A later review found that bound to be one of time (a fast script left hundreds of sessions its events made after
  their ids were forgotten), that unread results of curl-style calls stayed in Gradio's queue (60 unread: 253 MB),
  and that a script's sessions pushed out the open page of the same account. Now a page's session is pinned while its
  heartbeat is open and an event while it waits or runs (``Owners``: not counted, forgotten only past twice the
  count), a forgotten session's unread results are dropped with its state, and an account may have
  ``EVENTS_IN_FLIGHT`` events waiting, running or unread at once, those being admitted counted too (429 past that).
  ``/gradio_api/run/`` and ``/api/``, which run a handler outside the queue, are not answered.
- **Turns** (the sixth review of 5 Dec 2026): each event runs a few calls at a time for all users together (its
  concurrency limit, ``app.ui.PAGE_CONCURRENCY``), so one account's 24 page loads in flight held every other user's
  page load 4-7 s. An account may have ``EVENTS_PER_HANDLER`` calls of one event (one ``fn_index``, one API) waiting
  or running (429 past that, one sentence: ``too_many_of_one_event``); results left unread count only towards
  ``EVENTS_IN_FLIGHT``.
- **Routes the app does not use** (proxying, streaming, monitoring, the vibe editor, run history, dev reload, custom
  components, profiling) are not answered (404), so none of them is an attack surface. Nor is ``/gradio_api/token``,
  which handed the HttpOnly session cookie's token to any script of the page (a later review). Nor are Gradio's
  file routes (``FILE_ROUTES``: ``/gradio_api/file=<path>`` and the like), which served anything in Gradio's
  temporary folder to any signed-in rater: the app shows images as ``data:`` URIs and plots inline, and exports
  download through a route of its own (``app.ui_export``), so no page of it asks for a file URL (a security review).
- **Events by number and by name** (a later review): ``/queue/join`` with an ``fn_index`` the app does not have, or
  ``POST /call/{name}`` with a name that is not one of the app's public API names, raised in Gradio (a bare 500 and
  a traceback per request, which any rater could repeat); and a private handler could be called by name, its own
  role check the only guard. Both are refused (404, one sentence) before Gradio sees them.

Paths are those the router sees (``starlette._utils.get_route_path``: a root path taken off).
"""

from __future__ import annotations

import datetime
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

API = "/gradio_api"
# routes this app never uses (see the module docstring); a path equal to one or below it is not answered
UNUSED_PREFIXES = (
    tuple(f"{API}/{name}" for name in ("deep_link", "proxy=", "stream/", "vibe-edit", "undo-vibe-edit", "vibe-code",
                                       "run-history", "runs", "dev/", "custom_component/", "profiling/",
                                       "component_server", "vibe-starter-queries", "run/", "api/", "token"))
    + ("/monitoring",)
)
# POST routes whose JSON body carries an event's inputs or a session hash; read (bounded) and checked here
EVENT_POSTS = (f"{API}/queue/join", f"{API}/run/", f"{API}/api/", f"{API}/call/", f"{API}/cancel", f"{API}/reset")
HEARTBEAT = f"{API}/heartbeat/"
QUEUE_DATA = f"{API}/queue/data"
# remembered per account, its own oldest forgotten first: sessions (a page load or an API client each) and event ids
# (an event's results are read right after it is made); Gradio's state of a forgotten session is dropped
SESSIONS_PER_ACCOUNT = 32
EVENTS_PER_ACCOUNT = 64
# a page's session (its heartbeat open) and an event still waiting or running are pinned: not counted, and forgotten
# only past twice the count in all; and an account may have this many events waiting or running at once (more are refused, 429)
EVENTS_IN_FLIGHT = 32
# and at most this many of them of one event (one fn_index, one API) waiting or running: each event runs a few at a
# time for everyone (its concurrency limit, ``app.ui``), so one account's 24 page loads in flight held every other
# account's page load 4-7 s behind them (a review of 5 Dec 2026, sixth review). The page sends one of an event at a
# time (the rating grid's own queue, Gradio's "once" trigger mode); a script that waits for each answer needs one.
# Three, not two: an account's open tabs count together, and three tabs' timer refreshes may overlap on a busy machine
# (each would otherwise show an error in a background tab).
EVENTS_PER_HANDLER = 3
UNOWNED_GRACE_S = 30.0  # a session no account holds keeps its state this long (an event may be making it)
SWEEP_EVERY_S = 5.0
CALL = f"{API}/call/"
# a Gradio session hash as its clients make it: the page's Math.random().toString(36) (about 11 characters), gradio_client's
# uuid4 (36); anything else (a NUL, a slash, a megabyte) is refused before Gradio puts it in a URL or a dict
SESSION_HASH = re.compile(r"[A-Za-z0-9_-]{1,64}")
BAD_SESSION_HASH = "A session hash is 1 to 64 letters, digits, '-' or '_'."
NOT_WAITING = "No event of yours is waiting for its results in that session."
MAX_DEPTH = 64  # nesting a body may have; the app's inputs are a few levels deep
# values (numbers, texts, true/false/null, lists, objects: the body itself and everything in it) a body may carry. The
# app's largest event (the New-experiment form: 11 inputs, none a list) carries about 20 with the body's own fields.
# A 256 KiB body of ~131,000 small values cost ~220 ms of the event loop to walk (a review of 5 Dec 2026, second
# review); the walk stops at this count
MAX_VALUES = 256
TOO_MANY_VALUES = f"The request body carries more than {MAX_VALUES} values; no event of this app takes that many."


FILE_ROUTES = (f"{API}/file=", f"{API}/file/", "/file=", "/file/")  # Gradio's routes that serve a file by its path


def unused(path: str) -> bool:
    """Whether ``path`` is one of Gradio's routes this app does not answer: ``UNUSED_PREFIXES`` and every file route
    (``FILE_ROUTES``: a path in Gradio's temporary folder, or a URL Gradio would download for the caller)."""
    return path.startswith(UNUSED_PREFIXES + FILE_ROUTES)


def query_refusal(query_string: bytes) -> str | None:
    """Why a request with this query string is refused (one sentence), or None."""
    query = parse_qs(query_string.decode("latin-1"), keep_blank_values=True)
    if "deep_link" in query:
        return "This app does not open deep links; open its address without the deep_link parameter."
    return None


def page_refusal(path: str, method: str | None, query_string: bytes, pages: Any) -> str | None:
    """Why a request for the page (``GET``/``HEAD /``) is refused (one sentence), or None: its ``page`` parameter
    (Gradio's multipage one; Gradio reads the last) names a page the app does not have. ``pages``: the Blocks config's
    ``page`` mapping (None before it is built: the one page, ``""``).

    Found by the twelfth review (6 Dec 2026): Gradio's page route looked the name up unchecked, so any other name was
    a KeyError for whoever is signed in: a 500 with no sentence and an 80-line traceback in the log per request."""
    if path != "/" or method not in ("GET", "HEAD"):
        return None
    names = parse_qs(query_string.decode("latin-1"), keep_blank_values=True).get("page", [])
    known = pages if isinstance(pages, dict) else {"": None}
    unknown = next((n for n in names if n not in known), None)
    if unknown is None:
        return None
    return f"This app has no page named {unknown[:40]!r}; open its address without it."


def is_event_post(path: str, method: str | None) -> bool:
    return method == "POST" and any(path == p or path.startswith(p) for p in EVENT_POSTS)


def body_refusal(body: bytes) -> tuple[str | None, Any]:
    """(why the event body is refused or None, the parsed body). Refused: a body that is not JSON, and one that
    ``parsed_refusal`` refuses."""
    if not body:
        return None, None
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return "The request body is not JSON.", None
    why = parsed_refusal(parsed)
    return (why, None) if why is not None else (None, parsed)


def parsed_refusal(parsed: Any) -> str | None:
    """Why a parsed event body is refused (one sentence), or None: one nested deeper than MAX_DEPTH, one that carries
    more than MAX_VALUES values in all (counted by each list's and object's length before it is walked, so the walk
    stops within MAX_VALUES values), and one that carries a Gradio file object anywhere."""
    stack: list[tuple[Any, int]] = [(parsed, 0)]
    count = 1
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"The request body is nested deeper than {MAX_DEPTH} levels."
        if isinstance(value, dict):
            meta = value.get("meta")
            if isinstance(meta, dict) and "_type" in meta:
                return "This app takes no files; an input that is a file object was refused."
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        count += len(children)
        if count > MAX_VALUES:
            return TOO_MANY_VALUES
        stack.extend((v, depth + 1) for v in children)
    return None


def event_target_refusal(path: str, parsed_body: Any, fns: dict[int, Any] | None) -> str | None:
    """Why an event post names no event this app answers (one sentence), or None: ``/queue/join``'s ``fn_index`` must
    be one of ``fns`` (the Blocks' functions by id), and ``POST /call/{name}`` (``/call/v2/{name}``) must name a
    public API (``api_visibility == "public"``; the page's own events are private). ``fns`` None: nothing checked."""
    if fns is None:
        return None
    if path.rstrip("/") == f"{API}/queue/join":
        fn = parsed_body.get("fn_index") if isinstance(parsed_body, dict) else None
        if isinstance(fn, bool) or not isinstance(fn, int) or fn not in fns:
            return "This app has no event with that number (fn_index); reload the page."
    elif path.startswith(CALL):
        name = path[len(CALL):].strip("/")
        name = name.removeprefix("v2/")
        public = {f.api_name for f in fns.values() if getattr(f, "api_visibility", "public") == "public" and f.api_name}
        if name not in public:
            return f"This app has no public API named {name[:64]!r}; it has {sorted(public)}."
    return None


ADMIN_ONLY_MARK = "_seiko_admin_only"


def admin_only(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Mark an event handler as an admin's (it refuses anyone else first thing, ``admin_of(request)``): the guard then
    refuses the event for a rater before Gradio checks its values (``app.web_guard``). Put it on the handler where it
    is declared."""
    setattr(handler, ADMIN_ONLY_MARK, True)
    return handler


def is_admin_only(handler: Any) -> bool:
    """Whether ``handler`` (a function, or a bound method of one) is marked ``admin_only``."""
    return getattr(handler, ADMIN_ONLY_MARK, False) is True


def name_admin_outputs(blocks: Any) -> None:
    """Give each output of an admin's event (its handler marked ``admin_only``) that has no ``elem_id`` one of its own
    ("seiko-block-<id>"): Gradio 6 puts no id of its own on a component's block, and the page (``ui_assets.STREAMS_JS``)
    finds the outputs of such an event refused after a demotion by these ids, to lift Gradio's "Error" cover from them.
    A rater's page holds none of these events (``app.rater_page``); an output it shows as well (the header's Experiment
    dropdown) has its id there too, which names no part of the Admin tab. Call it inside the ``gr.Blocks`` context,
    after the last event, so that the page's config has the ids."""
    for block_fn in blocks.fns.values():
        if not is_admin_only(block_fn.fn):
            continue
        for block in block_fn.outputs:
            if not getattr(block, "elem_id", None):
                block.elem_id = f"seiko-block-{block._id}"


def is_page_join(path: str) -> bool:
    """Whether ``path`` is ``/queue/join``, the route the page's own Gradio client sends its events to."""
    return path.rstrip("/") == f"{API}/queue/join"


def event_function(path: str, parsed_body: Any, fns: dict[int, Any] | None) -> Any:
    """The Blocks function an event post runs (``/queue/join``'s ``fn_index``, ``POST /call/{api}``'s name), or None."""
    if fns is None:
        return None
    if path.rstrip("/") == f"{API}/queue/join":
        fn = parsed_body.get("fn_index") if isinstance(parsed_body, dict) else None
        return None if isinstance(fn, bool) or not isinstance(fn, int) else fns.get(fn)
    if path.startswith(CALL):
        name = path[len(CALL):].strip("/").removeprefix("v2/")
        return next((f for f in fns.values() if f.api_name == name), None)
    return None


def session_blocks(state_holder: Any, session: Any) -> dict[int, Any] | None:
    """The components of session ``session`` as its events changed them (a dropdown's choices set by the page's load),
    by id, without making the session; None when Gradio holds no state of it."""
    data = getattr(state_holder, "session_data", None)
    state = data.get(session) if isinstance(data, dict) and isinstance(session, str) else None
    config = getattr(state, "blocks_config", None)
    blocks = getattr(config, "blocks", None)
    return blocks if isinstance(blocks, dict) else None


def _shown(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _same(value: Any, choice: Any) -> bool:
    """Whether ``value`` (from JSON) is ``choice``: numbers by value, true/false and text only as themselves."""
    if isinstance(value, bool) or isinstance(choice, bool) or isinstance(value, str) or isinstance(choice, str):
        return type(value) is type(choice) and value == choice
    return isinstance(value, int | float) and isinstance(choice, int | float) and value == choice


def _finite_number(value: Any) -> bool:
    """Whether ``value`` is a number Gradio can take as a float: not true/false, not inf or NaN, and not an integer
    too large for a float (over ~1.8e308: math.isfinite and Gradio's float() raised OverflowError, a 500 and a
    traceback; found by review)."""
    import math

    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int past the largest float: not a number this app takes
        return False


def _number_range(low: float | None, high: float | None) -> str:
    """A number component's range in words: "from 0 to 0.5", "of at least 1", "of at most 8"."""

    def shown(x: float) -> str:
        return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)

    if low is not None and high is not None:
        return f"from {shown(low)} to {shown(high)}"
    return f"of at least {shown(low)}" if low is not None else f"of at most {shown(high)}"


def value_refusal(block: Any, value: Any, position: int) -> str | None:
    """Why ``value`` cannot be the value of input component ``block`` (the event's ``position``-th input, from 0), in
    one sentence naming the input, or None. Null is every component's empty value (Gradio passes it on as None). A
    number: a finite number within the component's minimum and maximum (the sentence names them); a checkbox: true
    or false; a textbox: text; a dropdown or radio: one of its choices (a list of them where it takes several), or
    text where it takes a value of its own. Other components are not checked here (a gr.State's value is the
    server's, not the request's)."""
    from gradio import components

    if value is None or getattr(block, "stateful", False):
        return None
    label = getattr(block, "label", None)
    label = " ".join(str(label).split()) if label else ""
    name = f"'{label if len(label) <= 60 else label[:57] + '...'}'" if label else f"number {position + 1}"
    if isinstance(block, components.Number):
        if not _finite_number(value):
            return f"The input {name} takes a number, got {_shown(value)}."
        # Gradio's own range check (Number.preprocess) raised gr.Error with a traceback in the log (found by the second
        # review of 5 Dec 2026): the same rule here, an edge included, before Gradio runs
        low, high = getattr(block, "minimum", None), getattr(block, "maximum", None)
        if (low is not None and value < low) or (high is not None and value > high):
            return f"The input {name} takes a number {_number_range(low, high)}, got {_shown(value)}."
    elif isinstance(block, components.Checkbox):
        if not isinstance(value, bool):
            return f"The input {name} takes true or false, got {_shown(value)}."
    elif isinstance(block, components.Textbox):
        if not isinstance(value, str):
            return f"The input {name} takes text, got {_shown(value)}."
    elif isinstance(block, components.Dropdown | components.Radio):
        choices = [c[1] if isinstance(c, tuple | list) and len(c) == 2 else c for c in (block.choices or [])]
        custom = isinstance(block, components.Dropdown) and block.allow_custom_value

        def allowed(v: Any) -> bool:
            return any(_same(v, c) for c in choices) or (custom and (isinstance(v, str) or _finite_number(v)))

        listed = ", ".join(_shown(c, 24) for c in choices[:10]) + (", ..." if len(choices) > 10 else "")
        multiple = isinstance(block, components.Dropdown) and block.multiselect
        if (multiple and isinstance(value, list) and all(allowed(v) for v in value)) or (not multiple and allowed(value)):
            return None
        if not choices and not custom:
            return f"The input {name} has no choices to pick from in this page yet, got {_shown(value)}; reload the page."
        what = f"one of its choices ({listed})" if choices else ""
        if custom:
            what = f"{what} or a value of its own" if what else "a value of its own (text or a number)"
        what = f"a list of values, each {what}" if multiple else what
        return f"The input {name} takes {what}, got {_shown(value)}."
    return None


def _api_parameters(block_fn: Any) -> tuple[list[str], set[str]]:
    """(the parameter names, the required ones) of an API function: the names Gradio itself gives its inputs
    (``input_parameter_names``, what its API info and /call/v2 use), required where the function gives no default."""
    import inspect

    names = [n for n in (getattr(block_fn, "input_parameter_names", None) or []) if n]
    try:
        params = inspect.signature(block_fn.fn).parameters
    except (TypeError, ValueError):
        return names, set()
    return names, {n for n in names if n in params and params[n].default is inspect.Parameter.empty}


def event_inputs_refusal(path: str, parsed_body: Any, fns: dict[int, Any] | None,
                         blocks: dict[int, Any] | None = None) -> str | None:
    """Why an event post's inputs cannot be run (one sentence), or None; call it after ``event_target_refusal``
    found the target. Gradio met these with a 500 or an empty error and a traceback in the log for each (found by
    review): a page-only event (``fn_index`` of an event with no server function), fewer input values than the
    event takes, a value its component does not take (``value_refusal``; ``blocks``: the session's components as
    its events changed them, ``session_blocks``), and a ``/call/v2`` body whose names are not the API's parameters or
    lack a required one."""
    if fns is None:
        return None
    if path.rstrip("/") == f"{API}/queue/join":
        block_fn = fns.get(parsed_body.get("fn_index")) if isinstance(parsed_body, dict) else None
        if block_fn is None:
            return None
        if block_fn.fn is None:
            return "That event runs in the page only; there is nothing to run on the server."
        data = parsed_body.get("data")
        if not isinstance(data, list):
            return "The event's data must be a list of its input values."
        if len(data) < len(block_fn.inputs):
            return f"That event takes {len(block_fn.inputs)} input values, got {len(data)}."
        if getattr(block_fn, "batch", False):
            return None  # each value a list of values (the app has no batch event)
        props = set(getattr(block_fn, "component_prop_inputs", None) or ())
        for i, block in enumerate(block_fn.inputs):
            block = (blocks or {}).get(getattr(block, "_id", None), block)
            if i not in props and (why := value_refusal(block, data[i], i)) is not None:
                return why
        return None
    if not path.startswith(CALL):
        return None
    name = path[len(CALL):].strip("/")
    v2 = name.startswith("v2/")
    name = name.removeprefix("v2/")
    block_fn = next((f for f in fns.values() if f.api_name == name), None)
    if block_fn is None or block_fn.fn is None:
        return None
    names, required = _api_parameters(block_fn)
    if v2:
        if not isinstance(parsed_body, dict):
            return f"{name} takes a JSON object of its parameters ({', '.join(names)})."
        unknown = sorted(str(k)[:64] for k in parsed_body if k not in names and k != "oauth_token")
        if unknown:
            return f"{name} has no parameter {unknown[0]!r}; its parameters are {', '.join(names)}."
        if missing := sorted(required - set(parsed_body)):
            return f"{name} needs its parameter {missing[0]!r}; its parameters are {', '.join(names)}."
        return None
    data = parsed_body.get("data") if isinstance(parsed_body, dict) else None
    if not isinstance(data, list):
        return f"{name} takes {{\"data\": [...]}}, a list of its values ({', '.join(names)})."
    if len(data) < len(block_fn.inputs):  # Gradio fills no default here: each value is needed
        return f"{name} takes {len(block_fn.inputs)} values ({', '.join(names)}), got {len(data)}."
    return None


def session_hash_of(path: str, query_string: bytes, parsed_body: Any) -> str | None:
    """The Gradio session hash a request names (path, query or JSON body), or None. Refused (ValueError, its sentence):
    a query that names more than one (the guard would check one and Gradio read another), and a hash that is not
    ``SESSION_HASH`` (a JSON body's that is not null nor a string too)."""
    if path.startswith(HEARTBEAT):
        return _checked_hash(path[len(HEARTBEAT):].rstrip("/") or None)
    values = parse_qs(query_string.decode("latin-1"), keep_blank_values=True).get("session_hash", [])
    if len(values) > 1:
        raise ValueError("The request names more than one session_hash.")
    if path.rstrip("/") == QUEUE_DATA:
        return _checked_hash(values[0]) if values else None
    if isinstance(parsed_body, dict) and parsed_body.get("session_hash") is not None:
        return _checked_hash(parsed_body["session_hash"])
    return None


def _checked_hash(value: Any) -> Any:
    if value is not None and not (isinstance(value, str) and SESSION_HASH.fullmatch(value)):
        raise ValueError(BAD_SESSION_HASH)
    return value


def reads_session(path: str, method: str | None) -> bool:
    """Whether the request reads a session's waiting results: ``GET /gradio_api/queue/data``."""
    return method in ("GET", "HEAD") and path.rstrip("/") == QUEUE_DATA


def waiting(queue: Any, session: str | None) -> bool:
    """Whether session ``session`` has an event whose results are waiting to be read (Gradio's ``queue/data`` raises
    a 404 inside its event stream otherwise, and waits for ever where the session's results were all read)."""
    return has_results_stream(queue, session) and bool(queue.pending_event_ids_session.get(session))


def has_results_stream(queue: Any, session: str | None) -> bool:
    """Whether Gradio's ``queue/data`` would serve session ``session``: it has a queue of messages (made when the
    session first joins an event, kept afterwards); Gradio raises a 404 inside the stream it started otherwise. A
    session whose results were all read has one, and its stream waits for the next event, as the page expects."""
    return session is not None and session in queue.pending_messages_per_session


def session_of_event(queue: Any, event_id: str) -> str | None:
    """The session whose results ``GET /call/{api}/{event_id}`` reads (as Gradio finds it), None when no session holds
    the event (Gradio then reads the session named by the event id, whatever it holds)."""
    event = queue.event_ids_to_events.get(event_id)
    if event is not None:
        return event.session_hash
    return next((s for s, ids in list(queue.pending_event_ids_session.items()) if event_id in ids), None)


class Owners:
    """Which account first used each key (a Gradio session hash, or an event id). Thread-safe.

    Bounded per account: an account that has used ``per_account`` keys forgets its own oldest, never another
    account's, so no account can push an admin's session out by using many hashes (a review showed a shared
    least-recently-used table evicted that way, after which a rater claimed the admin's session). Keys that
    ``pinned`` names (a page with its heartbeat open, an event still running) are not counted, and go only when the
    account holds ``hard_max`` keys in all, so a script cannot push out its own account's open page."""

    def __init__(self, per_account: int, on_forget: Callable[[str], Any] | None = None,
                 pinned: Callable[[str], bool] | None = None, hard_max: int | None = None) -> None:
        self.per_account, self.on_forget, self.pinned = per_account, on_forget, pinned
        self.hard_max = 2 * per_account if hard_max is None else hard_max
        self._owners: dict[str, str] = {}
        self._by_account: dict[str, OrderedDict[str, None]] = {}
        self._lock = threading.Lock()

    def owner(self, key: str) -> str | None:
        with self._lock:
            return self._owners.get(key)

    def claim(self, key: str, user: str) -> bool:
        """Bind ``key`` to ``user`` unless another account holds it; True when ``user`` holds it now."""
        with self._lock:
            owner = self._owners.get(key)
            if owner is not None:
                if owner == user:
                    self._by_account[user].move_to_end(key)  # in use: the last of its account's to be forgotten
                return owner == user
            self._owners[key] = user
            mine = self._by_account.setdefault(user, OrderedDict())
            mine[key] = None
            forgotten = []
            while True:  # at most per_account unpinned keys, and hard_max in all
                unpinned = [k for k in mine if not (self.pinned and self.pinned(k))]
                if len(unpinned) > self.per_account:
                    old = unpinned[0]
                elif len(mine) > self.hard_max:
                    old = next(iter(mine))
                else:
                    break
                del mine[old]
                self._owners.pop(old, None)
                forgotten.append(old)
        if self.on_forget is not None:
            for old in forgotten:
                self.on_forget(old)
        return True

    def keys_of(self, user: str) -> list[str]:
        """The keys ``user`` holds, their oldest first."""
        with self._lock:
            return list(self._by_account.get(user, ()))

    def refusal(self, key: str, user: str | None) -> str | None:
        """Why ``user`` (None: nobody signed in) may not use session ``key`` (one sentence), or None; the first
        account to use a key owns it."""
        if user is None:
            return "Sign in first: this request names a session of the app."
        return None if self.claim(key, user) else "This session of the app belongs to another account."


def _running(queue: Any, key: str) -> bool:
    """Whether an event of session ``key`` is still waiting or running (it would write its messages to the session's
    queue of results)."""
    return any(e in queue.event_ids_to_events for e in queue.pending_event_ids_session.get(key, ()))


def drop_session_state(state_holder: Any, key: str, queue: Any = None) -> bool:
    """Drop Gradio's in-memory state of session ``key`` (its stored inputs, its gr.State values) and, given Gradio's
    ``queue``, its unread results unless an event of it is still running; whether anything was dropped. A later
    request naming the session starts it afresh, as Gradio's own eviction does."""
    dropped = False
    if key in state_holder.session_data:
        state_holder.delete_state(key)  # gr.State values' delete callbacks
        with state_holder.lock:
            state_holder.session_data.pop(key, None)
            state_holder.time_last_used.pop(key, None)
        dropped = True
    if queue is not None and not _running(queue, key):
        dropped = queue.pending_messages_per_session.pop(key, None) is not None or dropped
        queue.pending_event_ids_session.pop(key, None)
    return dropped


def sweep_unowned(state_holder: Any, owned: Callable[[str], bool], grace_s: float | None = None,
                  queue: Any = None) -> int:
    """Drop the state (and, given ``queue``, the unread results) of every session that ``owned`` says no account holds
    and that was last used over ``grace_s`` (default ``UNOWNED_GRACE_S``) seconds ago; returns how many. (Gradio
    stamps ``time_last_used`` in naive local time; results of a session with no state count as old.)"""
    grace_s = UNOWNED_GRACE_S if grace_s is None else grace_s
    now = datetime.datetime.now()
    with state_holder.lock:
        keys = [(k, state_holder.time_last_used.get(k)) for k in state_holder.session_data]
    if queue is not None:
        keys += [(k, None) for k in list(queue.pending_messages_per_session) if k not in state_holder.session_data]
    dropped = 0
    for key, used in keys:
        if used is not None and (now - used).total_seconds() < grace_s:
            continue
        if not owned(key):
            dropped += drop_session_state(state_holder, key, queue)
    return dropped


def outstanding(user: str, queue: Any, *owners: Owners) -> int:
    """How many events of ``user``'s sessions (the keys ``owners`` hold for them) are waiting, running, or finished
    with their results unread (Gradio keeps an event's id in ``pending_event_ids_session`` until its results are read:
    a review's script sent 120 events to one session it kept using and never read them, 360 results held)."""
    keys = {k for o in owners for k in o.keys_of(user)}
    return sum(len(queue.pending_event_ids_session.get(k, ())) for k in keys)


def running_of(user: str, queue: Any, fn_id: int, *owners: Owners) -> int:
    """How many events of ``user``'s sessions (the keys ``owners`` hold for them) run the Blocks function ``fn_id`` and
    are still waiting or running (in Gradio's ``event_ids_to_events``; a finished one's unread results do not hold
    the event's turn and count only towards ``outstanding``)."""
    keys = {k for o in owners for k in o.keys_of(user)}
    events = queue.event_ids_to_events
    count = 0
    for key in keys:
        for event_id in list(queue.pending_event_ids_session.get(key, ())):
            event = events.get(event_id)
            if event is not None and getattr(getattr(event, "fn", None), "_id", None) == fn_id:
                count += 1
    return count


def too_many_of_one_event() -> str:
    """The refusal of an account's event past ``EVENTS_PER_HANDLER`` of that event waiting or running (one sentence)."""
    return (f"You have {EVENTS_PER_HANDLER} requests of this kind waiting for an answer; wait for their answers "
            "before sending another.")


def event_of(path: str, method: str | None) -> str | None:
    """The event id a ``GET /gradio_api/call/{api}/{event id}`` (or ``/call/v2/...``) reads the results of, else
    None. Gradio answers it for any caller, and when no event has that id it reads the session of that hash."""
    read = call_read_of(path, method)
    return read[1] if read else None


def call_read_of(path: str, method: str | None) -> tuple[str, str] | None:
    """(api name, event id) of a ``GET /gradio_api/call/{api}/{event id}`` (or ``/call/v2/{api}/{event id}``), else
    None. Gradio ignores the api name; the guard reads an event only under the name it was made with."""
    if method not in ("GET", "HEAD") or not path.startswith(CALL):
        return None
    parts = path[len(CALL):].strip("/").split("/")
    if len(parts) == 3 and parts[0] == "v2":  # /call/v2/{api}/{id}; /call/v2/{id} is /call/{api}/{id} with api "v2"
        parts = parts[1:]
    return (parts[0], parts[1]) if len(parts) == 2 and parts[1] else None


def call_api_of(path: str, method: str | None) -> str | None:
    """The api name a curl-style ``POST /gradio_api/call/{api}`` (or ``/call/v2/{api}``) makes an event of, else None."""
    if method != "POST" or not path.startswith(CALL):
        return None
    return path[len(CALL):].strip("/").removeprefix("v2/") or None


def makes_event(path: str, method: str | None) -> bool:
    """Whether the answer to this request names a new event (``{"event_id": ...}``): the queue's join and the
    curl-style ``POST /gradio_api/call/{api}``."""
    return method == "POST" and (path.rstrip("/") == f"{API}/queue/join" or path.startswith(CALL))


def event_id_in(body: bytes) -> str | None:
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return None
    value = parsed.get("event_id") if isinstance(parsed, dict) else None
    return value if isinstance(value, str) and value else None
