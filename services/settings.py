"""Settings in one place: `cyclonetix.yaml`, then `CYCLONETIX_*` variables, then flags.

Precedence, lowest first: the defaults below < the settings file < the environment < a
command-line flag (`Settings.override`). The file is `./cyclonetix.yaml` if it exists, or the
path in `$CYCLONETIX_CONFIG` (which then must exist). Every setting:

| file key               | variable                     | flag               | default          |
|------------------------|------------------------------|--------------------|------------------|
| `nats.url`             | `CYCLONETIX_NATS_URL`        | `--nats-url`       | (none)           |
| `nats.stream_replicas` | `CYCLONETIX_STREAM_REPLICAS` |                    | 1                |
| `nats.events_max_age`  | `CYCLONETIX_EVENTS_MAX_AGE`  |                    | 0 (forever)      |
| `nats.user`            | `CYCLONETIX_NATS_USER`       |                    | (none)           |
| `nats.password`        | `CYCLONETIX_NATS_PASSWORD`   |                    | (none; secret)   |
| `nats.password_file`   | `CYCLONETIX_NATS_PASSWORD_FILE` |                 | (none)           |
| `nats.token`           | `CYCLONETIX_NATS_TOKEN`      |                    | (none; secret)   |
| `nats.token_file`      | `CYCLONETIX_NATS_TOKEN_FILE` |                    | (none)           |
| `nats.nkey_seed_file`  | `CYCLONETIX_NATS_NKEY_SEED_FILE` |                | (none)           |
| `nats.creds_file`      | `CYCLONETIX_NATS_CREDS_FILE` |                    | (none)           |
| `nats.tls_ca_file`     | `CYCLONETIX_NATS_TLS_CA_FILE` |                   | (system CAs)     |
| `nats.tls_cert_file`   | `CYCLONETIX_NATS_TLS_CERT_FILE` |                 | (none)           |
| `nats.tls_key_file`    | `CYCLONETIX_NATS_TLS_KEY_FILE` |                  | (none)           |
| `nats.tls_required`    | `CYCLONETIX_NATS_TLS_REQUIRED` |                  | false            |
| `nats.tls_hostname`    | `CYCLONETIX_NATS_TLS_HOSTNAME` |                  | (the URL's host) |
| `definitions`          | `CYCLONETIX_DEFINITIONS`     | `-d DIR`           | bundled examples |
| `data_dir`             | `CYCLONETIX_DATA_DIR`        | `--data-dir`       | `.cyclonetix`    |
| `log.format`           | `CYCLONETIX_LOG_FORMAT`      | `--log-format`     | `console`        |
| `log.level`            | `CYCLONETIX_LOG_LEVEL`       | `--log-level`      | `INFO`           |
| `shutdown_grace`       | `CYCLONETIX_SHUTDOWN_GRACE`  | `--shutdown-grace` | 30 (seconds)     |
| `notify.attempts`      | `CYCLONETIX_NOTIFY_ATTEMPTS` |                    | 5                |
| `notify.first_delay`   | `CYCLONETIX_NOTIFY_FIRST_DELAY` |                 | 10 (seconds)     |
| `notify.timeout`       | `CYCLONETIX_NOTIFY_TIMEOUT`  |                    | 10 (seconds)     |
| `notify.concurrency`   | `CYCLONETIX_NOTIFY_CONCURRENCY` |                 | 32               |
| `triggers.idempotency_window` | `CYCLONETIX_TRIGGER_IDEMPOTENCY_WINDOW` |   | 86400 (seconds)  |
| `triggers.max_message_bytes`  | `CYCLONETIX_TRIGGER_MAX_MESSAGE_BYTES`  |   | 65536            |
| `ui.login_max_failures_per_account` | `CYCLONETIX_UI_LOGIN_MAX_FAILURES_PER_ACCOUNT` | | 5 |
| `ui.login_max_failures_per_address` | `CYCLONETIX_UI_LOGIN_MAX_FAILURES_PER_ADDRESS` | | 20 |
| `ui.login_failure_window` | `CYCLONETIX_UI_LOGIN_FAILURE_WINDOW` |         | 900 (seconds)    |
| `ui.oidc.issuer`       | `CYCLONETIX_UI_OIDC_ISSUER`  |                    | (none: no OIDC)  |
| `ui.oidc.client_id`    | `CYCLONETIX_UI_OIDC_CLIENT_ID` |                  | (none)           |
| `ui.oidc.client_secret` | `CYCLONETIX_UI_OIDC_CLIENT_SECRET` |            | (none; secret)   |
| `ui.oidc.client_secret_file` | `CYCLONETIX_UI_OIDC_CLIENT_SECRET_FILE` |  | (none)           |
| `ui.oidc.redirect_url` | `CYCLONETIX_UI_OIDC_REDIRECT_URL` |               | (from the request) |
| `ui.oidc.name`, `.scopes`, `.username_claim`, `.roles_claim`, `.roles`, `.default_role` | | | |

(The last `ui.oidc` settings are read from the file only: see OidcSettings.)

Validation is strict, as for definitions: unknown keys in the file are errors, and a bad value
is one line naming where it came from (`cyclonetix.yaml: nats.url: expected a string, got a
list`, `$CYCLONETIX_STREAM_REPLICAS: expected 1, 3 or 5, got 'x'`), raised as `SettingsError`.
`nats.events_max_age` is how long `CX_EVENTS` keeps an event: seconds, or a number with a unit
(`2h`, `12h`, `30d`, `2w`); 0 keeps everything. It must be at least `MIN_EVENTS_MAX_AGE` (an
hour), and in practice longer than any run stays open: the orchestrator, `runs show` and
`replay` rebuild a run from its events, so a run whose first events aged out while it was still
open cannot be rebuilt (README, "Retention").

NATS security (every role connects with them: services.nats.connection): one way to
authenticate at most — `user` with `password` (or `password_file`), `token` (or `token_file`),
`nkey_seed_file`, or `creds_file` (a JWT `.creds` file). Secrets are best given as files or
variables; a `*_file` is read when connecting (one line, surrounding whitespace dropped). The
password and the token are never shown: `repr` of the settings masks them and no message or log
line includes them. `tls_ca_file` trusts that CA (instead of the system's), `tls_cert_file` and
`tls_key_file` present a client certificate (mutual TLS), `tls_required` refuses a server that
does not offer TLS, `tls_hostname` is the name the server's certificate must carry (default: the
URL's host). Any TLS setting, or a `tls://` URL, turns TLS on.

Other `CYCLONETIX_*` variables (the ones agents give task commands, say) are not settings and
are ignored here. Relative folders in the file are relative to the file's folder.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, TypeVar

import msgspec
import yaml

from core.errors import Invalid

CONFIG_FILE = "cyclonetix.yaml"
CONFIG_ENV = "CYCLONETIX_CONFIG"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MAX_GRACE_S = 86_400.0
MIN_EVENTS_MAX_AGE = 3600.0  # seconds; below it, an open run's first events could age out
MAX_EVENTS_MAX_AGE = 36_500 * 86_400.0  # 100 years: still fits JetStream's int64 nanoseconds
DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}

T = TypeVar("T")

SECRET_FIELDS = frozenset({"password", "token"})  # of NatsSettings: never shown
MASK = "***"


class SettingsError(Invalid):
    """A setting that cannot be used; the message is one line: `where: key: problem`."""


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every settings table: unknown keys are errors, values never mutate."""


