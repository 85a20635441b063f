"""``python -m app serve [--host H] [--port P] [--data-dir D] [--db-url U] [--model M]``: the web app.

With accounts in the database everyone signs in (Gradio's login page, checked against the salted
hashes). With none, the app runs in local mode: it listens on localhost only and whoever opens it is
the single local admin; asking for another --host is refused with a clear message.
Ctrl-C or SIGTERM stops it cleanly.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

from app.settings import Settings
from app.settings import add_arguments as add_settings_arguments
from db import migrate
from db.errors import SchemaOutOfDate


class ServeError(RuntimeError):
    """The app cannot start as asked; the message says what to do."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, server=True)
    parser.add_argument("--batch-size", type=int, default=8, help="images per rating batch (default 8)")


def check_model(model: str) -> None:
    """``model`` (the default of new experiments) must be one the worker can load (``services.check_model_spec``):
    a directory without model_index.json used to be served, and every experiment made on it failed in the worker."""
    from app.services import check_model_spec
    from db.errors import InvalidInput

    try:
        check_model_spec(model)
    except InvalidInput as exc:
        said = str(exc).removesuffix("; nothing was created")
        raise ServeError(f"{said} (--model or $SEIKO_MODEL: a local diffusers directory or a hub id owner/name)") from exc


def resolves(host: str) -> bool:
    """Whether ``host`` is an IP address or a name this machine resolves."""
    import ipaddress
    import socket

    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:
        socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return True


def _any_ipv6(host: Any) -> bool:
    """Whether ``host`` is ``::`` (however spelt: ``0::0`` too)."""
    import ipaddress

    try:
        return ipaddress.ip_address(host) == ipaddress.IPv6Address("::")
    except ValueError:
        return False


