"""`keyledger dev`: its banner names the metrics and health URL, which answers; it prints no secret."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request

import pytest

from workers.app.embedded import free_port

# the dev broker takes port 9092 when free: never beside test_preflight's check of that choice (pytest-xdist)
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("dev-port-9092")]


def test_the_dev_banner_shows_a_working_metrics_url_and_no_secret(tmp_path):
    kek = base64.b64encode(os.urandom(32)).decode()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYLEDGER_", "OTEL_"))}
    env.update(KEYLEDGER_HTTP_PORT=str(free_port()), KEYLEDGER_LOCAL_KEK=kek)
    log = tmp_path / "dev.err"
    with open(log, "wb") as err:
        process = subprocess.Popen([sys.executable, "-m", "workers.app.cli", "dev"], env=env, stdout=subprocess.PIPE,
                                   stderr=err, text=True)
    banner: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            banner.append(line)
            if line.strip().startswith("metrics "):
                found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert found.wait(timeout=120), "".join(banner) + log.read_text()
        [line] = [line for line in banner if line.strip().startswith("metrics ")]
        url = re.search(r"(http://\S+)/metrics", line).group(1)
        assert url == f"http://127.0.0.1:{env['KEYLEDGER_HTTP_PORT']}"
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as reply:
            assert reply.status == 200 and b"keyledger_records_total" in reply.read()
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as reply:
            assert reply.status == 200
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=5)
    printed = "".join(banner) + log.read_text()
    assert kek not in printed and base64.b64decode(kek).hex() not in printed