class NatsSettings(_Section, frozen=True):
    url: str | None = None  # comma-separated URLs for a cluster
    stream_replicas: Literal[1, 3, 5] = 1  # copies of each stream and bucket when created
    # Seconds CX_EVENTS keeps an event (0: forever); durations are parsed by the loader.
    events_max_age: Annotated[float, msgspec.Meta(ge=0, le=MAX_EVENTS_MAX_AGE)] = 0.0
    # Authentication: at most one way (checked by the loader; see the module docstring).
    user: str | None = None
    password: str | None = None  # secret: masked by __repr__, never logged
    password_file: str | None = None
    token: str | None = None  # secret
    token_file: str | None = None
    nkey_seed_file: str | None = None
    creds_file: str | None = None
    # TLS
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_required: bool = False
    tls_hostname: str | None = None

    def __repr__(self) -> str:
        shown = []
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if name in SECRET_FIELDS and value is not None:
                value = MASK
            shown.append(f"{name}={value!r}")
        return f"NatsSettings({', '.join(shown)})"

    @property
    def uses_tls(self) -> bool:
        return self.tls_required or any(
            v is not None
            for v in (self.tls_ca_file, self.tls_cert_file, self.tls_key_file, self.tls_hostname)
        )


class LogSettings(_Section, frozen=True):
    format: Literal["console", "json"] = "console"
    level: str = "INFO"  # one of LOG_LEVELS, checked (case-insensitively) by the loader