def on_both_families(lifespan: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    """``lifespan`` (an app's; None for none) that first has the uvicorn server starting it, when told to listen on
    ``::`` (every IPv6 address), listen on every IPv4 address too: asyncio's ``create_server``, which uvicorn listens
    with, makes a socket for ``::`` IPv6-only (it sets IPV6_V6ONLY whatever the system's default), so IPv4 clients
    were refused (found by the ninth review of 6 Dec 2026). Asked for the host ``""`` instead, asyncio listens on
    every address of each family this machine has, a socket each (0.0.0.0 and ::; one without IPv6 listens on IPv4
    only). uvicorn listens with its config's host once the lifespan's start-up has run."""
    from app.net_limits import before_start

    def both_families(config: Any) -> None:
        if _any_ipv6(config.host):
            config.host = ""

    return before_start(lifespan, both_families)


def build_services(settings: Settings, *, batch_size: int = 8):
    """Engine, session factory and AppServices for ``settings``; local mode when no accounts exist."""
    from app import auth
    from app.ui import AppServices
    from db.engine import make_engine, session_factory

    if not 1 <= batch_size <= 64:
        raise ServeError(f"--batch-size must be from 1 to 64, got {batch_size}")
    from app.alarms import Thresholds

    try:  # read on every dashboard load: a bad value is refused here, at the start, not on each load (found by review)
        Thresholds.from_env()
    except ValueError as exc:
        raise ServeError(f"{exc} (a threshold of the dashboard's reward-hacking alarms)") from exc
    from app import storage

    # 0700 when new, wherever the database is; no access for others when it exists (found by review)
    if tightened := storage.make_data_dir(settings.data_dir):
        print(tightened, flush=True)
    for leftover in storage.clean_export_partials(settings.data_dir):
        print(f"removed {leftover}, left by an export that was stopped", flush=True)
    # each statement of a page action bounded on PostgreSQL (db.engine.WEB_STATEMENT_TIMEOUT_MS); the exports the admin
    # page builds read through an engine of their own (app.export), without that bound
    engine = make_engine(settings.db_url, bound_statements=True)
    factory = session_factory(engine)
    local = not auth.users_exist(factory)
    if local and not auth.is_loopback(settings.host):
        engine.dispose()
        raise ServeError(
            f"no user accounts exist, so the app serves only on this computer (127.0.0.1), not on {settings.host}; "
            "add an admin with `python -m app users add NAME --role admin` first"
        )
    return engine, AppServices(factory=factory, settings=settings, local_mode=local, batch_size=batch_size)


def https_warning(services) -> str | None:
    """The start-up warning for accounts served to other computers (a --host that is not loopback) without
    SEIKO_PUBLIC_URL: the app then cannot know whether people reach it over HTTPS (a proxy in front ending TLS), so
    its cookies are Secure only where a browser's own request shows it (app.web_guard), and it sends no
    Strict-Transport-Security. None when there is nothing to say."""
    from app import auth

    settings = services.settings
    if services.local_mode or settings.public_url or auth.is_loopback(settings.host):
        return None
    return (f"warning: accounts are served on {settings.host} without SEIKO_PUBLIC_URL (--public-url), so the app cannot "
            "tell whether people reach it over HTTPS: behind an HTTPS proxy, set it to the address people open "
            "(https://...) so that every cookie is Secure and browsers are told to use HTTPS only; served over plain "
            "http, passwords and session cookies cross the network unencrypted")


def install_stop_handlers(stop: threading.Event) -> Callable[[], None]:
    """SIGINT and SIGTERM set ``stop``; returns a function that restores the previous handlers."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame) -> None:
        stop.set()

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def root_path_refusal(root_path: str) -> str:
    """Why the app is not served under ``root_path`` (GRADIO_ROOT_PATH), in one sentence. Found by the twelfth review
    (6 Dec 2026): Gradio reads GRADIO_ROOT_PATH itself and serves its page under it, but the app's own addresses are
    absolute (the banner's log-out form posts to /logout, log out redirects to /, exports download from
    /seiko/export/<id>), so behind a proxy that strips the prefix log out missed the app and the session stayed open."""
    return (f"GRADIO_ROOT_PATH is set ({root_path!r}), but this app must be served at the root of its address (its log "
            "out and export links are absolute): unset it, and give the app its own host name behind the proxy "
            "(SEIKO_PUBLIC_URL)")


def check_root_path(environ: Mapping[str, str] | None = None) -> None:
    """ServeError (``root_path_refusal``) when GRADIO_ROOT_PATH is set to anything but "" or "/". Called first by every
    command that serves the web app, before any work: it was refused only in ``launch``, after `demo` had migrated the
    database and started its worker, and a value of white space alone passed, which Gradio then put in front of every
    address of its page (both found by the thirteenth review, 6 Dec 2026)."""
    root_path = (os.environ if environ is None else environ).get("GRADIO_ROOT_PATH", "")
    if root_path not in ("", "/"):
        stripped = root_path.strip()  # shown as set where stripping it would show a value that is not refused
        raise ServeError(root_path_refusal(root_path if stripped in ("", "/") else stripped))


def root_path_refused(environ: Mapping[str, str] | None = None) -> bool:
    """``check_root_path`` for a measuring tool that serves the app (``app.tools.idle_cpu``, ``app.tools.login_flood``):
    True after saying why on stderr (``error: <root_path_refusal>``), else False. Called before the tool does any work
    (fourteenth review, 6 Dec 2026: they served the app under GRADIO_ROOT_PATH and measured an app the commands
    refuse to serve, or waited minutes for a page that was not at the root)."""
    try:
        check_root_path(environ)
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return True
    return False


def launch(services) -> object:
    """Start the web app in a background thread; returns the gr.Blocks (call ``.close()`` to stop it)."""
    from app import net_limits, web_guard
    from app.ui import build_demo, launch_kwargs

    check_root_path()  # again, for a caller that did not check at its start: Gradio reads it as the server starts
    host = services.settings.host
    if not resolves(host):  # not the port's fault: it was reported as a busy port (found by review)
        raise ServeError(f"the listen address {host!r} (--host) is neither an IP address nor a name this machine can "
                         "resolve")
    try:
        limits = net_limits.Limits.from_env()
    except net_limits.LimitsError as exc:
        raise ServeError(str(exc)) from exc
    demo = build_demo(services)
    web_guard.trust_proxies(services.settings)
    kwargs = launch_kwargs(services)
    # the connection limits go into the server as it starts, before it listens (seventh review of 5 Dec 2026: put in
    # after launch returned, they missed the connections of its first 0.4 s); install below finds them there
    app_kwargs = kwargs["app_kwargs"] = dict(kwargs.get("app_kwargs", {}))
    app_kwargs["lifespan"] = net_limits.before_listening(on_both_families(app_kwargs.get("lifespan")), limits,
                                                         trusted_proxies=services.settings.trusted_proxies)
    try:
        demo.launch(prevent_thread_lock=True, quiet=True, **kwargs)
    except OSError as exc:  # Gradio's "Cannot find empty port": another server (a second demo?) holds it
        said = str(exc).split(". ")[0]
        raise ServeError(f"could not listen on {kwargs.get('server_name')}:{kwargs.get('server_port')} ({said}); "
                         "stop what uses that port or give another with --port") from exc
    if web_guard.installed(demo.server_app) is None:  # fail closed: no Host/Origin checks, no sessions
        demo.close()
        raise ServeError("the app's origin and session guard did not start (app.web_guard); not serving without it")
    # a deadline for each request's head and caps on open connections (app.net_limits; found by the sixth review of
    # 5 Dec 2026: connections that never finished their headers were held without limit, before the guard sees them)
    if net_limits.install(demo, limits, trusted_proxies=services.settings.trusted_proxies) is None:
        demo.close()
        raise ServeError("the server's connection limits could not be set (app.net_limits); not serving without them")
    if services.local_mode:  # the address with its secret: only a browser that opens it may use the app
        print(f"SEIKO studio on {services.local_url(demo.local_url)} (local mode: no accounts, this computer only; "
              "open this address, token included); Ctrl-C stops it", flush=True)
    else:
        print(f"SEIKO studio on {demo.local_url} (sign-in with accounts); Ctrl-C stops it", flush=True)
        if warning := https_warning(services):
            print(warning, file=sys.stderr, flush=True)
    return demo


def register_server(factory):
    """This server's row in the database's live processes (``db.presence.Presence``, started; ``close()`` it at exit),
    so that `db downgrade` refuses while it runs: a server left no mark before (tenth review). ServeError when the
    schema moved from this code's revision since it was checked (the row is registered in a transaction that checks it
    once more: a downgrade then cannot slip in between)."""
    from db.presence import Presence

    presence = Presence(factory, "server", migrate.head_revision())
    try:
        presence.start()
    except SchemaOutOfDate as exc:
        raise ServeError(str(exc)) from exc
    return presence


def main(args: argparse.Namespace) -> int:
    settings = Settings.from_args(args)
    try:
        check_root_path()  # before anything is read, written or started
        migrate.check_at_head(settings.db_url)
        check_model(settings.model)
        engine, services = build_services(settings, batch_size=args.batch_size)
    except (SchemaOutOfDate, ServeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        presence = register_server(services.factory)
    except ServeError as exc:
        engine.dispose()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    restore = install_stop_handlers(stop)
    demo = None
    try:
        try:
            demo = launch(services)
        except ServeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        while not stop.wait(0.5):
            pass
        print("stopping the web app", flush=True)
        return 0
    finally:
        if demo is not None:
            demo.close()
        restore()
        presence.close()
        engine.dispose()
