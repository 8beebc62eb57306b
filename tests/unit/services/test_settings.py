"""Settings: cyclonetix.yaml < CYCLONETIX_* variables < flags, every bad value one clear line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.errors import Invalid
from services import definitions_files, runtime_info
from services.definitions_files import default_definitions_dir, examples_dir
from services.runtime_info import NoNatsServer, resolve_nats_url, write_runtime_info
from services.settings import (
    CONFIG_ENV,
    CONFIG_FILE,
    FIELDS,
    LogSettings,
    NatsSettings,
    Settings,
    SettingsError,
    load_settings,
    pick,
)

FULL_FILE = """\
nats:
  url: nats://file:4222
  stream_replicas: 3
definitions: defs
data_dir: /var/lib/cx
log:
  format: json
  level: debug
"""

LEVELS = "DEBUG, INFO, WARNING, ERROR or CRITICAL"
GRACE = "seconds from 0 to 86400"
MAX_AGE = "0 (keep forever) or a duration from 1h to 36500d, like 12h, 30d or 86400 (seconds)"

FULL_ENV = {
    "CYCLONETIX_NATS_URL": "nats://env:4222,nats://env2:4222",
    "CYCLONETIX_STREAM_REPLICAS": "5",
    "CYCLONETIX_DEFINITIONS": "/srv/defs",
    "CYCLONETIX_DATA_DIR": "state",
    "CYCLONETIX_LOG_FORMAT": "console",
    "CYCLONETIX_LOG_LEVEL": "warning",
}


@pytest.fixture(autouse=True)
def _no_settings_from_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests that read this process's settings start from none (each sets what it needs)."""
    for name in (CONFIG_ENV, *(field.env for field in FIELDS)):
        monkeypatch.delenv(name, raising=False)


def write(folder: Path, text: str, name: str = CONFIG_FILE) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def error_of(env: dict[str, str], cwd: Path) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(env, cwd)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- sources and precedence --------------------------------------------------------------------


def test_defaults_without_file_or_environment(tmp_path: Path) -> None:
    settings = load_settings({}, tmp_path)
    assert settings == Settings()
    assert settings.nats == NatsSettings(url=None, stream_replicas=1)
    assert (settings.definitions, settings.data_dir) == (None, ".cyclonetix")
    assert settings.log == LogSettings(format="console", level="INFO")
    assert settings.definitions_dir is None
    assert settings.data_path == Path(".cyclonetix")


def test_file_only(tmp_path: Path) -> None:
    write(tmp_path, FULL_FILE)
    settings = load_settings({}, tmp_path)
    assert settings == Settings(
        nats=NatsSettings(url="nats://file:4222", stream_replicas=3),
        definitions="defs",  # relative to the file's folder, which is the current one
        data_dir="/var/lib/cx",
        log=LogSettings(format="json", level="DEBUG"),
    )


def test_environment_only(tmp_path: Path) -> None:
    settings = load_settings(FULL_ENV, tmp_path)
    assert settings == Settings(
        nats=NatsSettings(url="nats://env:4222,nats://env2:4222", stream_replicas=5),
        definitions="/srv/defs",
        data_dir="state",
        log=LogSettings(format="console", level="WARNING"),
    )


def test_environment_beats_the_file_key_by_key(tmp_path: Path) -> None:
    write(tmp_path, FULL_FILE)
    env = {"CYCLONETIX_NATS_URL": "nats://env:4222", "CYCLONETIX_LOG_LEVEL": "ERROR"}
    settings = load_settings(env, tmp_path)
    assert settings.nats == NatsSettings(url="nats://env:4222", stream_replicas=3)
    assert settings.log == LogSettings(format="json", level="ERROR")
    assert (settings.definitions, settings.data_dir) == ("defs", "/var/lib/cx")


def test_flags_beat_environment_and_file(tmp_path: Path) -> None:
    write(tmp_path, FULL_FILE)
    settings = load_settings(FULL_ENV, tmp_path).override(
        nats_url="nats://flag:4222",
        definitions=Path("flag-defs"),
        data_dir=None,  # not given: the environment's value stays
        log_format="json",
        log_level="info",
    )
    assert settings == Settings(
        nats=NatsSettings(url="nats://flag:4222", stream_replicas=5),
        definitions="flag-defs",
        data_dir="state",
        log=LogSettings(format="json", level="INFO"),
    )


