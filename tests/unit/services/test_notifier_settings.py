"""The webhook settings (`notify.*`): from the file and the environment, each bad value one
line naming where it came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.settings import CONFIG_FILE, NotifySettings, SettingsError, load_settings


def test_defaults_file_and_environment(tmp_path: Path) -> None:
    assert load_settings({}, tmp_path).notify == NotifySettings(
        attempts=5, first_delay=10.0, timeout=10.0, concurrency=32
    )
    (tmp_path / CONFIG_FILE).write_text("notify: {attempts: 8, first_delay: 2.5}\n")
    env = {"CYCLONETIX_NOTIFY_TIMEOUT": "3", "CYCLONETIX_NOTIFY_FIRST_DELAY": "0.5"}
    assert load_settings(env, tmp_path).notify == NotifySettings(
        attempts=8, first_delay=0.5, timeout=3.0, concurrency=32
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"CYCLONETIX_NOTIFY_ATTEMPTS": "0"},
            "$CYCLONETIX_NOTIFY_ATTEMPTS: expected 1 to 100, got '0'",
        ),
        (
            {"CYCLONETIX_NOTIFY_TIMEOUT": "0"},
            "$CYCLONETIX_NOTIFY_TIMEOUT: expected seconds, more than 0 and at most 600, got '0'",
        ),
        (
            {"CYCLONETIX_NOTIFY_FIRST_DELAY": "soon"},
            "$CYCLONETIX_NOTIFY_FIRST_DELAY: expected seconds from 0 to 3600, got 'soon'",
        ),
        (
            {"CYCLONETIX_NOTIFY_CONCURRENCY": "many"},
            "$CYCLONETIX_NOTIFY_CONCURRENCY: expected 1 to 1000, got 'many'",
        ),
    ],
)
def test_a_bad_variable_is_one_line(tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(env, tmp_path)
    assert str(raised.value) == message


def test_a_bad_file_value_names_the_key(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text("notify: {attempts: -1}\n")
    with pytest.raises(SettingsError) as raised:
        load_settings({}, tmp_path)
    assert str(raised.value) == "cyclonetix.yaml: notify.attempts: expected 1 to 100, got -1"
    (tmp_path / CONFIG_FILE).write_text("notify: {retries: 3}\n")
    with pytest.raises(SettingsError) as raised:
        load_settings({}, tmp_path)
    assert str(raised.value).startswith("cyclonetix.yaml: notify.retries: unknown field")
