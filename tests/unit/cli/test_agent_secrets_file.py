"""`cyclonetix agent --secrets-file`: YAML or NAME=VALUE; a bad file is one line, no value."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from services.cli.agent import read_secrets_file
from services.cli.main import CliError

if TYPE_CHECKING:
    from pathlib import Path


def test_yaml_and_key_value_files(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("API_TOKEN: abc\nPORT: 5432\n")
    (tmp_path / "s.env").write_text("# comment\nAPI_TOKEN=a=b\n")
    assert read_secrets_file(tmp_path / "s.yaml") == {"API_TOKEN": "abc", "PORT": "5432"}
    assert read_secrets_file(tmp_path / "s.env") == {"API_TOKEN": "a=b"}


def test_a_bad_file_is_one_line_without_a_value(tmp_path: Path) -> None:
    (tmp_path / "bad.env").write_text("A=1\nhunter2\n")
    (tmp_path / "bad.yml").write_text("A: [hunter2]\n")
    for name, expected in [("bad.env", "line 2"), ("bad.yml", "A: expected a string")]:
        with pytest.raises(CliError) as caught:
            read_secrets_file(tmp_path / name)
        assert expected in str(caught.value) and "hunter2" not in str(caught.value)
    with pytest.raises(CliError, match="cannot read"):
        read_secrets_file(tmp_path / "missing.env")
