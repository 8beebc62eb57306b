"""The built wheel works outside the repository: installed into a fresh virtual environment in a
folder of its own, `cyclonetix dev` runs the bundled examples from an empty folder."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import child_env

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def run(*args: str | Path, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=installed_env(),
    )
    assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
    return done


def installed_env() -> dict[str, str]:
    """This environment without CYCLONETIX_* and without anything that points into the checkout."""
    env = child_env()
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(name, None)
    return env


def test_the_wheel_installed_elsewhere_runs_dev_and_an_outcome(tmp_path: Path) -> None:
    assert REPO not in tmp_path.parents  # really outside the checkout
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, REPO, cwd=tmp_path)
    (wheel,) = wheels.glob("cyclonetix-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python, cyclonetix = venv / "bin" / "python", venv / "bin" / "cyclonetix"
    run(python, "-m", "pip", "install", "-q", wheel, cwd=tmp_path, timeout=300)

    empty = tmp_path / "empty"
    empty.mkdir()
    version = run(cyclonetix, "--version", cwd=empty).stdout.strip()
    assert version.startswith("cyclonetix ") and "not installed" not in version
    where = run(python, "-c", "import services; print(services.__file__)", cwd=empty)
    assert Path(where.stdout.strip()).is_relative_to(venv)  # the installed copy, not the checkout

    log_path = tmp_path / "dev.log"
    with log_path.open("w") as log:
        env = installed_env()
        dev = subprocess.Popen(
            [cyclonetix, "dev", "--port", "0"],
            cwd=empty,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            runtime = empty / ".cyclonetix" / "runtime.json"
            deadline = time.monotonic() + 60  # only to stop waiting for a dev that never starts
            while not runtime.exists():
                assert dev.poll() is None, f"cyclonetix dev exited:\n{log_path.read_text()}"
                assert time.monotonic() < deadline, f"dev did not start:\n{log_path.read_text()}"
                time.sleep(0.05)
            scheduled = ("schedule", "task", "deploy_model", "--wait", "--json")
            result = json.loads(run(cyclonetix, *scheduled, cwd=empty).stdout)
            assert result["status"] == "succeeded"
            assert result["tasks"] == dict.fromkeys(
                ("prepare_data", "train_model", "evaluate_model", "deploy_model"), "succeeded"
            )
        finally:
            dev.send_signal(signal.SIGINT)
            code: int | None = None
            try:
                code = dev.wait(30)
            except subprocess.TimeoutExpired:
                dev.kill()
    output = log_path.read_text()
    assert code == 0, output[-3000:]
    assert not runtime.exists()  # a clean stop removes what it recorded
    bundled = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert f"from {bundled}/site-packages/services/examples" in output
    assert "Traceback" not in output
