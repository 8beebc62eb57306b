"""The `ui.*` settings (services/settings.py): failed-login limits and OIDC, from the file and
the environment; a bad or incomplete OIDC setup is one line, and its secret never shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.settings import CONFIG_FILE, OidcSettings, SettingsError, load_settings

OIDC = "ui:\n  oidc:\n    issuer: https://login.example.com\n    client_id: cx\n"


def error_of(text: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    (cwd / CONFIG_FILE).write_text(text)
    with pytest.raises(SettingsError) as info:
        load_settings(env or {}, cwd)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_and_overrides(tmp_path: Path) -> None:
    ui = load_settings({}, tmp_path).ui
    assert (ui.login_max_failures_per_account, ui.login_max_failures_per_address) == (5, 20)
    assert ui.login_failure_window == 900 and ui.oidc.issuer is None
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "cx.yaml").write_text(
        OIDC + "    roles_claim: groups\n    roles: {ops: operator}\n"
        "    client_secret_file: secret.txt\n  login_failure_window: 60\n"
    )
    env = {
        "CYCLONETIX_CONFIG": str(tmp_path / "conf" / "cx.yaml"),
        "CYCLONETIX_UI_LOGIN_MAX_FAILURES_PER_ADDRESS": "7",
    }
    ui = load_settings(env, tmp_path).ui
    assert (ui.login_failure_window, ui.login_max_failures_per_address) == (60, 7)
    assert ui.oidc.roles == {"ops": "operator"} and ui.oidc.scopes == ("openid", "profile", "email")
    assert ui.oidc.client_secret_file == (tmp_path / "conf" / "secret.txt").as_posix()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "ui:\n  oidc:\n    client_id: cx\n    default_role: viewer\n",
            "settings: ui.oidc.client_id: needs ui.oidc.issuer",
        ),
        (
            "ui:\n  oidc:\n    issuer: https://x\n    default_role: viewer\n",
            "settings: ui.oidc.client_id: needed with ui.oidc.issuer",
        ),
        (
            OIDC,
            "settings: ui.oidc: give ui.oidc.roles_claim and ui.oidc.roles, or "
            "ui.oidc.default_role: else nobody could log in",
        ),
        (
            OIDC + "    roles: {ops: operator}\n",
            "settings: ui.oidc.roles: needs ui.oidc.roles_claim (e.g. groups)",
        ),
        (
            OIDC + "    roles_claim: groups\n    roles: {ops: boss}\n",
            "settings: ui.oidc.roles: 'ops' maps to 'boss': expected viewer, operator or admin",
        ),
        (
            OIDC.replace("https://login.example.com", "login.example.com")
            + "    default_role: viewer\n",
            "settings: ui.oidc.issuer: expected an https:// URL",
        ),
        (
            OIDC + "    default_role: root\n",
            "settings: ui.oidc.default_role: expected viewer, operator or admin, got 'root'",
        ),
        (
            "ui:\n  login_max_failures_per_account: 0\n",
            "cyclonetix.yaml: ui.login_max_failures_per_account: expected a count from 1, got 0",
        ),
    ],
)
def test_an_incomplete_oidc_setup_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    assert error_of(text, tmp_path) == message


def test_the_client_secret_never_shows(tmp_path: Path) -> None:
    text = OIDC + "    default_role: viewer\n    client_secret: [hunter2]\n"
    message = error_of(text, tmp_path)
    assert "hunter2" not in message and message.startswith("cyclonetix.yaml: ui.oidc.client_secret")
    assert "hunter2" not in repr(OidcSettings(issuer="https://x", client_secret="hunter2"))
