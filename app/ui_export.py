"""Export in the browser, for admins: build an export on demand, download it through one route.

``build`` makes the same exports as ``python -m app export`` (a round's LoRA as diffusers, kohya or a merged
pipeline; the experiment's ratings as a dataset), chosen by experiment id and round index and written by
``app.export`` under ``<data_dir>/exports/``. Each built file is recorded in the ``exports`` table and gets an id.

``GET /seiko/export/<id>`` (``routes``) is the only way to download one. It identifies the caller as every event
handler does (the sign-in session's cookie, or local mode on localhost), answers only admins, looks the id up in
the database and serves exactly the file recorded there (checked to lie under ``<data_dir>/exports/``). The URL
carries no path, so nothing can be traversed; an unknown id, a non-admin or a missing file get one sentence.

A request another site's page made the browser send (``Sec-Fetch-Site: cross-site`` or ``same-site``: an image or a
script of a page on another port of the same host or on a sibling name, which SameSite=Lax cookies reach) is refused
(403) unless it opens the download as a page (``Sec-Fetch-Mode: navigate`` with ``Sec-Fetch-Dest: document``): each
call hashed the whole file and wrote an ``export.download`` audit row, so such a page could make an admin's browser
repeat that at will (found by review). The app's own link (``same-origin``), an address typed or bookmarked
(``none``) and clients that send no such header (curl, scripts) are served. A HEAD request is answered as a GET
would be (the file is checked the same way) but writes no audit row: nothing is downloaded.
"""

from __future__ import annotations

import html
import logging
import mimetypes
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

from app import auth, export
from app.auth import AuthError, Who, require_admin
from app.settings import Settings
from db import repo
from db.checks import MAX_ID, shown, whole_number
from db.engine import read_session, write_session
from db.errors import InvalidInput, NotFound
from db.models import EXPORT_FORMATS
from seiko_core.checkpoint import sha256_file
from seiko_core.export_verify import VerificationError

log = logging.getLogger("seiko.export")

ROUTE = "/seiko/export/{export_id}"
MAX_ID_DIGITS = 18


def download_url(export_id: int) -> str:
    return ROUTE.format(export_id=int(export_id))