class NotifySettings(_Section, frozen=True):
    """Completion webhooks (services/notifier.py): every attempt waits at most `timeout`
    seconds for an answer; a failed one is tried again after `first_delay`, then twice as long
    each time (capped at 10 minutes), `attempts` in all; at most `concurrency` requests at once
    per orchestrator."""

    attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5
    first_delay: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 10.0
    timeout: Annotated[float, msgspec.Meta(gt=0, le=600)] = 10.0
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 32


class TriggerSettings(_Section, frozen=True):
    """Subject triggers (services/triggers.py): the same `idempotency_key` for the same target
    within `idempotency_window` seconds returns the first run; a message larger than
    `max_message_bytes` is rejected."""

    idempotency_window: Annotated[float, msgspec.Meta(ge=1, le=MAX_EVENTS_MAX_AGE)] = 86_400.0
    max_message_bytes: Annotated[int, msgspec.Meta(ge=16, le=8 << 20)] = 64 * 1024


OIDC_ROLES = ("viewer", "operator", "admin")  # services.auth.ROLES (not imported: light)


class OidcSettings(_Section, frozen=True):
    """Logging in to the UI through an OpenID Connect provider (web/oidc.py); off without
    `issuer`. A user's role: the values of the ID token's `roles_claim` (a string or a list)
    looked up in `roles` (the highest found wins), else `default_role`, else no login."""

    issuer: str | None = None  # its discovery document: <issuer>/.well-known/openid-configuration
    name: str | None = None  # "Log in with <name>" (default: the issuer's host)
    client_id: str | None = None
    client_secret: str | None = None  # secret: masked by __repr__, never logged
    client_secret_file: str | None = None
    redirect_url: str | None = None  # default: <this UI's URL>/login/oidc/callback
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    username_claim: str = "preferred_username"  # falls back to `email`
    roles_claim: str | None = None  # e.g. groups
    # claim value -> viewer, operator or admin (checked by the loader: one clear line)
    roles: dict[str, str] = msgspec.field(default_factory=dict)
    default_role: str | None = None

    def __repr__(self) -> str:
        shown = []
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if name == "client_secret" and value is not None:
                value = MASK
            shown.append(f"{name}={value!r}")
        return f"OidcSettings({', '.join(shown)})"


class UiSettings(_Section, frozen=True):
    """The web process (web/auth.py): failed logins are limited per account and per client
    address, each counted over the last `login_failure_window` seconds, in each UI process on
    its own; `oidc` logs in through an identity provider."""

    login_max_failures_per_account: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 5
    login_max_failures_per_address: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 20
    login_failure_window: Annotated[float, msgspec.Meta(gt=0, le=MAX_GRACE_S)] = 900.0
    oidc: OidcSettings = OidcSettings()


class Settings(_Section, frozen=True):
    nats: NatsSettings = NatsSettings()
    ui: UiSettings = UiSettings()
    triggers: TriggerSettings = TriggerSettings()
    notify: NotifySettings = NotifySettings()
    definitions: str | None = None  # None: the bundled examples
    data_dir: str = ".cyclonetix"
    log: LogSettings = LogSettings()
    # On SIGTERM/SIGINT, how long a role may finish its work in flight (agents: running
    # commands; the orchestrator: deciding what the log holds and storing its decisions).
    shutdown_grace: Annotated[float, msgspec.Meta(ge=0, le=MAX_GRACE_S)] = 30.0

    @property
    def definitions_dir(self) -> Path | None:
        return Path(self.definitions) if self.definitions is not None else None

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    def override(self, **flags: Any) -> Settings:
        """These settings with command-line flags on top; a flag that is None was not given.

        Flags are named like their options (`nats_url`, `definitions`, `data_dir`,
        `log_format`, `log_level`, `shutdown_grace`) and checked like every other source
        (`--log-level: ...`).
        """
        raw = msgspec.to_builtins(self)
        for name, value in flags.items():
            field = _FLAGS.get(name)
            if field is None:
                raise TypeError(f"no setting for the flag {name!r}")
            if value is None:
                continue
            text = str(value) if isinstance(value, Path) else value
            _set(raw, field.path, _checked(field, text, "--" + name.replace("_", "-")))
        return _convert(raw, "flags")