def test_shutdown_grace_from_the_file_the_environment_and_the_flag(tmp_path: Path) -> None:
    assert load_settings({}, tmp_path).shutdown_grace == 30.0
    write(tmp_path, "shutdown_grace: 12\n")
    assert load_settings({}, tmp_path).shutdown_grace == 12.0
    settings = load_settings({"CYCLONETIX_SHUTDOWN_GRACE": "2.5"}, tmp_path)
    assert settings.shutdown_grace == 2.5
    assert settings.override(shutdown_grace=0.0).shutdown_grace == 0.0  # given, though falsy
    assert settings.override(shutdown_grace=None).shutdown_grace == 2.5
    with pytest.raises(SettingsError) as info:
        settings.override(shutdown_grace=-1.0)
    assert str(info.value) == f"--shutdown-grace: expected {GRACE}, got -1.0"


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        ("0", 0.0),
        ("3600", 3600.0),
        ("1h", 3600.0),
        ("90m", 5400.0),
        ("12h", 43_200.0),
        ("1.5d", 129_600.0),
        ("30d", 2_592_000.0),
        ("2w", 1_209_600.0),
        (" 7D ", 604_800.0),
        ("36500d", 36_500 * 86_400.0),
    ],
)
def test_events_max_age_from_the_environment_and_the_file(
    tmp_path: Path, given: str, seconds: float
) -> None:
    env = {"CYCLONETIX_EVENTS_MAX_AGE": given}
    assert load_settings(env, tmp_path).nats.events_max_age == seconds
    write(tmp_path, f"nats:\n  events_max_age: {given.strip()}\n")
    assert load_settings({}, tmp_path).nats.events_max_age == seconds


def test_events_max_age_defaults_to_forever_and_the_environment_beats_the_file(
    tmp_path: Path,
) -> None:
    assert load_settings({}, tmp_path).nats.events_max_age == 0.0
    write(tmp_path, "nats: {events_max_age: 7200, url: nats://file:4222}\n")
    settings = load_settings({}, tmp_path)
    assert settings.nats == NatsSettings(url="nats://file:4222", events_max_age=7200.0)
    env = {"CYCLONETIX_EVENTS_MAX_AGE": "30d"}
    assert load_settings(env, tmp_path).nats.events_max_age == 30 * 86_400.0
    assert load_settings(env, tmp_path).override(log_level="debug").nats.events_max_age == (
        30 * 86_400.0
    )


def test_pick_prefers_a_given_flag() -> None:
    assert pick("flag", "setting") == "flag"
    assert pick(None, "setting") == "setting"
    assert pick(0, 3) == 0  # given, even if falsy


def test_a_bad_flag_is_one_line_naming_the_option() -> None:
    with pytest.raises(SettingsError) as info:
        Settings().override(log_level="loud")
    assert str(info.value) == f"--log-level: expected {LEVELS}, got 'loud'"
    with pytest.raises(SettingsError) as info:
        Settings().override(log_format="xml")
    assert str(info.value) == "--log-format: expected console or json, got 'xml'"
    with pytest.raises(TypeError, match="stream_replicas"):
        Settings().override(stream_replicas=3)  # no such flag


def test_config_variable_names_the_file_and_its_folder_anchors_paths(tmp_path: Path) -> None:
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    path = write(elsewhere, "definitions: defs\ndata_dir: /abs/data\n", "cx.yaml")
    write(tmp_path, "nats: {url: nats://ignored:4222}\n")  # ./cyclonetix.yaml is not read then
    settings = load_settings({"CYCLONETIX_CONFIG": str(path)}, tmp_path)
    assert settings.definitions == f"{elsewhere}/defs"
    assert settings.data_dir == "/abs/data"
    assert settings.nats.url is None


def test_a_named_config_file_must_exist(tmp_path: Path) -> None:
    message = error_of({"CYCLONETIX_CONFIG": "missing.yaml"}, tmp_path)
    assert message == "missing.yaml: no such settings file"


def test_other_cyclonetix_variables_and_empty_ones_are_not_settings(tmp_path: Path) -> None:
    env = {
        "CYCLONETIX_RUN_ID": "r1",  # what agents give task commands
        "CYCLONETIX_TASK_ID": "t1",
        "CYCLONETIX_NATS_URL": "",  # empty counts as unset
        "CYCLONETIX_STREAM_REPLICAS": "",
    }
    assert load_settings(env, tmp_path) == Settings()


