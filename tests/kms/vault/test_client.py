"""HTTP to Vault (client.py): retries of transient answers against a scripted HTTP server; against real
OpenBao dev servers, how the server's failures map onto the port (sealed, rate-limited), TLS trust,
namespaces."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.kms.vault.bao import ACME, fresh_name
from workers.app.openbao import OpenBaoDevServer
from workers.kms import DataKeyRequest, KmsThrottled, KmsUnavailable
from workers.kms.vault import TokenAuth, VaultKms
from workers.kms.vault.client import VaultClient


@pytest.fixture
def scripted() -> Iterator[tuple[str, list[tuple[int, dict]], list[dict[str, str]]]]:
    """An HTTP server answering each request with the next (status, JSON body) of a script; yields its
    address, the script to fill, and the headers of each request it received."""
    script: list[tuple[int, dict]] = []
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append(dict(self.headers))
            status, body = script.pop(0)
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", script, seen
    server.shutdown()
    server.server_close()


async def test_transient_answers_are_retried_until_one_is_not(scripted):
    addr, script, seen = scripted
    script += [(503, {"errors": ["Vault is sealed"]}), (429, {"errors": ["rate limited"]}),
               (400, {"errors": ["1 error occurred:\n\t* invalid ciphertext\n\n"]})]
    client = VaultClient(addr, namespace="team", timeout=5, max_attempts=4)
    try:
        assert await client.send("POST", "transit/decrypt/k", {}, "the-token") == (
            400, {"errors": ["1 error occurred:\n\t* invalid ciphertext\n\n"]})
        assert client.requests == 3 and script == []
        assert all(h["X-Vault-Token"] == "the-token" and h["X-Vault-Namespace"] == "team" for h in seen)
    finally:
        await client.aclose()


async def test_retries_stop_at_max_attempts_with_the_last_failure(scripted):
    addr, script, _ = scripted
    script += [(503, {"errors": ["standby"]}), (429, {"errors": ["rate limited"]})]
    client = VaultClient(addr, timeout=5, max_attempts=2)
    try:
        with pytest.raises(KmsThrottled, match="transit/encrypt/k: vault 429 rate limited"):
            await client.send("POST", "transit/encrypt/k", {}, None)
        assert client.requests == 2
    finally:
        await client.aclose()


@pytest.mark.integration  # starts its own OpenBao server
async def test_a_sealed_vault_is_unavailable_within_the_timeout():
    with OpenBaoDevServer() as bao:
        kms = VaultKms(bao.addr, TokenAuth(bao.token), timeout=1.0)
        try:
            data_key = await kms.generate_data_key(None, ACME)
            bao.admin("POST", "sys/seal", {})
            started = time.monotonic()
            with pytest.raises(KmsUnavailable, match="503 Vault is sealed") as unavailable:
                await kms.decrypt(data_key.wrapped, data_key.kms_key_id, ACME)
            assert time.monotonic() - started < 1.5
            assert not isinstance(unavailable.value, KmsThrottled)
            results = await kms.generate_data_keys([DataKeyRequest(None, ACME)] * 2)
            assert all(isinstance(r, KmsUnavailable) for r in results)
        finally:
            await kms.aclose()


async def test_rate_limited_calls_are_throttled(openbao):
    kms = VaultKms(openbao.addr, TokenAuth(openbao.token), default_key_id=fresh_name(), timeout=0.5)
    quota = fresh_name("quota")
    try:
        data_key = await kms.generate_data_key(None, ACME)
        openbao.admin("POST", f"sys/quotas/rate-limit/{quota}",
                      {"rate": 1, "interval": "10s", "path": f"transit/decrypt/{kms.default_key_id}"})
        outcomes = await asyncio.gather(*(kms.decrypt(data_key.wrapped, data_key.kms_key_id, ACME) for _ in range(5)),
                                        return_exceptions=True)
        assert outcomes.count(data_key.plaintext) >= 1
        throttled = [o for o in outcomes if isinstance(o, BaseException)]
        assert throttled and all(isinstance(o, KmsThrottled) and "429" in str(o) for o in throttled)
    finally:
        openbao.admin("DELETE", f"sys/quotas/rate-limit/{quota}")
        await kms.aclose()


@pytest.mark.integration  # starts its own OpenBao server over TLS
async def test_tls_needs_the_ca_cert():
    with OpenBaoDevServer(tls=True) as bao:
        trusted = VaultKms(bao.addr, TokenAuth(bao.token), ca_cert=bao.ca_cert)
        untrusted = VaultKms(bao.addr, TokenAuth(bao.token), timeout=1.0)
        try:
            data_key = await trusted.generate_data_key(None, ACME)
            assert await trusted.decrypt(data_key.wrapped, data_key.kms_key_id, ACME) == data_key.plaintext
            with pytest.raises(KmsUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusted.decrypt(data_key.wrapped, data_key.kms_key_id, ACME)
        finally:
            await trusted.aclose()
            await untrusted.aclose()


async def test_a_namespace_is_sent_with_every_call(openbao):
    namespace = fresh_name("ns")
    openbao.admin("POST", f"sys/namespaces/{namespace}", {})
    openbao.admin("POST", "sys/mounts/transit", {"type": "transit"}, namespace=namespace)
    key = fresh_name()
    kms = VaultKms(openbao.addr, TokenAuth(openbao.token), default_key_id=key, namespace=namespace)
    try:
        data_key = await kms.generate_data_key(None, ACME)
        assert await kms.decrypt(data_key.wrapped, key, ACME) == data_key.plaintext
        assert openbao.admin("GET", f"transit/keys/{key}", namespace=namespace)["data"]["derived"] is True
        with pytest.raises(urllib.error.HTTPError):
            openbao.admin("GET", f"transit/keys/{key}")  # not in the root namespace
    finally:
        await kms.aclose()
