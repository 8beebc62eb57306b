"""One connection to NATS: connecting (fail fast at first, then reconnect forever), the
connection callbacks, background tasks, and the errors worth retrying.

Everything else in this package works through a `Connection`: the publisher writes with it, the
reader subscribes on it, the ports call JetStream's API through `conn.js`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.util
import re
import ssl
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.nuid import NUID

from core.errors import Unavailable
from services.logging import Throttle
from services.settings import NatsSettings, SettingsError, load_settings

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from services.nats.reader import Reader

__all__ = [
    "MIN_SERVER_VERSION",
    "RETRYABLE",
    "Connection",
    "PermissionDenied",
    "describe",
    "redact_url",
    "security_options",
    "server_version_ok",
    "unavailable",
]

log = structlog.get_logger("cyclonetix.nats")

_T = TypeVar("_T")

# A run's conditional appends name every event type's subject of the run at once
# (Nats-Expected-Last-Subject-Sequence-Subject with a wildcard: services/nats/events.py), which
# nats-server understands from 2.11; an older one would ignore the header and check only the
# published event type's subject, so it is refused at connect.
MIN_SERVER_VERSION: Final = (2, 11)


def server_version_ok(version: str) -> bool:
    """Whether a server reporting `version` (its INFO's, e.g. `2.15.1`) is recent enough."""
    match = re.match(r"v?(\d+)\.(\d+)", version)
    return match is not None and (int(match[1]), int(match[2])) >= MIN_SERVER_VERSION


class PermissionDenied(Exception):
    """The server refused this user a publish (its account's permissions): the subject."""


# Worth retrying with the same Nats-Msg-Id: the server may be restarting, electing a leader,
# or may have stored the message and lost the ack.
RETRYABLE: tuple[type[BaseException], ...] = (
    TimeoutError,  # includes nats.errors.TimeoutError and asyncio.TimeoutError
    nats.js.errors.NoStreamResponseError,  # no stream yet (e.g. store wiped, not re-provisioned)
    nats.js.errors.ServiceUnavailableError,  # JetStream not ready (503)
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,  # disconnected and the reconnect buffer is full
    nats.errors.ConnectionReconnectingError,
)


def describe(exc: BaseException) -> str:
    """An exception as a short phrase for one-line messages."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if (
        isinstance(exc, nats.errors.AuthorizationError)
        or "authorization violation" in str(exc).lower()
    ):
        return "authentication failed (the server refused these credentials)"
    if "authentication timeout" in str(exc).lower():
        return "authentication failed (no credentials the server accepts were sent in time)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message or 'verification failed'})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or exc.strerror or type(exc).__name__})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc).removeprefix("nats: ").strip()
    if not text and isinstance(exc, TimeoutError):
        return "timed out"
    return text or type(exc).__name__


def _refusal(exc: BaseException) -> bool:
    """Whether `exc` is the server refusing us (credentials or TLS), not a lost connection."""
    return describe(exc).startswith(("authentication failed", "TLS "))


def redact_url(url: str) -> str:
    """A server URL (or several, comma-separated) with any password in it masked."""
    shown = []
    for part in url.split(","):
        try:
            parts = urlsplit(part.strip() if "://" in part else f"nats://{part.strip()}")
        except ValueError:
            shown.append(part)
            continue
        if parts.password is not None or (parts.username and "@" in parts.netloc):
            user = parts.username or ""
            host = parts.netloc.rsplit("@", 1)[1]
            # `nats://token@host`: the only name is the token itself.
            secret = "***" if parts.password is None else f"{user}:***"
            parts = parts._replace(netloc=f"{secret}@{host}")
        shown.append(urlunsplit(parts))
    return ",".join(shown)


def _read_secret(path: str, what: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise SettingsError(f"nats.{what}: cannot read {path}: {reason.lower()}") from None
    if not text:
        raise SettingsError(f"nats.{what}: {path} is empty")
    return text


def _check_file(path: str, what: str) -> str:
    if not Path(path).is_file():
        raise SettingsError(f"nats.{what}: no such file: {path}")
    return path


def security_options(settings: NatsSettings) -> dict[str, Any]:
    """nats-py `connect` options for the security settings (credentials and TLS).

    Files are read now (a rotated password is picked up on the next start); a missing or
    unreadable one is SettingsError, one line. Secrets never appear in a message.
    """
    opts: dict[str, Any] = {}
    if settings.user:
        opts["user"] = settings.user
        if settings.password is not None:
            opts["password"] = settings.password
        elif settings.password_file is not None:
            opts["password"] = _read_secret(settings.password_file, "password_file")
    if settings.token is not None:
        opts["token"] = settings.token
    elif settings.token_file is not None:
        opts["token"] = _read_secret(settings.token_file, "token_file")
    if settings.nkey_seed_file is not None or settings.creds_file is not None:
        if importlib.util.find_spec("nkeys") is None:  # nats-py signs with it
            raise SettingsError(
                "nats.nkey_seed_file / nats.creds_file need the nkeys package: "
                "pip install 'nats-py[nkeys]'"
            )
        if settings.nkey_seed_file is not None:
            opts["nkeys_seed"] = _check_file(settings.nkey_seed_file, "nkey_seed_file")
        if settings.creds_file is not None:
            opts["user_credentials"] = _check_file(settings.creds_file, "creds_file")
    if settings.uses_tls:
        ca = settings.tls_ca_file
        try:
            context = ssl.create_default_context(
                cafile=_check_file(ca, "tls_ca_file") if ca is not None else None
            )
        except ssl.SSLError as exc:
            raise SettingsError(
                f"nats.tls_ca_file: {ca}: not a CA certificate ({exc.reason})"
            ) from None
        if settings.tls_cert_file is not None and settings.tls_key_file is not None:
            cert = _check_file(settings.tls_cert_file, "tls_cert_file")
            key = _check_file(settings.tls_key_file, "tls_key_file")
            try:
                context.load_cert_chain(cert, key)
            except ssl.SSLError as exc:
                raise SettingsError(
                    f"nats.tls_cert_file: {cert} with {key}: not a certificate and its key "
                    f"({exc.reason})"
                ) from None
        opts["tls"] = context
        if settings.tls_hostname:
            opts["tls_hostname"] = settings.tls_hostname
    return opts


@contextlib.contextmanager
def unavailable(what: str) -> Iterator[None]:
    """Turn a NATS failure (timeout, no responders, closed connection) into `Unavailable`."""
    try:
        yield
    except (TimeoutError, nats.errors.Error) as exc:
        raise Unavailable(f"NATS did not answer {what}: {describe(exc)}") from exc


class Connection:
    """A nats-py client with Cyclonetix's connection policy and bookkeeping.

    Create with `await Connection.open(url, name=...)`. `on_reconnect` callbacks run (plain
    functions, inside nats-py's reconnect task: spawn anything that waits) after every
    reconnect. Pull subscriptions handed out are remembered in `subs` and readers in
    `readers`, so closing stops them before draining (see `close`).
    """

    def __init__(self, *, name: str, publish_timeout: float, publish_deadline: float) -> None:
        self.name = name
        self.publish_timeout = publish_timeout  # one attempt
        self.publish_deadline = publish_deadline  # all retries of one publish
        self.nc = NatsClient()
        self.js: JetStreamContext = self.nc.jetstream(timeout=publish_timeout)
        self.url = ""  # as given (may hold credentials: show `shown_url`)
        self.shown_url = ""  # `url` with any password masked: for messages and logs
        self.closing = False
        self.throttle = Throttle(30.0)
        self.subs: set[Any] = set()  # pull and core subscriptions to unsubscribe on close
        self.readers: set[Reader] = set()  # live push readers (tail, history, logs)
        self.on_reconnect: list[Callable[[], None]] = []
        loop = asyncio.get_running_loop()
        self.reconnected: asyncio.Future[None] = loop.create_future()
        self.disconnected: asyncio.Future[None] = loop.create_future()
        self._background: set[asyncio.Task[Any]] = set()
        self._nuid = NUID()
        self._connecting = True
        self._connect_error: BaseException | None = None
        # Subjects a caller waits to hear this user may not publish to (`unless_denied`).
        self._denial_waiters: dict[str, list[asyncio.Future[None]]] = {}
        # Publishes the server refused that no `unless_denied` expected (the newest few):
        # logged as they come; a role whose account misses a permission shows up here.
        self.refused: collections.deque[str] = collections.deque(maxlen=100)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        name: str,
        connect_timeout: float,
        publish_timeout: float,
        publish_deadline: float,
        security: NatsSettings | None = None,
    ) -> Connection:
        """Connect (one quick retry), then switch to reconnecting forever.

        Raises Unavailable within about `connect_timeout` when NATS cannot be reached or
        refuses the credentials or the TLS handshake (one line naming the server). `url` may
        list several servers separated by commas (a cluster). `security` holds the
        credentials and TLS settings (`nats.*`); None: this process's settings
        (`load_settings`, so every role gets them without passing them); SettingsError if a
        file they name cannot be read.
        """
        if security is None:
            security = load_settings().nats
        extra = security_options(security)
        conn = cls(name=name, publish_timeout=publish_timeout, publish_deadline=publish_deadline)
        servers = [u.strip() for u in url.split(",") if u.strip()]
        conn.url = ",".join(s if "://" in s else f"nats://{s}" for s in servers)
        conn.shown_url = redact_url(conn.url)
        try:
            await asyncio.wait_for(
                conn.nc.connect(
                    servers=servers,
                    name=name,
                    connect_timeout=connect_timeout,  # type: ignore[arg-type]  # typed int, takes float
                    # First connect: one retry only, so a wrong URL fails fast. Switched to
                    # "forever" below once connected.
                    allow_reconnect=True,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0.25,  # type: ignore[arg-type]
                    ping_interval=20,
                    max_outstanding_pings=3,
                    drain_timeout=5,
                    error_cb=conn._on_error,
                    disconnected_cb=conn._on_disconnected,
                    reconnected_cb=conn._on_reconnected,
                    closed_cb=conn._on_closed,
                    **extra,
                ),
                timeout=connect_timeout + 0.5,
            )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            reason = conn._connect_error or exc
            if _refusal(exc) and not _refusal(reason):
                # The server's refusal (credentials, TLS) says more than the EOF after it.
                reason = exc
            if isinstance(reason, TimeoutError):
                reason = TimeoutError(f"no answer within {connect_timeout:g}s")
            with contextlib.suppress(Exception):
                await conn.nc.close()
            raise Unavailable(
                f"cannot reach NATS at {conn.shown_url}: {describe(reason)}"
            ) from None
        if security.tls_required and not conn._is_tls():
            await conn.nc.close()
            raise Unavailable(
                f"cannot reach NATS at {conn.shown_url}: the server does not offer TLS "
                "and nats.tls_required is set"
            )
        version = str(conn.nc._server_info.get("version", "")) or "(no version)"  # no accessor
        if not server_version_ok(version):
            await conn.nc.close()
            need = ".".join(map(str, MIN_SERVER_VERSION))
            raise Unavailable(
                f"cannot use NATS at {conn.shown_url}: nats-server {version} is too old "
                f"(Cyclonetix needs nats-server {need} or newer)"
            )
        conn._connecting = False
        # nats-py reads these options on every reconnect; there is no setter for them.
        conn.nc.options["max_reconnect_attempts"] = -1
        conn.nc.options["reconnect_time_wait"] = 0.5
        log.debug("nats.connected", url=conn.shown_url)
        return conn

    @property
    def closed(self) -> bool:
        return self.closing or self.nc.is_closed

    def _is_tls(self) -> bool:
        # nats-py upgrades to TLS exactly when the server's INFO says it requires it.
        info = self.nc._server_info  # no public accessor in nats-py 2.16
        return bool(info.get("tls_required"))

    def new_name(self) -> str:
        """A unique name (for ephemeral consumers)."""
        return self._nuid.next().decode()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A background task, cancelled when the connection closes."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def unsubscribe(self, sub: Any) -> None:
        """Stop a subscription handed out on this connection (never raises)."""
        self.subs.discard(sub)
        if not self.nc.is_closed:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def unless_denied(self, subject: str, call: Coroutine[Any, Any, _T]) -> _T:
        """Await `call`, a request to `subject`, or raise PermissionDenied as soon as the server
        says this user may not publish to `subject` (it never answers such a request: nats-py
        would wait out its timeout, and then it could not tell why)."""
        key = subject.lower()  # (the server's message spells it in lower case)
        loop = asyncio.get_running_loop()
        denied: asyncio.Future[None] = loop.create_future()
        self._denial_waiters.setdefault(key, []).append(denied)
        task = loop.create_task(call)
        try:
            waiting: set[asyncio.Future[Any]] = {task, denied}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                raise PermissionDenied(subject)
            return task.result()
        finally:
            if not task.done():  # cancelled ourselves
                task.cancel()
            waiters = self._denial_waiters.get(key, [])
            if denied in waiters:
                waiters.remove(denied)
            if not waiters:
                self._denial_waiters.pop(key, None)

    # -- callbacks ------------------------------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        text = str(exc).lower()
        if "permissions violation for publish to" in text:
            subject = text.rpartition(" to ")[2].strip().strip('"')
            waiters = self._denial_waiters.get(subject)
            if waiters:  # expected: the caller says what it means
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
                return
            self.refused.append(subject)
        if self._connecting:
            if self._connect_error is None or not _refusal(self._connect_error):
                self._connect_error = exc  # reported once, by open()
            return
        if isinstance(exc, nats.errors.SlowConsumerError):
            key = "slow_consumer"
        else:
            key = type(exc).__name__
        dropped = self.throttle.check(key)
        if dropped is not None:
            log.warning("nats.error", error=describe(exc), kind=key, suppressed=dropped)

    async def _on_disconnected(self) -> None:
        if not self.disconnected.done():
            self.disconnected.set_result(None)
        if not self.closing and not self._connecting:
            log.warning("nats.disconnected", url=self.shown_url)

    async def _on_reconnected(self) -> None:
        loop = asyncio.get_running_loop()
        self.reconnected.set_result(None)
        self.reconnected = loop.create_future()
        if self.disconnected.done():
            self.disconnected = loop.create_future()
        self.throttle.reset()
        url = self.nc.connected_url.geturl() if self.nc.connected_url else self.url
        log.info("nats.reconnected", url=redact_url(url))
        if not self.closing:
            for callback in self.on_reconnect:
                callback()

    async def _on_closed(self) -> None:
        if not self.closing and not self._connecting:
            log.warning("nats.closed", url=self.shown_url)

    # -- shutdown -------------------------------------------------------------------------------

    def begin_close(self) -> None:
        """No more background work: cancel it (the first step of closing)."""
        self.closing = True
        for task in list(self._background):
            task.cancel()

    async def close(self, grace: float) -> None:
        """Stop readers and subscriptions, drain, close. Never hangs."""
        self.begin_close()
        for reader in list(self.readers):
            await reader.close()
        # Pull/ordered subscriptions can hold messages nobody reads, which makes drain()
        # wait for its full timeout: unsubscribe them first.
        for sub in list(self.subs):
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self.subs.clear()
        nc = self.nc
        if nc.is_closed:
            return
        try:
            if nc.is_connected:
                await asyncio.wait_for(nc.drain(), grace)
        except Exception as exc:  # noqa: BLE001 - shutting down: report and close hard
            log.debug("nats.drain_failed", error=describe(exc))
        finally:
            if not nc.is_closed:
                if not nc.is_connected and nc.pending_data_size:
                    # nats-py's close() writes its reconnect buffer into the dead socket and
                    # stops half-way on the ConnectionResetError (subscriptions and the socket
                    # are left open). nats-py 2.16 has no public way to discard that buffer
                    # (`pending_size=0` only refuses publishes; SUB/PING still queue), and
                    # nothing in it can be sent now: clear it. (Pinned: nats-py < 2.17.)
                    nc._pending = []
                    nc._pending_data_size = 0
                await nc.close()