def test_an_empty_file_means_every_default(tmp_path: Path) -> None:
    write(tmp_path, "# nothing set yet\n")
    assert load_settings({}, tmp_path) == Settings()


def test_the_process_environment_and_folder_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "log: {format: json}\n")
    monkeypatch.setenv("CYCLONETIX_STREAM_REPLICAS", "3")
    settings = load_settings()
    assert (settings.log.format, settings.nats.stream_replicas) == ("json", 3)


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nats: {url: [a, b]}", "nats.url: expected a string, got a list"),
        ("nats: {url: 4222}", "nats.url: expected a string, got 4222"),
        ("nats: {stream_replicas: 2}", "nats.stream_replicas: expected 1, 3 or 5, got 2"),
        ("nats: {stream_replicas: 'x'}", "nats.stream_replicas: expected 1, 3 or 5, got 'x'"),
        ("nats: {stream_replicas: true}", "nats.stream_replicas: expected 1, 3 or 5, got true"),
        ("definitions: {a: 1}", "definitions: expected a folder path, got a mapping"),
        ("data_dir: 7", "data_dir: expected a folder path, got 7"),
        ("data_dir: null", "data_dir: expected a folder path, got nothing"),
        ("log: {format: xml}", "log.format: expected console or json, got 'xml'"),
        ("log: {level: loud}", f"log.level: expected {LEVELS}, got 'loud'"),
        ("log: {level: 10}", f"log.level: expected {LEVELS}, got 10"),
        ("nats: 3", "nats: expected a mapping, got 3"),
        ("log: [json]", "log: expected a mapping, got a list"),
        ("shutdown_grace: -1", f"shutdown_grace: expected {GRACE}, got -1"),
        ("shutdown_grace: 100000", f"shutdown_grace: expected {GRACE}, got 100000"),
        ("shutdown_grace: soon", f"shutdown_grace: expected {GRACE}, got 'soon'"),
        ("shutdown_grace: true", f"shutdown_grace: expected {GRACE}, got true"),
        ("nats: {events_max_age: 10m}", f"nats.events_max_age: expected {MAX_AGE}, got '10m'"),
        ("nats: {events_max_age: 3599}", f"nats.events_max_age: expected {MAX_AGE}, got 3599"),
        ("nats: {events_max_age: -1}", f"nats.events_max_age: expected {MAX_AGE}, got -1"),
        ("nats: {events_max_age: 1y}", f"nats.events_max_age: expected {MAX_AGE}, got '1y'"),
        (
            "nats: {events_max_age: 36501d}",
            f"nats.events_max_age: expected {MAX_AGE}, got '36501d'",
        ),
        ("nats: {events_max_age: .inf}", f"nats.events_max_age: expected {MAX_AGE}, got inf"),
        ("nats: {events_max_age: true}", f"nats.events_max_age: expected {MAX_AGE}, got true"),
        ("nats: {events_max_age: [1h]}", f"nats.events_max_age: expected {MAX_AGE}, got a list"),
    ],
)
def test_every_bad_file_value_is_one_line_naming_file_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    write(tmp_path, text + "\n")
    assert error_of({}, tmp_path) == f"cyclonetix.yaml: {message}"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("CYCLONETIX_STREAM_REPLICAS", "x", "1, 3 or 5"),
        ("CYCLONETIX_STREAM_REPLICAS", "2", "1, 3 or 5"),
        ("CYCLONETIX_STREAM_REPLICAS", "3.0", "1, 3 or 5"),
        ("CYCLONETIX_LOG_FORMAT", "xml", "console or json"),
        ("CYCLONETIX_LOG_LEVEL", "loud", LEVELS),
        ("CYCLONETIX_SHUTDOWN_GRACE", "soon", GRACE),
        ("CYCLONETIX_SHUTDOWN_GRACE", "-0.5", GRACE),
        ("CYCLONETIX_SHUTDOWN_GRACE", "inf", GRACE),
        ("CYCLONETIX_SHUTDOWN_GRACE", "nan", GRACE),
        ("CYCLONETIX_EVENTS_MAX_AGE", "30m", MAX_AGE),
        ("CYCLONETIX_EVENTS_MAX_AGE", "59m", MAX_AGE),
        ("CYCLONETIX_EVENTS_MAX_AGE", "1h30m", MAX_AGE),
        ("CYCLONETIX_EVENTS_MAX_AGE", "-2h", MAX_AGE),
        ("CYCLONETIX_EVENTS_MAX_AGE", "forever", MAX_AGE),
        ("CYCLONETIX_EVENTS_MAX_AGE", "nan", MAX_AGE),
        ("CYCLONETIX_TRIGGER_IDEMPOTENCY_WINDOW", "0.5", "seconds, at least 1"),
        ("CYCLONETIX_TRIGGER_IDEMPOTENCY_WINDOW", "a day", "seconds, at least 1"),
        ("CYCLONETIX_TRIGGER_MAX_MESSAGE_BYTES", "8", "bytes from 16 to 8388608"),
        ("CYCLONETIX_TRIGGER_MAX_MESSAGE_BYTES", "64k", "bytes from 16 to 8388608"),
    ],
)
def test_every_bad_variable_is_one_line_naming_the_variable(
    tmp_path: Path, name: str, value: str, expected: str
) -> None:
    assert error_of({name: value}, tmp_path) == f"${name}: expected {expected}, got {value!r}"


