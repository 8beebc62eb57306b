"""services.embedded_nats: a private nats-server that never outlives its parent."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from services.embedded_nats import EmbeddedNats, EmbeddedNatsError, find_nats_server
from services.nats import connect
from tests.conftest import start_nats

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not gone(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"nats-server {pid} still running {timeout:.0f}s later")
        time.sleep(0.01)


def test_find_nats_server_uses_the_wheel_binary() -> None:
    path = find_nats_server()
    assert Path(path).name == "nats-server"
    assert os.access(path, os.X_OK)


async def test_starts_on_a_random_port_and_accepts_jetstream_clients(tmp_path: Path) -> None:
    server = start_nats(tmp_path, sync_interval="always")
    try:
        assert server.url.startswith("nats://127.0.0.1:")
        config = server.config_path.read_text()
        assert "sync_interval: always" in config
        assert str(tmp_path / "nats" / "jetstream") in config
        async with await connect(server.url, name="test") as backplane:  # (provisions: needs JS)
            info = await backplane.connection.js.account_info()
            assert info.limits is not None
        assert "Server is ready" in server.log_path.read_text()
    finally:
        server.stop()
    assert not server.running


def test_restart_reuses_the_port(tmp_path: Path) -> None:
    with EmbeddedNats(tmp_path) as server:
        url = server.url
        server.stop()
        assert server.start() == url


def test_a_server_that_cannot_start_raises_with_its_log(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path, sync_interval="not-a-duration")
    # It noticed the exit (not a startup timeout): the message says so and carries the log.
    with pytest.raises(EmbeddedNatsError, match="exited with code 1 during startup") as info:
        server.start()
    assert "sync_interval" in str(info.value)
    assert "\n" not in str(info.value)
    assert not server.running


def test_a_taken_port_is_reported(tmp_path: Path) -> None:
    with EmbeddedNats(tmp_path / "a") as first:
        assert first.port is not None
        second = EmbeddedNats(tmp_path / "b", port=first.port)
        with pytest.raises(EmbeddedNatsError, match="address already in use"):
            second.start()


async def test_context_manager_works_from_async_code(tmp_path: Path) -> None:
    with EmbeddedNats(tmp_path) as server:
        backplane = await connect(server.url, name="test", provision=False)
        await backplane.close()
        pid = server.pid
    assert pid is not None and gone(pid)


def test_the_server_dies_with_its_parent_even_on_sigkill(tmp_path: Path) -> None:
    parent_code = (
        "import sys, pathlib\n"
        "from services.embedded_nats import EmbeddedNats\n"
        "server = EmbeddedNats(pathlib.Path(sys.argv[1]))\n"
        "server.start()\n"
        "print(server.pid, flush=True)\n"
        "sys.stdin.read()\n"  # wait until killed
    )
    with subprocess.Popen(
        [sys.executable, "-c", parent_code, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
        text=True,
    ) as parent:
        try:
            assert parent.stdout is not None
            server_pid = int(parent.stdout.readline())
            assert not gone(server_pid)
            parent.send_signal(signal.SIGKILL)
            parent.wait(timeout=10)
            wait_gone(server_pid)
        finally:
            if parent.poll() is None:
                parent.kill()


def test_starting_from_a_short_lived_thread_does_not_tie_the_server_to_it(
    tmp_path: Path,
) -> None:
    # PR_SET_PDEATHSIG fires when the *thread* that forked exits; start() must not fork from
    # a thread that is about to end (services/cluster.py starts it via asyncio.to_thread).
    server = EmbeddedNats(tmp_path)
    worker = threading.Thread(target=server.start)
    worker.start()
    worker.join()
    try:
        assert server.running
        proc = server._proc
        assert proc is not None
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)  # a SIGTERMed server would exit within milliseconds
    finally:
        server.stop()


async def test_start_via_to_thread(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path)
    url = await asyncio.to_thread(server.start)
    try:
        backplane = await connect(url, name="test", provision=False)
        await backplane.close()
    finally:
        server.stop()