class _Field(NamedTuple):
    path: tuple[str, ...]
    env: str
    flag: str | None  # the keyword of Settings.override, if a flag sets it
    expected: str  # what a bad value is told it should be
    from_text: Callable[[str], object]  # an environment variable's text -> the value to check


def _as_int(text: str) -> object:
    try:
        return int(text.strip())
    except ValueError:
        return text


def _as_bool(text: str) -> object:
    word = text.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    return text


def _as_float(text: str) -> object:
    try:
        return float(text.strip())
    except ValueError:
        return text


_BASE_FIELDS = (
    _Field(("nats", "url"), "CYCLONETIX_NATS_URL", "nats_url", "a string", str),
    _Field(("nats", "stream_replicas"), "CYCLONETIX_STREAM_REPLICAS", None, "1, 3 or 5", _as_int),
    _Field(
        ("nats", "events_max_age"),
        "CYCLONETIX_EVENTS_MAX_AGE",
        None,
        "0 (keep forever) or a duration from 1h to 36500d, like 12h, 30d or 86400 (seconds)",
        str,
    ),
    _Field(("nats", "user"), "CYCLONETIX_NATS_USER", None, "a user name", str),
    _Field(("nats", "password"), "CYCLONETIX_NATS_PASSWORD", None, "a password", str),
    _Field(("nats", "password_file"), "CYCLONETIX_NATS_PASSWORD_FILE", None, "a file path", str),
    _Field(("nats", "token"), "CYCLONETIX_NATS_TOKEN", None, "a token", str),
    _Field(("nats", "token_file"), "CYCLONETIX_NATS_TOKEN_FILE", None, "a file path", str),
    _Field(("nats", "nkey_seed_file"), "CYCLONETIX_NATS_NKEY_SEED_FILE", None, "a file path", str),
    _Field(("nats", "creds_file"), "CYCLONETIX_NATS_CREDS_FILE", None, "a file path", str),
    _Field(("nats", "tls_ca_file"), "CYCLONETIX_NATS_TLS_CA_FILE", None, "a file path", str),
    _Field(("nats", "tls_cert_file"), "CYCLONETIX_NATS_TLS_CERT_FILE", None, "a file path", str),
    _Field(("nats", "tls_key_file"), "CYCLONETIX_NATS_TLS_KEY_FILE", None, "a file path", str),
    _Field(
        ("nats", "tls_required"), "CYCLONETIX_NATS_TLS_REQUIRED", None, "true or false", _as_bool
    ),
    _Field(("nats", "tls_hostname"), "CYCLONETIX_NATS_TLS_HOSTNAME", None, "a host name", str),
    _Field(("definitions",), "CYCLONETIX_DEFINITIONS", "definitions", "a folder path", str),
    _Field(("data_dir",), "CYCLONETIX_DATA_DIR", "data_dir", "a folder path", str),
    _Field(("log", "format"), "CYCLONETIX_LOG_FORMAT", "log_format", "console or json", str),
    _Field(
        ("log", "level"),
        "CYCLONETIX_LOG_LEVEL",
        "log_level",
        ", ".join(LOG_LEVELS[:-1]) + " or " + LOG_LEVELS[-1],
        str,
    ),
    _Field(
        ("shutdown_grace",),
        "CYCLONETIX_SHUTDOWN_GRACE",
        "shutdown_grace",
        f"seconds from 0 to {MAX_GRACE_S:g}",
        _as_float,
    ),
    _Field(("notify", "attempts"), "CYCLONETIX_NOTIFY_ATTEMPTS", None, "1 to 100", _as_int),
    _Field(
        ("notify", "first_delay"),
        "CYCLONETIX_NOTIFY_FIRST_DELAY",
        None,
        "seconds from 0 to 3600",
        _as_float,
    ),
    _Field(
        ("notify", "timeout"),
        "CYCLONETIX_NOTIFY_TIMEOUT",
        None,
        "seconds, more than 0 and at most 600",
        _as_float,
    ),
    _Field(("notify", "concurrency"), "CYCLONETIX_NOTIFY_CONCURRENCY", None, "1 to 1000", _as_int),
    _Field(
        ("triggers", "idempotency_window"),
        "CYCLONETIX_TRIGGER_IDEMPOTENCY_WINDOW",
        None,
        "seconds, at least 1",
        _as_float,
    ),
    _Field(
        ("triggers", "max_message_bytes"),
        "CYCLONETIX_TRIGGER_MAX_MESSAGE_BYTES",
        None,
        "bytes from 16 to 8388608",
        _as_int,
    ),
)
_UI_FIELDS = (
    _Field(
        ("ui", "login_max_failures_per_account"),
        "CYCLONETIX_UI_LOGIN_MAX_FAILURES_PER_ACCOUNT",
        None,
        "a count from 1",
        _as_int,
    ),
    _Field(
        ("ui", "login_max_failures_per_address"),
        "CYCLONETIX_UI_LOGIN_MAX_FAILURES_PER_ADDRESS",
        None,
        "a count from 1",
        _as_int,
    ),
    _Field(
        ("ui", "login_failure_window"),
        "CYCLONETIX_UI_LOGIN_FAILURE_WINDOW",
        None,
        f"seconds, more than 0 and at most {MAX_GRACE_S:g}",
        _as_float,
    ),
    _Field(("ui", "oidc", "issuer"), "CYCLONETIX_UI_OIDC_ISSUER", None, "a URL", str),
    _Field(("ui", "oidc", "client_id"), "CYCLONETIX_UI_OIDC_CLIENT_ID", None, "a client id", str),
    _Field(
        ("ui", "oidc", "client_secret"), "CYCLONETIX_UI_OIDC_CLIENT_SECRET", None, "a secret", str
    ),
    _Field(
        ("ui", "oidc", "client_secret_file"),
        "CYCLONETIX_UI_OIDC_CLIENT_SECRET_FILE",
        None,
        "a file path",
        str,
    ),
    _Field(("ui", "oidc", "redirect_url"), "CYCLONETIX_UI_OIDC_REDIRECT_URL", None, "a URL", str),
)
FIELDS: tuple[_Field, ...] = (*_BASE_FIELDS, *_UI_FIELDS)
_BY_PATH = {f.path: f for f in FIELDS}
_FLAGS = {f.flag: f for f in FIELDS if f.flag is not None}
_SECTIONS = {
    ("nats",): NatsSettings,
    ("log",): LogSettings,
    ("notify",): NotifySettings,
    ("triggers",): TriggerSettings,
    ("ui",): UiSettings,
    ("ui", "oidc"): OidcSettings,
    (): Settings,
}
_PATH_KEYS = {  # relative to the settings file's folder
    ("definitions",),
    ("data_dir",),
    *(("nats", name) for name in NatsSettings.__struct_fields__ if name.endswith("_file")),
    ("ui", "oidc", "client_secret_file"),
}
# Ways to authenticate: at most one may be set (user and password go together).
_AUTH_WAYS = (
    ("user", "password", "password_file"),
    ("token", "token_file"),
    ("nkey_seed_file",),
    ("creds_file",),
)
_MAX_AGE = ("nats", "events_max_age")
_DURATION_RE = re.compile(r"^\s*(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[smhdw]?)\s*$")


