"""Settings checks and the dev stack's choices: one line per problem, secrets never quoted."""

from __future__ import annotations

import base64
import socket

import pytest
from pydantic import ValidationError

from workers.app.dev import DEFAULT_DEV_PORT, DevStack, banner, choose_port, wants_tigerbeetle
from workers.app.preflight import settings_problems
from workers.errors import ConfigError
from workers.ledger.addresses import resolved_tb_addresses
from workers.ledger.factory import describe_ledger
from workers.settings import LedgerKind, Settings, parse_addresses


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    import os

    for name in [n for n in os.environ if n.startswith("KEYLEDGER_")]:
        monkeypatch.delenv(name)


def problems(**fields) -> list[str]:
    with pytest.raises(ValidationError) as refused:
        Settings(**fields)
    return settings_problems(refused.value)


def test_a_good_kek_is_accepted_and_bad_ones_are_refused_without_quoting_them():
    good = base64.b64encode(bytes(range(32))).decode()
    assert Settings(local_kek=good).kms.local_kek == good
    for bad, says in (("!!not base64!!", "not base64"), (base64.b64encode(b"x" * 31).decode(), "decodes to 31 bytes")):
        with pytest.raises(ValidationError) as refused:
            Settings(local_kek=bad)
        assert bad not in str(refused.value)  # not even in pydantic's own text (a traceback would show it)
        [line] = settings_problems(refused.value)
        assert line.startswith(f"KEYLEDGER_LOCAL_KEK: {says}") and bad not in line


def test_each_wrong_setting_is_one_line_with_its_value():
    lines = problems(ledger="postgres", rotation_age="soon")
    assert lines == ["KEYLEDGER_LEDGER=postgres: input should be 'tigerbeetle' or 'memory'",
                     "KEYLEDGER_ROTATION_AGE=soon: input should be a valid integer, unable to parse string as an integer"]


def test_the_production_refusal_names_every_unsafe_setting_in_one_line():
    [line] = problems(profile="production")
    assert line.startswith("KEYLEDGER_PROFILE=production refuses KEYLEDGER_KMS_PROVIDER=local (set `aws`)")
    assert "KEYLEDGER_LEDGER=memory" in line and "KEYLEDGER_KAFKA_BOOTSTRAP is unset" in line


@pytest.mark.parametrize(("text", "pairs"), [
    ("3000", [("127.0.0.1", 3000)]),
    ("10.0.0.1:3000,10.0.0.2:3001", [("10.0.0.1", 3000), ("10.0.0.2", 3001)]),
    ("tb-0.tigerbeetle:3000", [("tb-0.tigerbeetle", 3000)]),
    ("[::1]:3000", [("::1", 3000)]),
    ("10.0.0.1", [("10.0.0.1", 3001)]),
])
def test_tigerbeetle_address_forms(text, pairs):
    assert parse_addresses(text, default_port=3001, default_host="127.0.0.1") == pairs
    assert Settings(tb_addresses=text).ledger.tb_addresses == text


@pytest.mark.parametrize("text", ["127.0.0.1:port", "3000,,3001", "10.0.0.1:0", "10.0.0.1:65536", ":3000", "a b:1"])
def test_malformed_addresses_are_refused(text):
    [line] = problems(tb_addresses=text)
    assert line.startswith(f"KEYLEDGER_TB_ADDRESSES={text}: ")
    [line] = problems(kafka_bootstrap=text)
    assert line.startswith(f"KEYLEDGER_KAFKA_BOOTSTRAP={text}: ")


def test_tigerbeetle_host_names_are_resolved_in_order():
    assert resolved_tb_addresses("localhost:3000,10.1.2.3:3001,3002") in (
        "127.0.0.1:3000,10.1.2.3:3001,127.0.0.1:3002", "[::1]:3000,10.1.2.3:3001,127.0.0.1:3002")
    with pytest.raises(ConfigError, match="KEYLEDGER_TB_ADDRESSES: cannot resolve 'no-such-host.invalid'"):
        resolved_tb_addresses("no-such-host.invalid:3000")


def test_the_ledger_is_named_tigerbeetle_only_when_it_is_one():
    assert describe_ledger(Settings().ledger) == "the ledger (memory)"
    assert describe_ledger(Settings(ledger=LedgerKind.TIGERBEETLE, tb_addresses="3000").ledger) == "TigerBeetle at 3000"


@pytest.mark.xdist_group("dev-port-9092")  # not beside test_dev's `keyledger dev`, which takes that port (pytest-xdist)
def test_dev_takes_the_default_port_when_free_and_says_why_when_not():
    with socket.socket() as holder:
        try:
            holder.bind(("127.0.0.1", DEFAULT_DEV_PORT))
        except OSError:
            pytest.skip(f"port {DEFAULT_DEV_PORT} is held by something else on this machine")
        holder.listen(1)
        port, note = choose_port(Settings())
        assert port != DEFAULT_DEV_PORT and note and f"port {DEFAULT_DEV_PORT} is in use" in note
        assert "KEYLEDGER_DEV_PORT" in note and str(port) in note
    port, note = choose_port(Settings())
    assert (port, note) == (DEFAULT_DEV_PORT, None)


def test_dev_starts_tigerbeetle_only_when_the_ledger_is_not_chosen(monkeypatch):
    monkeypatch.setenv("TIGERBEETLE_BIN", "/opt/tigerbeetle")
    assert wants_tigerbeetle(Settings()) == "/opt/tigerbeetle"
    assert wants_tigerbeetle(Settings(ledger=LedgerKind.MEMORY)) is None


def test_the_banner_exports_what_the_cli_verbs_need_and_warns():
    memory = banner(DevStack(Settings(), "127.0.0.1:9092", True, []), 6.4)
    assert "  export KEYLEDGER_KAFKA_BOOTSTRAP=127.0.0.1:9092" in memory
    assert not [line for line in memory if "KEYLEDGER_LEDGER" in line]
    assert not [line for line in memory if "TigerBeetle at" in line]
    assert any(line.startswith("WARNING: development only.") and "gone when dev stops" in line for line in memory)
    tigerbeetle = Settings(ledger=LedgerKind.TIGERBEETLE, tb_addresses="127.0.0.1:4000")
    lines = banner(DevStack(tigerbeetle, "127.0.0.1:9092", True, ["port 9092 is in use"], "/tmp/kl"), 6.4)
    assert "  export KEYLEDGER_LEDGER=tigerbeetle KEYLEDGER_TB_ADDRESSES=127.0.0.1:4000" in lines
    assert "note: port 9092 is in use" in lines
    assert not [line for line in lines if "KEK" in line and "=" in line]  # the CLI verbs need no KEK


def test_only_a_settings_error_is_explained_as_settings():
    from schemas.messages import KeyEvent
    from workers.app.failures import explain

    with pytest.raises(ValidationError) as record_error:
        KeyEvent.model_validate_json(b'{"type": "generated"}')
    message, code = explain(record_error.value)
    assert code == 1 and message.startswith("unexpected ValidationError") and "KEYLEDGER_" not in message
    with pytest.raises(ValidationError) as settings_error:
        Settings(ledger="postgres")
    assert explain(settings_error.value) == ("KEYLEDGER_LEDGER=postgres: input should be 'tigerbeetle' or 'memory'", 2)
