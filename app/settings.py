"""Runtime settings: one object read from the environment, overridden by command-line flags.

    SEIKO_DATA_DIR  images, adapters, exports and the default SQLite file    (default ./data)
    SEIKO_DB_URL    SQLAlchemy URL                                           (default sqlite:///<data_dir>/seiko.db)
    SEIKO_MODEL     base model directory                                     (default models/shapes-sd)
    SEIKO_HOST      address the web app listens on (:: for every IPv4 and IPv6 one)  (default 127.0.0.1)
    SEIKO_PORT      port the web app listens on                              (default 7860)
    SEIKO_PUBLIC_URL  the address people open, e.g. https://seiko.example.org: the one other origin
                      allowed to send signed-in requests                    (default none: same origin only)
    SEIKO_SESSION_IDLE_MINUTES  a sign-in ends after this long without a request       (default 480)
    SEIKO_SESSION_MAX_HOURS     a sign-in ends this long after it began, active or not  (default 168)
    SEIKO_LOCAL_TOKEN  local mode (no accounts): the secret in the address the app prints, at least 16 of
                       A-Z a-z 0-9 - _ (default: a new random one at every start)
    SEIKO_TRUSTED_PROXIES  addresses (or networks) whose X-Forwarded-For / -Proto headers are believed, comma-separated,
                           or "none"; behind a reverse proxy its address (127.0.0.1 for one on this machine), which
                           must overwrite X-Forwarded-For                          (default none)
    SEIKO_ALLOWED_HOSTS  with accounts: more host names the app answers to, comma-separated, e.g.
                         seiko.lab.example,labserver (always answered: IP addresses, localhost, this machine's
                         name, the public URL's and --host's names)                (default none)

Precedence: command-line flag > environment variable > default. SEIKO_HOST and SEIKO_PORT are read only by the
commands that serve (serve, demo); the others neither use nor check them.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_VARS = {
    "data_dir": "SEIKO_DATA_DIR",
    "db_url": "SEIKO_DB_URL",
    "model": "SEIKO_MODEL",
    "host": "SEIKO_HOST",
    "port": "SEIKO_PORT",
    "public_url": "SEIKO_PUBLIC_URL",
    "session_idle_minutes": "SEIKO_SESSION_IDLE_MINUTES",
    "session_max_hours": "SEIKO_SESSION_MAX_HOURS",
    "local_token": "SEIKO_LOCAL_TOKEN",
    "allowed_hosts": "SEIKO_ALLOWED_HOSTS",
    "trusted_proxies": "SEIKO_TRUSTED_PROXIES",
}
# whose X-Forwarded-For/-Proto are believed: nobody unless told. The default was this machine (uvicorn's own), which let
# any local user, or a client through a proxy that passes the header on, pose as many addresses to the sign-in
# throttle or as an address that signed in to an account (found by review); a proxy is named in SEIKO_TRUSTED_PROXIES
DEFAULT_TRUSTED_PROXIES: tuple[str, ...] = ()
DEFAULT_DATA_DIR = "data"
DEFAULT_MODEL = "models/shapes-sd"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_SESSION_IDLE_MINUTES = 480.0  # a working day
DEFAULT_SESSION_MAX_HOURS = 168.0  # a week


class SettingsError(ValueError):
    """A setting (an environment variable or a command-line option) has a value the app cannot use; one sentence."""


def _port(value: Any) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError) as e:
        raise SettingsError(f"the port must be a whole number from 1 to 65535, got {value!r}") from e
    if not 1 <= port <= 65535:
        raise SettingsError(f"the port must be a whole number from 1 to 65535, got {port}")
    return port


def _port_argument(value: str) -> int:
    """``--port``'s type: argparse shows a ValueError as "invalid _port value: '-1'", an ArgumentTypeError as its
    message (found by review)."""
    try:
        return _port(value)
    except SettingsError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _duration(name: str, value: Any, unit_s: float) -> float:
    """A length of time in units of ``unit_s`` seconds, from one second to ten years: a sign-in limit of 1e-300 hours
    (every sign-in over at once) or 1e300 (past what a date can hold) was taken as given (found by review)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not 1.0 <= number * unit_s <= 3653 * 86400:
        raise SettingsError(f"{name} must be a number from one second to ten years, got {value!r}")
    return number