def test_string_settings_take_any_text_from_the_environment(tmp_path: Path) -> None:
    # nats.url, definitions and data_dir are strings: no variable value can be of a wrong type.
    strings = {"nats.url", "definitions", "data_dir"}
    # The security settings are strings too (but only one way to authenticate at a time).
    security = {
        f"nats.{name}"
        for name in NatsSettings.__struct_fields__
        if name not in ("url", "stream_replicas", "events_max_age", "tls_required")
    } | {f"ui.oidc.{name}" for name in ("issuer", "client_id", "client_secret", "redirect_url")}
    security.add("ui.oidc.client_secret_file")
    assert {".".join(f.path) for f in FIELDS} - strings - security == {
        "nats.stream_replicas",
        "nats.tls_required",
        "nats.events_max_age",
        "log.format",
        "log.level",
        "shutdown_grace",
        "notify.attempts",
        "notify.first_delay",
        "notify.timeout",
        "notify.concurrency",
        "triggers.idempotency_window",
        "triggers.max_message_bytes",
        "ui.login_max_failures_per_account",
        "ui.login_max_failures_per_address",
        "ui.login_failure_window",
    }
    env = {f.env: "[1, 2]" for f in FIELDS if ".".join(f.path) in strings}
    settings = load_settings(env, tmp_path)
    assert (settings.nats.url, settings.definitions, settings.data_dir) == ("[1, 2]",) * 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "colour: x",
            "colour: unknown field (allowed: nats, ui, triggers, notify, definitions, "
            "data_dir, log, shutdown_grace)",
        ),
        ("nats_url: x", "nats_url: unknown field (did you mean 'nats'?)"),
        ("nats: {urll: x}", "nats.urll: unknown field (did you mean 'url'?)"),
        ("log: {colour: true}", "log.colour: unknown field (allowed: format, level)"),
    ],
)
def test_unknown_keys_are_errors(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path, text + "\n")
    assert error_of({}, tmp_path) == f"cyclonetix.yaml: {message}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "expected a mapping of settings, got a list"),
        ("just text\n", "expected a mapping of settings, got 'just text'"),
        ("nats: [\n", "invalid YAML at line 2, column 1: expected the node content"),
        ("log: {}\nlog: {}\n", "invalid YAML at line 2, column 1: duplicate key 'log'"),
    ],
)
def test_a_file_that_is_not_a_mapping_of_settings(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path, text)
    assert error_of({}, tmp_path).startswith(f"cyclonetix.yaml: {message}")


def test_the_config_variable_path_is_what_errors_name(tmp_path: Path) -> None:
    write(tmp_path, "nats: {stream_replicas: 4}\n", "prod.yaml")
    message = error_of({"CYCLONETIX_CONFIG": "prod.yaml"}, tmp_path)
    assert message == "prod.yaml: nats.stream_replicas: expected 1, 3 or 5, got 4"


def test_settings_errors_are_invalid_input() -> None:
    assert issubclass(SettingsError, Invalid)
    assert issubclass(NoNatsServer, Invalid)


# -- where settings are used -------------------------------------------------------------------