@dataclass(frozen=True)
class Built:
    export_id: int
    file_name: str
    size_bytes: int
    url: str
    checked: bool = False  # a model export that stock diffusers re-loaded and matched (seiko_core.export_verify)

    def message(self) -> str:
        note = (" Checked: stock diffusers re-loaded it in a fresh process and it matched the app's image, not the base "
                "model's; its model card is inside.") if self.checked else ""
        return f"Export {self.export_id} is ready: {self.file_name} ({_size(self.size_bytes)}).{note}"

    def link_html(self) -> str:
        return (f"<a id='export-link-{self.export_id}' class='seiko-export-link' href='{html.escape(self.url, quote=True)}' "
                f"download>Download {html.escape(self.file_name)} ({_size(self.size_bytes)})</a>")


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def _round_index(value: Any) -> int:
    value = whole_number(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise InvalidInput(f"the round must be a whole number (0, 1, 2, ...), got {shown(value)}")
    return value


def build(factory, settings: Settings, who: Who, experiment_id: int | None, round_index: Any, fmt: str) -> Built:
    """Build an export of ``experiment_id`` (``fmt``: diffusers, kohya, merged or ratings; ``round_index`` for the
    LoRA formats), record it, and return its id and download URL. Refusals are one sentence (ValueError)."""
    require_admin(who)
    if fmt not in EXPORT_FORMATS:
        raise InvalidInput(f"unknown export format {fmt!r}; choose from {list(EXPORT_FORMATS)}")
    if experiment_id is None:
        raise InvalidInput("choose an experiment first")
    with read_session(factory) as s:
        repo.get_experiment(session=s, experiment_id=int(experiment_id))
    if fmt == "ratings":
        index = None
        path = export.export_ratings(settings, int(experiment_id))
    else:
        index = _round_index(round_index)
        try:
            path = export.export_round(settings, int(experiment_id), index, fmt)
        except VerificationError as e:  # not published: recorded in the audit log, then shown as the one-sentence refusal
            with write_session(factory) as s:
                repo.add_audit(session=s, actor_id=who.rater_id, actor_name=who.name, action="export.refused",
                               target=f"experiment {int(experiment_id)}",
                               detail={"format": fmt, "round": index, "reason": str(e)})
            raise
    try:
        root = settings.data_dir.resolve()
        relative = path.resolve().relative_to(root).as_posix()
        size = path.stat().st_size
        with write_session(factory) as s:
            row = repo.add_export(session=s, experiment_id=int(experiment_id), round_index=index, fmt=fmt,
                                  file_path=relative, sha256=sha256_file(path), size_bytes=size, created_by=who.rater_id)
            export_id = row.id
            repo.add_audit(session=s, actor_id=who.rater_id, actor_name=who.name, action="export.build",
                           target=f"experiment {int(experiment_id)}",
                           detail={"export_id": export_id, "format": fmt, "round": index})
    except BaseException:
        # not recorded, so never offered for download nor cleaned up by anything: a merged pipeline's zip stayed in
        # exports/ with no row (found by review). The failure itself goes on to the caller.
        _discard(settings, path)
        raise
    return Built(export_id, path.name, size, download_url(export_id), checked=fmt != "ratings")


def _discard(settings: Settings, path: Path) -> None:
    """Remove a built download that could not be recorded: what ``app.export`` wrote for it directly under
    ``<data_dir>/exports/`` (a zip, or a kohya export's directory, which holds the file); a failure to remove it is
    logged, not raised over the error that made it an orphan."""
    exports = settings.data_dir / export.EXPORTS_DIR
    entry = path if path.parent == exports else path.parent if path.parent.parent == exports else None
    try:
        if entry is None:
            log.error("the unrecorded export %s is not under %s; it was left where it is", path, exports)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)
    except OSError:
        log.exception("could not remove the unrecorded export %s", entry)


def exports_table(factory, who: Who, experiment_id: int | None) -> list[list[str]]:
    require_admin(who)
    if experiment_id is None:
        return []
    with read_session(factory) as s:
        return [[str(e.id), e.format, "–" if e.round_index is None else str(e.round_index), Path(e.file_path).name,
                 _size(e.size_bytes), e.created_at.strftime("%Y-%m-%d %H:%M UTC"), download_url(e.id)]
                for e in repo.list_exports(session=s, experiment_id=int(experiment_id))]


# ---------------------------------------------------------------------------------------------
# the download route
# ---------------------------------------------------------------------------------------------


def _username(request: Request) -> str | None:
    """The signed-in user of a plain HTTP request, found the way Gradio finds it for its own routes (the session
    cookie's token in the app's token table; app.web_guard withdraws tokens of ended sessions from that table)."""
    app = request.scope.get("app")
    tokens = getattr(app, "tokens", None)
    cookie_id = getattr(app, "cookie_id", None)
    if tokens is None or cookie_id is None:
        return None
    token = request.cookies.get(f"access-token-{cookie_id}") or request.cookies.get(f"access-token-unsecure-{cookie_id}")
    return tokens.get(token) if token else None


def _refusal(status: int, text: str) -> Response:
    return PlainTextResponse(text, status_code=status, headers={"Cache-Control": "no-store"})


# what a browser says of a request another site's page made it send (Fetch Metadata); such a request is answered only
# when it opens the download as a page
OTHER_SITE = frozenset({"cross-site", "same-site"})
OTHER_SITE_REFUSAL = ("An export is downloaded from the app's own page or by opening its address, not by another "
                      "site's page.")