def load_settings(
    env: Mapping[str, str] | None = None, cwd: Path | None = None, *, file: Path | None = None
) -> Settings:
    """The settings from the file (if any) and the environment (default: this process's).

    `file` is where the settings file is, if not `$CYCLONETIX_CONFIG`; without either,
    `cyclonetix.yaml` in `cwd` is read if it exists. Raises SettingsError on the first bad value.
    """
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    if file is None and env.get(CONFIG_ENV):
        file = Path(env[CONFIG_ENV])
    if file is None and (cwd / CONFIG_FILE).is_file():
        file = Path(CONFIG_FILE)
    raw: dict[str, Any] = {}
    if file is not None:
        raw = _read_file(file if file.is_absolute() else cwd / file, file.as_posix())
        for key in _PATH_KEYS:  # checked to be a string or nothing by _read_file
            value = _get(raw, key)
            if isinstance(value, str) and not Path(value).is_absolute():
                _set(raw, key, (file.parent / value).as_posix())
    for field in FIELDS:
        text = env.get(field.env)
        if text:  # an empty variable counts as unset, as shells usually mean it
            value = _checked(field, field.from_text(text), f"${field.env}", repr(text))
            _set(raw, field.path, value)
    settings = _convert(raw, "settings")
    _check_nats_auth(settings.nats, "settings")
    _check_oidc(settings.ui.oidc, "settings")
    return settings


