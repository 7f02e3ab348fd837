"""Every misconfiguration a user can cause ends as one line naming the setting, with the right exit code.

Each case runs the real command (`python -m workers.app.cli ...`) as a subprocess with a clean
KEYLEDGER_* environment: exit 2 for configuration, 1 for a failed check; stderr holds exactly
one line and no traceback, no "Unclosed" client warning. Nothing here needs a running broker:
the unreachable addresses are free ports, or small servers that accept and say nothing.
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.app.embedded import free_port

pytestmark = pytest.mark.process  # each test runs the `keyledger` CLI as a process

ROOT = Path(__file__).resolve().parents[2]
SECRET_KEK_TEXT = "not base64, and secret!"


def keyledger(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KEYLEDGER_")}
    clean["PYTHONPATH"] = str(ROOT) + os.pathsep + clean.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "workers.app.cli", *args], env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=120, input=stdin, cwd=ROOT)


def one_line(result: subprocess.CompletedProcess, code: int) -> str:
    """The single stderr line of a failed verb, after checking the exit code and the absence of noise."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Unclosed" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("keyledger ")
    return lines[0]


class Silent:
    """A TCP server that accepts connections and then, per `close`, closes them at once or never answers."""

    def __init__(self, close: bool) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self._close = close
        self._held: list[socket.socket] = []
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.accepted += 1
            if self._close:
                conn.close()
            else:
                self._held.append(conn)

    def stop(self) -> None:
        self._sock.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def not_kafka() -> Iterator[Silent]:
    server = Silent(close=True)
    yield server
    server.stop()


@pytest.fixture
def mute() -> Iterator[Silent]:
    server = Silent(close=False)
    yield server
    server.stop()


@pytest.fixture
def spans_file(tmp_path: Path) -> Path:
    path = tmp_path / "signed.jsonl"
    path.write_text('{"job_id": "j1"}\n')
    return path


# --- Kafka ---------------------------------------------------------------------------------------


def test_nothing_listening_on_the_bootstrap_names_the_setting(spans_file):
    port = free_port()
    line = one_line(keyledger("verify", str(spans_file), env={"KEYLEDGER_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"}), 2)
    assert f"cannot reach Kafka at 127.0.0.1:{port} (connection refused)" in line
    assert "KEYLEDGER_KAFKA_BOOTSTRAP" in line


def test_a_bootstrap_that_is_not_kafka_is_refused(not_kafka):
    line = one_line(keyledger("status", env={"KEYLEDGER_KAFKA_BOOTSTRAP": f"127.0.0.1:{not_kafka.port}"}), 2)
    assert not_kafka.accepted >= 1  # the probe did reach it
    assert "is it a Kafka broker?" in line and "KEYLEDGER_KAFKA_BOOTSTRAP" in line


def test_a_bootstrap_that_never_answers_fails_in_bounded_time(mute):
    line = one_line(keyledger("rotate", "--all", env={"KEYLEDGER_KAFKA_BOOTSTRAP": f"127.0.0.1:{mute.port}"}), 2)
    assert mute.accepted >= 1
    assert "no answer within" in line and "KEYLEDGER_KAFKA_BOOTSTRAP" in line


def test_an_unset_bootstrap_says_where_to_get_one(spans_file):
    line = one_line(keyledger("verify", str(spans_file)), 2)
    assert "KEYLEDGER_KAFKA_BOOTSTRAP is unset" in line and "keyledger dev" in line


def test_a_malformed_bootstrap_is_refused_before_connecting():
    line = one_line(keyledger("status", env={"KEYLEDGER_KAFKA_BOOTSTRAP": "kafka:notaport"}), 2)
    assert line.startswith("keyledger status: KEYLEDGER_KAFKA_BOOTSTRAP=kafka:notaport: ")


# --- TigerBeetle ---------------------------------------------------------------------------------