def other_site(headers: Any) -> bool:
    """Whether the browser says another site's page made it send the request (``Sec-Fetch-Site`` cross-site or
    same-site); False without the header (curl, scripts) and for the app's own page (same-origin) or an address typed
    (none). ``headers``: a case-insensitive mapping (Starlette's Headers). Also used by ``app.web_guard``."""
    return headers.get("sec-fetch-site", "").strip().lower() in OTHER_SITE


def _other_sites_request(request: Request) -> bool:
    """Whether ``request`` was made by another site's page for something other than opening it as a page (an image, a
    script, a frame, a fetch): ``Sec-Fetch-Site`` is cross-site or same-site, and the request is not a top-level
    navigation (``Sec-Fetch-Mode: navigate`` and ``Sec-Fetch-Dest: document``). False without the headers (curl)."""
    headers = request.headers
    if not other_site(headers):
        return False
    return not (headers.get("sec-fetch-mode", "").strip().lower() == "navigate"
                and headers.get("sec-fetch-dest", "").strip().lower() == "document")


def serve(services, request: Request) -> Response:
    """``GET /seiko/export/<id>``: the built archive of export ``id``, for admins only (and HEAD: the same answer
    without the file, and no audit row)."""
    if _other_sites_request(request):
        return _refusal(403, OTHER_SITE_REFUSAL)
    username = _username(request)
    host = request.client.host if request.client else None
    try:
        who = auth.identify(services.factory, local_mode=services.local_mode, username=username, client_host=host)
        require_admin(who)
    except AuthError as e:
        status = 401 if username is None and not services.local_mode else 403
        return _refusal(status, f"Only a signed-in admin can download exports ({str(e).rstrip('.')}).")
    raw = str(request.path_params.get("export_id", ""))
    if not raw.isdecimal() or len(raw) > MAX_ID_DIGITS or int(raw) < 1:
        return _refusal(404, f"There is no export with id {raw[:40]!r}; export ids are whole numbers.")
    try:
        with read_session(services.factory) as s:
            row = repo.get_export(session=s, export_id=int(raw))
            relative, size, digest = row.file_path, row.size_bytes, row.sha256
    except NotFound:
        return _refusal(404, f"There is no export with id {int(raw)}.")
    root = (services.settings.data_dir.resolve() / export.EXPORTS_DIR).resolve()
    path = (services.settings.data_dir.resolve() / relative).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return _refusal(404, f"The file of export {int(raw)} is no longer there; build the export again.")
    if size is not None and path.stat().st_size != size:  # replaced or cut on disk: not the export that was checked
        return _refusal(409, f"The file of export {int(raw)} has changed since it was built ({path.stat().st_size} "
                             f"bytes, {size} when built); build the export again.")
    # the bytes too, not only the size: a file changed in place was served as the export that was checked (found by
    # review). A read of the whole file: seconds for a merged Stable Diffusion pipeline, once per admin download
    if digest and sha256_file(path) != digest:
        return _refusal(409, f"The file of export {int(raw)} has changed since it was built (its sha256 differs from "
                             "the one recorded); build the export again.")
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    # who took the ratings (or a model) away, and when: only building the export was audited (found by review); a
    # HEAD takes nothing away
    if request.method != "HEAD":
        auth.record(services.factory, who, "export.download", f"export {int(raw)}", file=path.name)
    return FileResponse(path, media_type=media, filename=path.name, headers={"Cache-Control": "no-store"})


def routes(services) -> list[Route]:
    """The download route, for ``launch(app_kwargs={"routes": ...})`` (Gradio's App is a FastAPI app)."""

    def download(request: Request) -> Response:  # a plain function: Starlette runs it in its thread pool
        return serve(services, request)

    # ``:path`` takes everything after /seiko/export/ (slashes, dots), so whatever follows gets the same one sentence
    return [Route(ROUTE.replace("{export_id}", "{export_id:path}"), endpoint=download, methods=["GET"],
                  name="seiko_export_download")]