def _check_oidc(oidc: OidcSettings, where: str) -> None:
    """What an OIDC login needs, given together (SettingsError)."""
    if oidc.issuer is None:
        given = [
            n for n in ("client_id", "client_secret", "client_secret_file") if getattr(oidc, n)
        ]
        if given:
            raise SettingsError(f"{where}: ui.oidc.{given[0]}: needs ui.oidc.issuer")
        return
    if not oidc.issuer.startswith(("https://", "http://")):
        raise SettingsError(f"{where}: ui.oidc.issuer: expected an https:// URL")
    if not oidc.client_id:
        raise SettingsError(f"{where}: ui.oidc.client_id: needed with ui.oidc.issuer")
    if oidc.client_secret is not None and oidc.client_secret_file is not None:
        raise SettingsError(
            f"{where}: ui.oidc.client_secret and ui.oidc.client_secret_file: give one of them, "
            "not both"
        )
    for value, role in oidc.roles.items():
        if role not in OIDC_ROLES:
            raise SettingsError(
                f"{where}: ui.oidc.roles: {value!r} maps to {role!r}: expected viewer, operator "
                "or admin"
            )
    if oidc.default_role is not None and oidc.default_role not in OIDC_ROLES:
        raise SettingsError(
            f"{where}: ui.oidc.default_role: expected viewer, operator or admin, got "
            f"{oidc.default_role!r}"
        )
    if oidc.roles and not oidc.roles_claim:
        raise SettingsError(f"{where}: ui.oidc.roles: needs ui.oidc.roles_claim (e.g. groups)")
    if oidc.default_role is None and not oidc.roles:
        raise SettingsError(
            f"{where}: ui.oidc: give ui.oidc.roles_claim and ui.oidc.roles, or "
            "ui.oidc.default_role: else nobody could log in"
        )


def _check_nats_auth(nats: NatsSettings, where: str) -> None:
    """One way to authenticate at most, and a password needs its user (SettingsError)."""
    given = [[name for name in way if getattr(nats, name) is not None] for way in _AUTH_WAYS]
    ways = [names for names in given if names]
    if len(ways) > 1:
        shown = " and ".join("nats." + names[0] for names in ways)
        raise SettingsError(f"{where}: {shown}: give one way to authenticate to NATS, not both")
    for pair in (("password", "password_file"), ("token", "token_file")):
        if all(getattr(nats, name) is not None for name in pair):
            raise SettingsError(
                f"{where}: nats.{pair[0]} and nats.{pair[1]}: give one of them, not both"
            )
    if (nats.password is not None or nats.password_file is not None) and not nats.user:
        raise SettingsError(f"{where}: nats.password: needs nats.user")
    if (nats.tls_cert_file is None) != (nats.tls_key_file is None):
        raise SettingsError(
            f"{where}: nats.tls_cert_file and nats.tls_key_file: give both or neither"
        )


def pick(flag: T | None, setting: T) -> T:
    """A flag's value when it was given (not None), else the setting's: flags beat both."""
    return setting if flag is None else flag