def test_an_unreachable_tigerbeetle_names_its_setting():
    port = free_port()
    env = {"KEYLEDGER_LEDGER": "tigerbeetle", "KEYLEDGER_TB_ADDRESSES": f"127.0.0.1:{port}",
           "KEYLEDGER_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}
    line = one_line(keyledger("audit", "verify", env=env), 2)
    assert line.startswith("keyledger audit verify: cannot reach TigerBeetle at")
    assert "KEYLEDGER_TB_ADDRESSES" in line


@pytest.mark.parametrize("addresses", ["127.0.0.1:notaport", "3000,,3001", "127.0.0.1:70000"])
def test_malformed_tigerbeetle_addresses_are_refused(addresses):
    env = {"KEYLEDGER_LEDGER": "tigerbeetle", "KEYLEDGER_TB_ADDRESSES": addresses}
    line = one_line(keyledger("audit", "verify", env=env), 2)
    assert line.startswith(f"keyledger audit verify: KEYLEDGER_TB_ADDRESSES={addresses}: ")


def test_an_unresolvable_tigerbeetle_host_is_named():
    env = {"KEYLEDGER_LEDGER": "tigerbeetle", "KEYLEDGER_TB_ADDRESSES": "no-such-host.invalid:3000"}
    line = one_line(keyledger("status", env={**env, "KEYLEDGER_KAFKA_BOOTSTRAP": "127.0.0.1:1"}), 2)
    assert "KEYLEDGER_TB_ADDRESSES: cannot resolve 'no-such-host.invalid'" in line


# --- settings ------------------------------------------------------------------------------------


def test_a_kek_that_is_not_base64_is_refused_without_echoing_it():
    result = keyledger("run", env={"KEYLEDGER_LOCAL_KEK": SECRET_KEK_TEXT})
    line = one_line(result, 2)
    assert line.startswith("keyledger run: KEYLEDGER_LOCAL_KEK: not base64")
    assert SECRET_KEK_TEXT not in result.stdout + result.stderr


def test_a_kek_of_the_wrong_length_is_refused_without_echoing_it():
    short = base64.b64encode(b"k" * 16).decode()
    result = keyledger("dev", env={"KEYLEDGER_LOCAL_KEK": short})
    assert "decodes to 16 bytes, not 32" in one_line(result, 2)
    assert short not in result.stdout + result.stderr


def test_the_production_refusal_has_no_pydantic_prefix():
    line = one_line(keyledger("run", env={"KEYLEDGER_PROFILE": "production"}), 2)
    assert line.startswith("keyledger run: KEYLEDGER_PROFILE=production refuses KEYLEDGER_KMS_PROVIDER=local")
    assert "Value error" not in line and "KEYLEDGER_:" not in line


@pytest.mark.parametrize(("name", "value", "says"), [
    ("KEYLEDGER_LEDGER", "postgres", "input should be 'tigerbeetle' or 'memory'"),
    ("KEYLEDGER_KMS_PROVIDER", "ibm", "input should be"),  # gcp is a provider since issue 28
    ("KEYLEDGER_PROFILE", "staging", "input should be 'dev' or 'production'"),
    ("KEYLEDGER_ROTATION_AGE", "ninety days", "input should be a valid integer"),
])
def test_bad_values_name_the_setting_and_the_accepted_ones(name, value, says):
    line = one_line(keyledger("run", env={name: value}), 2)
    assert line == f"keyledger run: {name}={value}: {says}" or line.startswith(f"keyledger run: {name}={value}: {says}")


def test_a_misspelt_setting_stops_with_the_closest_name():
    line = one_line(keyledger("run", env={"KEYLEDGER_KAFKA_BOOTSTRAPS": "127.0.0.1:9092"}), 2)
    assert line == ("keyledger run: KEYLEDGER_KAFKA_BOOTSTRAPS is not a keyledger setting "
                    "(did you mean KEYLEDGER_KAFKA_BOOTSTRAP?): rename or unset it")


def test_run_without_a_profile_refuses_development_parts_by_name():
    line = one_line(keyledger("run"), 2)
    assert line.startswith("keyledger run: KEYLEDGER_PROFILE is unset, so `keyledger run` uses no development-only")
    for named in ("KEYLEDGER_KMS_PROVIDER=local", "KEYLEDGER_LEDGER=memory", "KEYLEDGER_KAFKA_BOOTSTRAP is unset",
                  "KEYLEDGER_PROFILE=dev"):
        assert named in line


def test_production_refuses_plaintext_kafka_unless_told():
    env = {"KEYLEDGER_PROFILE": "production", "KEYLEDGER_KAFKA_BOOTSTRAP": "kafka:9092", "KEYLEDGER_KMS_PROVIDER": "aws",
           "KEYLEDGER_KMS_KEY_ID": "alias/k", "KEYLEDGER_LEDGER": "tigerbeetle", "KEYLEDGER_TB_ADDRESSES": "3000"}
    line = one_line(keyledger("run", env=env), 2)
    assert line.startswith("keyledger run: KEYLEDGER_PROFILE=production refuses KEYLEDGER_KAFKA_SECURITY_PROTOCOL="
                           "PLAINTEXT (set SSL or SASL_SSL, or KEYLEDGER_KAFKA_ALLOW_PLAINTEXT=true")


def test_the_aws_provider_without_a_region_anywhere_stops_at_start():
    env = {"KEYLEDGER_KMS_PROVIDER": "aws", "KEYLEDGER_KMS_KEY_ID": "alias/keyledger", "KEYLEDGER_LEDGER": "memory",
           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
           "AWS_REGION": "", "AWS_DEFAULT_REGION": "", "AWS_PROFILE": ""}
    result = keyledger("demo", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "Unclosed" not in result.stderr
    *started, line = result.stderr.splitlines()  # demo says first where its embedded broker listens
    assert all(" INFO " in earlier for earlier in started), result.stderr
    assert line.startswith("keyledger demo: KEYLEDGER_KMS_PROVIDER uses aws but no AWS region is set: set "
                           "KEYLEDGER_AWS_REGION (or AWS_REGION, AWS_DEFAULT_REGION")


def test_a_sasl_password_is_never_shown(tmp_path):
    password = tmp_path / "password"
    password.write_text("hunter2-but-longer")
    env = {"KEYLEDGER_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}", "KEYLEDGER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
           "KEYLEDGER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256", "KEYLEDGER_KAFKA_SASL_USERNAME": "keyledger",
           "KEYLEDGER_KAFKA_SASL_PASSWORD_FILE": str(password), "KEYLEDGER_LOG_LEVEL": "DEBUG"}
    result = keyledger("status", env=env)
    assert result.returncode == 2 and "hunter2" not in result.stdout + result.stderr


def test_the_dev_port_in_use_is_named():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        line = one_line(keyledger("dev", env={"KEYLEDGER_DEV_PORT": str(port)}), 2)
    assert line.startswith(f"keyledger dev: KEYLEDGER_DEV_PORT={port} is in use")


# --- inputs and checks -----------------------------------------------------------------------------


def test_verify_on_a_missing_file_says_so_before_any_connection(tmp_path):
    missing = tmp_path / "nope.jsonl"
    # an unreachable bootstrap: a line about Kafka would prove the file was not checked first
    line = one_line(keyledger("verify", str(missing), env={"KEYLEDGER_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}), 2)
    assert line == f"keyledger verify: cannot read {missing}: No such file or directory"


def test_audit_verify_refuses_the_memory_ledger_in_one_line():
    # a reachable-looking bootstrap must not matter: the refusal comes before any connection
    line = one_line(keyledger("audit", "verify", env={"KEYLEDGER_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}), 2)
    assert "the ledger (memory) lives inside the process that runs the workers" in line
    assert "keyledger demo" in line and "MISMATCH" not in line


@pytest.mark.parametrize("how", [("--debug",), ()])
def test_debug_shows_the_traceback(how):
    env = {"KEYLEDGER_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}
    if not how:
        env["KEYLEDGER_LOG_LEVEL"] = "DEBUG"
    result = keyledger(*how, "rotate", "--all", env=env)
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("keyledger rotate: cannot reach Kafka")


def test_version_and_help_explain_the_cli():
    version = keyledger("--version")
    assert version.returncode == 0 and version.stdout.startswith("keyledger ")
    assert version.stdout.split()[1][0].isdigit()
    main_help = keyledger("--help").stdout
    assert "later issues" not in main_help
    for verb in (["run"], ["dev"], ["demo"], ["verify"], ["rotate"], ["status"], ["audit", "verify"]):
        shown = keyledger(*verb, "--help")
        assert shown.returncode == 0
        assert "example:" in shown.stdout, verb
        assert f"keyledger {' '.join(verb)}" in shown.stdout.split("example:")[1], verb


# --- client hygiene ------------------------------------------------------------------------------


async def test_a_failed_read_or_produce_leaves_no_unclosed_client(not_kafka, caplog):
    import gc

    from aiokafka.errors import KafkaConnectionError

    from workers.kafka.tap import produce, read_topic

    bootstrap = f"127.0.0.1:{not_kafka.port}"
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        with pytest.raises(KafkaConnectionError):
            await read_topic(bootstrap, "keys.events", timeout=5)
        with pytest.raises(KafkaConnectionError):
            await produce(bootstrap, "tenants.created", [(b"k", b"v")])
        gc.collect()
    assert not_kafka.accepted >= 2  # both clients did try
    assert not [r for r in caplog.records if "Unclosed" in r.getMessage()]


def test_a_key_value_that_begins_with_a_dash_stays_the_options_value():
    from workers.app.cli import attached_key_values

    assert attached_key_values(["audit", "report", "verify", "r.html", "--public-key", "-Xk9", "--debug"]) == [
        "audit", "report", "verify", "r.html", "--public-key=-Xk9", "--debug"]
    assert attached_key_values(["audit", "verify", "--digest-public-key", "-a", "--digest-public-key", "b"]) == [
        "audit", "verify", "--digest-public-key=-a", "--digest-public-key=b"]
    assert attached_key_values(["audit", "report", "verify", "r.html", "--public-key"]) == [
        "audit", "report", "verify", "r.html", "--public-key"]  # argparse says the value is missing