def test_nats_url_flag_then_setting_then_recorded_by_dev(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_runtime_info(data, nats_url="nats://recorded:4222", pid=os.getpid())
    with_url = Settings(nats=NatsSettings(url="nats://setting:4222"), data_dir=str(data))
    without_url = Settings(data_dir=str(data))
    assert resolve_nats_url("nats://flag:4222", settings=with_url) == "nats://flag:4222"
    assert resolve_nats_url(None, settings=with_url) == "nats://setting:4222"
    assert resolve_nats_url(None, settings=without_url) == "nats://recorded:4222"
    with pytest.raises(NoNatsServer, match="no NATS server: pass --nats-url"):
        resolve_nats_url(None, settings=Settings(data_dir=str(tmp_path / "empty")))


def test_nats_url_reads_the_process_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CYCLONETIX_NATS_URL", "nats://env:4222")
    assert resolve_nats_url(None) == "nats://env:4222"
    monkeypatch.delenv("CYCLONETIX_NATS_URL")
    monkeypatch.setenv("CYCLONETIX_DATA_DIR", str(tmp_path / "elsewhere"))
    write_runtime_info(tmp_path / "elsewhere", nats_url="nats://dev:4222", pid=os.getpid())
    assert resolve_nats_url(None) == "nats://dev:4222"
    monkeypatch.setenv("CYCLONETIX_STREAM_REPLICAS", "2")
    with pytest.raises(SettingsError, match=r"^\$CYCLONETIX_STREAM_REPLICAS: expected 1, 3 or 5"):
        resolve_nats_url(None)


def test_definitions_setting_else_the_bundled_examples(tmp_path: Path) -> None:
    assert default_definitions_dir(Settings(definitions=str(tmp_path))) == tmp_path
    assert default_definitions_dir(Settings()) == examples_dir()
    assert (examples_dir() / "tasks").is_dir()


def test_installed_examples_are_preferred_over_the_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository = definitions_files.REPOSITORY_EXAMPLES
    monkeypatch.setattr(definitions_files, "BUNDLED_EXAMPLES", tmp_path / "missing")
    assert examples_dir() == repository  # a checkout or an editable install
    monkeypatch.setattr(definitions_files, "BUNDLED_EXAMPLES", tmp_path)
    assert examples_dir() == tmp_path  # an installed wheel


def test_runtime_default_data_dir_is_the_setting_default() -> None:
    assert Path(Settings().data_dir) == runtime_info.DEFAULT_DATA_DIR


def test_trigger_settings_default_to_a_day_and_64_kib_and_read_the_environment(
    tmp_path: Path,
) -> None:
    assert load_settings({}, tmp_path).triggers.idempotency_window == 86_400.0
    assert load_settings({}, tmp_path).triggers.max_message_bytes == 65_536
    env = {
        "CYCLONETIX_TRIGGER_IDEMPOTENCY_WINDOW": "3600",
        "CYCLONETIX_TRIGGER_MAX_MESSAGE_BYTES": "1024",
    }
    triggers = load_settings(env, tmp_path).triggers
    assert (triggers.idempotency_window, triggers.max_message_bytes) == (3600.0, 1024)


# -- NATS security ------------------------------------------------------------------------------

SECURE_ENV = {
    "CYCLONETIX_NATS_USER": "agent-default",
    "CYCLONETIX_NATS_PASSWORD": "s3cret-pw",
    "CYCLONETIX_NATS_TLS_CA_FILE": "/etc/cx/ca.pem",
    "CYCLONETIX_NATS_TLS_CERT_FILE": "/etc/cx/agent.pem",
    "CYCLONETIX_NATS_TLS_KEY_FILE": "/etc/cx/agent-key.pem",
    "CYCLONETIX_NATS_TLS_REQUIRED": "yes",
    "CYCLONETIX_NATS_TLS_HOSTNAME": "nats.internal",
}


def test_nats_security_settings_come_from_the_environment(tmp_path: Path) -> None:
    nats = load_settings(SECURE_ENV, tmp_path).nats
    assert (nats.user, nats.password) == ("agent-default", "s3cret-pw")
    assert (nats.tls_ca_file, nats.tls_cert_file, nats.tls_key_file) == (
        "/etc/cx/ca.pem",
        "/etc/cx/agent.pem",
        "/etc/cx/agent-key.pem",
    )
    assert nats.tls_required is True and nats.tls_hostname == "nats.internal"
    assert nats.uses_tls
    assert not NatsSettings().uses_tls


def test_secrets_are_never_shown(tmp_path: Path) -> None:
    settings = load_settings({**SECURE_ENV}, tmp_path)
    assert "s3cret-pw" not in repr(settings) and "password='***'" in repr(settings)
    token = load_settings({"CYCLONETIX_NATS_TOKEN": "tok-123"}, tmp_path)
    assert "tok-123" not in repr(token) and "token='***'" in repr(token)
    write(tmp_path, "nats:\n  user: a\n  password: [s3cret-in-a-list]\n")
    with pytest.raises(SettingsError) as caught:
        load_settings({}, tmp_path)
    assert str(caught.value) == (
        "cyclonetix.yaml: nats.password: expected a password, got something else"
    )
    assert "s3cret" not in str(caught.value)


def test_secret_files_are_relative_to_the_settings_file(tmp_path: Path) -> None:
    write(
        tmp_path,
        "nats:\n  user: ui\n  password_file: secrets/nats\n  tls_ca_file: /abs/ca.pem\n",
    )
    nats = load_settings({}, tmp_path).nats
    assert nats.password_file == "secrets/nats"  # cwd is the file's folder here
    nested = tmp_path / "etc"
    nested.mkdir()
    write(nested, "nats:\n  user: ui\n  password_file: secrets/nats\n")
    from_env = load_settings({CONFIG_ENV: str(nested / CONFIG_FILE)}, tmp_path).nats
    assert from_env.password_file == f"{nested}/secrets/nats"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"CYCLONETIX_NATS_USER": "a", "CYCLONETIX_NATS_TOKEN": "t"},
            "settings: nats.user and nats.token: give one way to authenticate to NATS, not both",
        ),
        (
            {"CYCLONETIX_NATS_TOKEN": "t", "CYCLONETIX_NATS_CREDS_FILE": "/x.creds"},
            "settings: nats.token and nats.creds_file: give one way to authenticate to NATS, "
            "not both",
        ),
        (
            {
                "CYCLONETIX_NATS_USER": "a",
                "CYCLONETIX_NATS_PASSWORD": "p",
                "CYCLONETIX_NATS_PASSWORD_FILE": "/p",
            },
            "settings: nats.password and nats.password_file: give one of them, not both",
        ),
        ({"CYCLONETIX_NATS_PASSWORD": "p"}, "settings: nats.password: needs nats.user"),
        (
            {"CYCLONETIX_NATS_TLS_CERT_FILE": "/c.pem"},
            "settings: nats.tls_cert_file and nats.tls_key_file: give both or neither",
        ),
        (
            {"CYCLONETIX_NATS_TLS_REQUIRED": "maybe"},
            "$CYCLONETIX_NATS_TLS_REQUIRED: expected true or false, got 'maybe'",
        ),
    ],
)
def test_bad_nats_security_settings_are_one_line(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env, tmp_path)
    assert str(caught.value) == message