# --- reading and checking ----------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """Safe YAML where a key given twice is an error (PyYAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def _read_file(path: Path, shown: str) -> dict[str, Any]:
    """The settings file as checked raw values (log level upper-cased), or SettingsError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError(f"{shown}: no such settings file") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{shown}: cannot read: not UTF-8 text") from None
    except OSError as exc:
        raise SettingsError(f"{shown}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SettingsError(f"{shown}: invalid YAML{where}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"{shown}: invalid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}  # an empty file: every default
    if not isinstance(data, dict):
        raise SettingsError(f"{shown}: expected a mapping of settings, got {_show(data)}")
    if isinstance(data.get("nats"), dict) and data["nats"].get("events_max_age") is not None:
        max_age = _BY_PATH[_MAX_AGE]  # a duration: seconds before msgspec checks the rest
        _set(
            data,
            _MAX_AGE,
            _checked(max_age, _get(data, _MAX_AGE), f"{shown}: {'.'.join(_MAX_AGE)}"),
        )
    try:
        msgspec.convert(data, Settings)
    except msgspec.ValidationError as exc:
        raise SettingsError(_message(shown, data, exc)) from None
    level = _BY_PATH[("log", "level")]
    if isinstance(_get(data, level.path), str):
        _set(data, level.path, _checked(level, _get(data, level.path), f"{shown}: log.level"))
    return data


def _checked(field: _Field, value: object, where: str, got: str | None = None) -> Any:
    """`value` if valid for `field` (a log level upper-cased), else SettingsError at `where`."""
    shown = got if got is not None else _show(value)
    if _is_secret(field.path):
        shown = "something else"  # a secret is never repeated in a message
    problem = f"{where}: expected {field.expected}, got {shown}"
    if field.path == ("log", "level"):
        if isinstance(value, str) and value.strip().upper() in LOG_LEVELS:
            return value.strip().upper()
        raise SettingsError(problem)
    if field.path == _MAX_AGE:
        seconds = duration_seconds(value)
        if seconds is None or not (
            seconds == 0 or MIN_EVENTS_MAX_AGE <= seconds <= MAX_EVENTS_MAX_AGE
        ):
            raise SettingsError(problem)
        return seconds
    try:
        msgspec.convert({field.path[-1]: value}, _SECTIONS[field.path[:-1]])
    except msgspec.ValidationError:
        raise SettingsError(problem) from None
    return value


def duration_seconds(value: object) -> float | None:
    """Seconds in `value` (a number, or text like `3600`, `90m`, `12h`, `30d`, `2w`), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value >= 0 else None
    if not isinstance(value, str):
        return None
    match = _DURATION_RE.match(value.lower())
    if match is None:
        return None
    return float(match["number"]) * DURATION_UNITS[match["unit"]]


def _convert(raw: dict[str, Any], where: str) -> Settings:
    try:
        return msgspec.convert(raw, Settings)
    except msgspec.ValidationError as exc:  # pragma: no cover - every source is checked first
        raise SettingsError(_message(where, raw, exc)) from None


_AT_RE = re.compile(r"^(?P<what>.*?) - at `\$(?P<path>[^`]*)`$", re.DOTALL)
_UNKNOWN_RE = re.compile(r"^Object contains unknown field `(?P<name>[^`]+)`$")


def _message(where: str, raw: Mapping[str, Any], exc: msgspec.ValidationError) -> str:
    """msgspec's complaint about `raw` as `where: key: problem`."""
    match = _AT_RE.match(str(exc))
    what, dotted = (match["what"], match["path"]) if match else (str(exc), "")
    path = tuple(p for p in dotted.split(".") if p)
    unknown = _UNKNOWN_RE.match(what)
    if unknown:
        name = unknown["name"]
        allowed = list(_SECTIONS[path].__struct_fields__) if path in _SECTIONS else []
        close = difflib.get_close_matches(name, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(allowed)})"
        return f"{where}: {'.'.join((*path, name))}: unknown field{hint}"
    if path in _BY_PATH:
        expected = _BY_PATH[path].expected
    elif path in _SECTIONS:
        expected = "a mapping"
    else:  # pragma: no cover - every key is a field or a section
        expected = what
    shown = _show(_get(raw, path))
    if _is_secret(path):
        shown = "something else"  # a secret is never repeated in a message
    return f"{where}: {'.'.join(path)}: expected {expected}, got {shown}"


def _is_secret(path: tuple[str, ...]) -> bool:
    nats_secret = len(path) == 2 and path[0] == "nats" and path[1] in SECRET_FIELDS
    return nats_secret or path == ("ui", "oidc", "client_secret")


def _show(value: object) -> str:
    """A value as the YAML author wrote it: `'x'`, `2`, `true`, `a list`, `a mapping`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _get(raw: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = raw
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _set(raw: dict[str, Any], path: tuple[str, ...], value: object) -> None:
    node = raw
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[path[-1]] = value