LOCAL_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,256}")
HOST_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


def _comma_items(value: Any) -> list[str]:
    """A comma-separated setting (or a list of them, from code) as its stripped, non-empty items."""
    items = value if isinstance(value, list | tuple) else ("" if value is None else str(value)).split(",")
    return [text for text in (str(item).strip() for item in items) if text]


def _proxies(value: Any) -> tuple[str, ...]:
    """SEIKO_TRUSTED_PROXIES as addresses and networks; "none" (or nothing listed) trusts no forwarding header."""
    import ipaddress

    items = _comma_items(value)
    out = []
    for item in [] if [i.lower() for i in items] == ["none"] else items:
        try:
            network = ipaddress.ip_network(item, strict=False) if "/" in item else None
            out.append(str(network) if network is not None else str(ipaddress.ip_address(item)))
        except ValueError as e:
            raise SettingsError(f"{ENV_VARS['trusted_proxies']} must be IP addresses or networks separated by commas, "
                                f"or none; {item[:100]!r} is neither") from e
    _check_proxy_coverage(out)
    return tuple(dict.fromkeys(out))


def _check_proxy_coverage(items: list[str]) -> None:
    """Refuse trusted proxies that cover every address (any client could then say who it is in X-Forwarded-For), as
    one entry or together ('0.0.0.0/1,128.0.0.0/1': found by review), or a network wider than a /8 (IPv4) or /7 (IPv6,
    as wide as its private fc00::/7), public IPv6 addresses wider than a /32 (an internet provider's block), or every
    IPv4 address as IPv6 sees it (::ffff:0:0/96)."""
    import ipaddress

    networks = [ipaddress.ip_network(item) for item in items]
    mapped = ipaddress.ip_network("::ffff:0:0/96")
    for version, widest in ((4, 8), (6, 7)):
        for net in ipaddress.collapse_addresses(n for n in networks if n.version == version):
            if net.prefixlen == 0:
                raise SettingsError(f"{ENV_VARS['trusted_proxies']} covers {net}, every address: any client could then "
                                    "set its own address in X-Forwarded-For; name the proxy's address or network")
            if net.prefixlen < widest or (version == 6 and net.subnet_of(mapped) and net.prefixlen < 96 + 8):
                raise SettingsError(f"{ENV_VARS['trusted_proxies']} covers {net}, wider than a /8 (IPv4) or /7 (IPv6): "
                                    "name the proxy's address or network")
            if version == 6 and net.prefixlen < 32 and not any(net.subnet_of(ipaddress.ip_network(local))
                                                               for local in ("fc00::/7", "fe80::/10")):
                raise SettingsError(f"{ENV_VARS['trusted_proxies']} covers {net}, public IPv6 addresses wider than a /32: "
                                    "name the proxy's address or network")
            if version == 6 and net.supernet_of(mapped):
                raise SettingsError(f"{ENV_VARS['trusted_proxies']} covers {net}, every IPv4 address as IPv6 sees it: "
                                    "name the proxy's address or network")


def _host_names(value: Any) -> tuple[str, ...]:
    """SEIKO_ALLOWED_HOSTS as lower-case names: comma-separated DNS names, no ports, no wildcards."""
    names = []
    for item in _comma_items(value):
        name = item.lower().rstrip(".")
        if not HOST_NAME.fullmatch(name):
            raise SettingsError(f"{ENV_VARS['allowed_hosts']} must be host names separated by commas (no ports, "
                                f"schemes or wildcards), got {item[:100]!r}")
        names.append(name)
    return tuple(dict.fromkeys(names))


def _local_token(value: Any) -> str | None:
    """Local mode's secret as given, or None; the refusal never repeats the value (it is a secret)."""
    if value is None:
        return None
    if not isinstance(value, str) or not LOCAL_TOKEN.fullmatch(value):
        length = len(value) if isinstance(value, str) else 0
        raise SettingsError(f"{ENV_VARS['local_token']} must be 16 to 256 of the characters A-Z a-z 0-9 - _ "
                         f"(the value given has {length} characters)")
    return value