def test_security_options_read_secret_files_when_connecting(tmp_path: Path) -> None:
    from services.nats.connection import redact_url, security_options

    secret = tmp_path / "pw"
    secret.write_text("from-a-file\n")
    opts = security_options(NatsSettings(user="ui", password_file=str(secret)))
    assert opts == {"user": "ui", "password": "from-a-file"}
    token = tmp_path / "token"
    token.write_text("  tok  \n")
    assert security_options(NatsSettings(token_file=str(token))) == {"token": "tok"}
    assert security_options(NatsSettings()) == {}

    with pytest.raises(SettingsError) as caught:
        security_options(NatsSettings(user="ui", password_file=str(tmp_path / "missing")))
    assert str(caught.value) == (
        f"nats.password_file: cannot read {tmp_path / 'missing'}: no such file or directory"
    )
    with pytest.raises(SettingsError, match=r"nats\.tls_ca_file: no such file"):
        security_options(NatsSettings(tls_ca_file=str(tmp_path / "ca.pem")))

    assert redact_url("nats://u:pw@h:4222,nats://h2:4222") == "nats://u:***@h:4222,nats://h2:4222"
    assert redact_url("nats://tok@h:4222") == "nats://***@h:4222"
    assert redact_url("h:4222") == "nats://h:4222"