def public_origin(value: Any) -> str | None:
    """``value`` as an origin (scheme://host[:port], lower case, no default port), or None when empty."""
    from urllib.parse import urlsplit

    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as e:
        raise SettingsError(f"the public URL {_masked(text)!r} is not a URL like https://seiko.example.org ({e})") from e
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query \
            or parts.fragment or parts.username or parts.password:
        raise SettingsError(f"the public URL must look like https://seiko.example.org (scheme and host, no path, no "
                            f"user or password), got {_masked(text)!r}")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def _blank(value: Any) -> bool:
    return not isinstance(value, str | Path) or not str(value).strip()


def _data_dir(value: Any) -> Path:
    """The data directory, absolute; refused when blank (it silently meant the current directory), when the home
    directory of ``~user`` is unknown, or when it exists and is not a directory."""
    if _blank(value):
        raise SettingsError(f"the data directory must be a path, got {str(value)!r}")
    try:
        path = Path(value).expanduser().resolve()
    except RuntimeError as exc:  # "Could not determine home directory"
        raise SettingsError(f"the data directory {str(value)!r} names a home directory this machine does not know") from exc
    if path.exists() and not path.is_dir():
        raise SettingsError(f"the data directory {str(path)!r} exists and is not a directory")
    return path


def _db_url(value: Any, data_dir: Path) -> str:
    """The database URL: by default a SQLite file in the data directory, written with SQLAlchemy's URL so that a
    path holding ``?``, ``#`` or ``%`` names that file (an f-string put the database elsewhere, without a word).
    A given URL must be SQLite with a file, or PostgreSQL (``postgresql://`` is read with the psycopg driver that is
    installed)."""
    from sqlalchemy.engine import URL, make_url
    from sqlalchemy.exc import ArgumentError

    if value is None:
        return URL.create("sqlite", database=str(data_dir / "seiko.db")).render_as_string(hide_password=False)
    text = str(value).strip()
    try:
        url = make_url(text)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        raise SettingsError(f"the database URL {_masked(text)!r} is not a URL; give sqlite:///path/to/seiko.db or "
                            "postgresql+psycopg://user@host/dbname") from exc
    shown = shown_url(url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or url.query.get("mode") == "memory" or database.startswith("file::memory:"):
            raise SettingsError(f"the database URL {shown!r} names no file; give sqlite:///path/to/seiko.db")
        if not database.startswith("file:"):
            # absolute, ~ expanded, as the data directory is: sqlite:///~/x.db made a directory named '~' in the
            # current directory, and a relative file moved with it (found by review)
            url = url.set(database=str(Path(database).expanduser().resolve()))
    elif backend == "postgresql":
        if url.drivername in ("postgresql", "postgresql+psycopg2"):
            url = url.set(drivername="postgresql+psycopg")  # the driver the project installs
    else:
        raise SettingsError(f"the database URL {shown!r} is for {backend}; SQLite and PostgreSQL are supported")
    _check_usable(url, shown)
    return url.render_as_string(hide_password=False)


def _check_usable(url, shown: str) -> None:
    """Build the URL's engine (its driver, its connection arguments) and, for PostgreSQL, check its options with
    psycopg, without connecting: a driver that is not installed, a query value of the wrong kind or an option libpq
    does not know passed the settings check and failed later as a traceback (found by review)."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import ArgumentError

    try:
        create_engine(url).dispose()
        if url.get_backend_name() == "postgresql" and url.query:
            import psycopg.conninfo

            psycopg.conninfo.make_conninfo("", **{k: v if isinstance(v, str) else ",".join(v) for k, v in url.query.items()})
    except (ArgumentError, ValueError, TypeError, ImportError) as exc:
        raise SettingsError(f"the database URL {shown!r} cannot be used ({exc}); give sqlite:///path/to/seiko.db or "
                            "postgresql+psycopg://user@host/dbname") from exc
    except Exception as exc:  # psycopg.ProgrammingError: an unknown connection option
        if type(exc).__module__.startswith("psycopg"):
            raise SettingsError(f"the database URL {shown!r} cannot be used ({str(exc).splitlines()[0]}); give "
                                "postgresql+psycopg://user@host/dbname with options libpq knows") from exc
        raise


def shown_url(url) -> str:
    """A database URL (text or SQLAlchemy URL) for a message or a log: its password hidden, whether it is given as
    user:password@ or as a ``password`` query parameter (SQLAlchemy hides only the first; found by review)."""
    from sqlalchemy.engine import make_url

    url = make_url(url) if isinstance(url, str) else url
    secret = {key: "***" for key in url.query if "password" in key.lower()}  # password, sslpassword, ...
    if secret:
        url = url.update_query_dict(secret)
    return url.render_as_string(hide_password=True)


def _masked(text: str) -> str:
    """Text that is not a URL, for messages: everything before its last @ (after a ``scheme://`` prefix) replaced by
    ***, but the user name of a well-formed ``scheme://user:password@``, and any ``password=`` value replaced by ***.
    Only ``scheme:`` followed by ``user:`` was masked before, so 'bob:pw@host/db' or 'postgresql//bob:pw@host/db'
    was repeated with its password (found by review)."""
    import re

    prefix = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", text)
    start = prefix.end() if prefix else 0
    at = text.rfind("@")
    if at >= start:
        user, colon, _ = text[start:at].partition(":")
        kept = f"{user}:" if prefix and colon and user and "/" not in user else ""
        text = f"{text[:start]}{kept}***{text[at:]}"
    return re.sub(r"(password=)[^&#]*", r"\1***", text, flags=re.IGNORECASE)


def _model(value: Any) -> str:
    """The base model: a local directory is made absolute, so that a worker or server started from another
    directory finds the one stored with an experiment (a relative path there was read as a hub id); the default is
    looked up beside the app when the current directory does not have it. Anything else (a hub id) as given."""
    if _blank(value):
        raise SettingsError(f"the model must be a diffusers model directory or a hub id, got {str(value)!r}")
    text = str(value).strip()
    try:
        path = Path(text).expanduser()
    except RuntimeError as exc:
        raise SettingsError(f"the model {text!r} names a home directory this machine does not know") from exc
    if not path.exists() and text == DEFAULT_MODEL:
        path = Path(__file__).resolve().parents[1] / DEFAULT_MODEL
    return str(path.resolve()) if path.exists() else text


def _host(value: Any) -> str:
    """The listen address (an IP address or a host name; ``app.cli_serve`` says when a name does not resolve). An
    IPv6 address may come in brackets, as in a URL (``[::1]``, as people type it): they are taken off. Before (ninth
    review of 6 Dec 2026) ``--host [::1]`` was refused as "neither an IP address nor a name this machine can
    resolve"."""
    text = str(value).strip()
    if not text or any(c.isspace() for c in text):
        raise SettingsError(f"the listen address (--host) must be an IP address or a host name, got {text!r}")
    if text.startswith("[") or text.endswith("]"):
        inner = text[1:-1] if text.startswith("[") and text.endswith("]") else ""
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise SettingsError(f"the listen address (--host) {text!r} must be an IPv6 address in brackets, such as "
                                "[::1], or an address or host name without brackets") from None
        return inner
    return text


@dataclass(frozen=True)
class Settings:
    data_dir: Path  # absolute, so a change of working directory cannot move the data
    db_url: str
    model: str  # base model path (or id)
    host: str = DEFAULT_HOST  # host and port: read only for a command that serves (``from_env``'s ``server``)
    port: int = DEFAULT_PORT
    public_url: str | None = None  # an origin, as public_origin() writes it
    session_idle_minutes: float = DEFAULT_SESSION_IDLE_MINUTES
    session_max_hours: float = DEFAULT_SESSION_MAX_HOURS
    local_token: str | None = None  # local mode's secret; None: a new random one at every start
    allowed_hosts: tuple[str, ...] = ()  # with accounts: host names answered besides the built-in ones (web_guard)
    trusted_proxies: tuple[str, ...] = DEFAULT_TRUSTED_PROXIES  # whose forwarding headers are believed; () for none

    @classmethod
    def from_env(cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None, *,
                 server: bool = True) -> Settings:
        """Settings from ``environ`` (default ``os.environ``); non-None ``overrides`` win. ``server=False``: for a
        command that serves nothing, the listen address and port are not read (they keep their defaults), so a bad
        SEIKO_HOST or SEIKO_PORT does not refuse, say, ``db current``, which does not use them (found by review)."""
        environ = os.environ if environ is None else environ
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        unknown = set(overrides) - set(ENV_VARS)
        if unknown:
            raise SettingsError(f"unknown setting(s) {sorted(unknown)}; choose from {sorted(ENV_VARS)}")

        def pick(field: str, default: Any) -> Any:
            if field in overrides:
                return overrides[field]
            value = environ.get(ENV_VARS[field], "")
            return value if value != "" else default

        data_dir = _data_dir(pick("data_dir", DEFAULT_DATA_DIR))
        return cls(
            data_dir=data_dir,
            db_url=_db_url(pick("db_url", None), data_dir),
            model=_model(pick("model", DEFAULT_MODEL)),
            host=_host(pick("host", DEFAULT_HOST)) if server else DEFAULT_HOST,
            port=_port(pick("port", DEFAULT_PORT)) if server else DEFAULT_PORT,
            public_url=public_origin(pick("public_url", None)),
            session_idle_minutes=_duration("the session idle limit (minutes)",
                                           pick("session_idle_minutes", DEFAULT_SESSION_IDLE_MINUTES), 60),
            session_max_hours=_duration("the session limit (hours)", pick("session_max_hours", DEFAULT_SESSION_MAX_HOURS),
                                        3600),
            local_token=_local_token(pick("local_token", None)),
            allowed_hosts=_host_names(pick("allowed_hosts", ())),
            trusted_proxies=_proxies(pick("trusted_proxies", DEFAULT_TRUSTED_PROXIES)),
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from the environment, overridden by the flags ``add_arguments`` defined. The listen address and
        port are read only for a command that serves: one whose parser ``add_arguments`` gave --port
        (``server=True``)."""
        return cls.from_env({field: getattr(args, field, None) for field in ENV_VARS}, environ,
                            server=hasattr(args, "port"))


def add_arguments(parser: argparse.ArgumentParser, *, server: bool = False, model: bool = True) -> None:
    """Add --data-dir, --db-url, --model (and with ``server`` --host, --port) to ``parser``; no --model with
    ``model=False`` (the worker loads each experiment's own model: a --model it took was silently ignored)."""
    group = parser.add_argument_group("settings (each overrides its environment variable)")
    group.add_argument("--data-dir", help=f"data directory [${ENV_VARS['data_dir']}, default ./{DEFAULT_DATA_DIR}]")
    group.add_argument("--db-url", help=f"SQLAlchemy database URL [${ENV_VARS['db_url']}, default sqlite:///<data-dir>/seiko.db]")
    if model:
        group.add_argument("--model", help=f"base model of new experiments [${ENV_VARS['model']}, default {DEFAULT_MODEL}]")
    if server:
        group.add_argument("--host", help="listen address: an IP address (an IPv6 one with or without brackets, ::1 or "
                           "[::1]) or a host name; :: listens on every IPv4 and IPv6 address of this machine, "
                           f"0.0.0.0 on every IPv4 one [${ENV_VARS['host']}, default {DEFAULT_HOST}]")
        group.add_argument("--port", type=_port_argument, help=f"listen port [${ENV_VARS['port']}, default {DEFAULT_PORT}]")
        group.add_argument("--trusted-proxies", help="addresses whose X-Forwarded-For/-Proto are believed, comma-separated, "
                           f"or none [${ENV_VARS['trusted_proxies']}, default none; 127.0.0.1 for a proxy on this machine]")
        group.add_argument("--allowed-hosts", help="with accounts: more host names the app answers to, comma-separated "
                           f"[${ENV_VARS['allowed_hosts']}, default none: IP addresses, localhost and this machine's name]")
        group.add_argument("--public-url", help=f"the address people open, e.g. https://seiko.example.org; the one other "
                           f"origin allowed to send signed-in requests [${ENV_VARS['public_url']}, default none]")
