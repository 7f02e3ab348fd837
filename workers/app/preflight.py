"""Checks a CLI verb makes before it opens a client: settings load, the broker and ledger answer; and,
before `keyledger run` consumes, what its groups need of the KMS and the broker (`preflight`).

A client library left to find out for itself gives a traceback (aiokafka), retries forever
and prints from native code (TigerBeetle), or waits 40 s; a TCP connect with a deadline
answers in at most `timeout` seconds and names the setting to fix. Passing the probe does not
prove the service is healthy, only that the address is right; later failures are explained
by workers.app.failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence

from pydantic import ValidationError

from schemas.messages import KeyType
from workers.errors import ConfigError
from workers.kms import Kms, KmsError, KmsRefused, KmsUnavailable, encryption_context
from workers.ledger.addresses import resolved_tb_addresses
from workers.settings import (
    KAFKA_DEFAULT_PORT,
    SECRET_SETTINGS,
    TB_DEFAULT_HOST,
    TB_DEFAULT_PORT,
    KafkaSecurity,
    KmsProvider,
    LedgerKind,
    Settings,
    env_name,
    parse_addresses,
)

PROBE_TIMEOUT = 5.0
CLUSTER_PROBE_TIMEOUT = 15.0
"""A TigerBeetle client registers before its first request is answered, and a busy replica (a shared
machine, a primary catching up) may take seconds over it: a wrong cluster id is only ever a silence."""


def load_settings() -> Settings:
    """Settings from the environment; ConfigError with one line per wrong setting."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError("\n".join(settings_problems(exc))) from exc


def settings_problems(exc: ValidationError) -> list[str]:
    """One line per problem: `KEYLEDGER_NAME=value: what is wrong and the fix` (no pydantic internals)."""
    lines = []
    for error in exc.errors():
        name = env_name(error["loc"])
        cause = error.get("ctx", {}).get("error")
        message = str(cause) if error["type"] == "value_error" and cause is not None else error["msg"]
        if name is None:  # a check of several settings (the production profile) names them itself
            lines.append(message)
            continue
        shown = error.get("input")
        if name not in SECRET_SETTINGS and isinstance(shown, str | int | float):
            name = f"{name}={shown}"
        lines.append(f"{name}: {message[:1].lower()}{message[1:]}")
    return lines


def require_bootstrap(settings: Settings) -> str:
    if not settings.kafka.bootstrap:
        raise ConfigError("KEYLEDGER_KAFKA_BOOTSTRAP is unset: set it to the broker that holds keyledger's topics "
                          "(`keyledger dev` prints an export line for it)")
    return settings.kafka.bootstrap


async def check_kafka(bootstrap: str, *, hint: str = "") -> None:
    """Some bootstrap address answers a Kafka ApiVersions request within PROBE_TIMEOUT (over TLS when
    KEYLEDGER_KAFKA_SECURITY_PROTOCOL says so: a wrong CA or a missing client certificate is named here)."""
    from workers.kafka.security import check_tls

    security = KafkaSecurity.from_environment()
    speaks = None if security.uses_tls else _kafka_answers
    reason = await _first_answer(parse_addresses(bootstrap, default_port=KAFKA_DEFAULT_PORT), speaks=speaks)
    if reason:
        raise ConfigError(f"cannot reach Kafka at {bootstrap} ({reason}): set KEYLEDGER_KAFKA_BOOTSTRAP to a running "
                          f"broker{hint}")
    if security.uses_tls:
        await check_tls(bootstrap, security)


async def check_topics(bootstrap: str, topics: list[str]) -> None:
    """The broker holds `topics` (a reader would otherwise wait its whole timeout for them to appear)."""
    from aiokafka import AIOKafkaConsumer

    from workers.kafka.security import client_options
    from workers.kafka.tap import started

    consumer = await started(AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                                **client_options()))
    try:
        missing = sorted(set(topics) - await consumer.topics())
    finally:
        await consumer.stop()
    if missing:
        raise ConfigError(f"{', '.join(missing)} not on the broker at {bootstrap}: no keyledger worker has run against "
                          "it (`keyledger run` or `keyledger dev` creates the topics), or KEYLEDGER_KAFKA_BOOTSTRAP "
                          "names another cluster")


async def check_ledger(settings: Settings) -> None:
    """A TigerBeetle ledger must answer at its address; the memory ledger needs nothing."""
    if settings.ledger.kind is not LedgerKind.TIGERBEETLE:
        return
    if not settings.ledger.tb_addresses:
        raise ConfigError("KEYLEDGER_LEDGER=tigerbeetle needs KEYLEDGER_TB_ADDRESSES (the replicas' host:port list)")
    addresses = resolved_tb_addresses(settings.ledger.tb_addresses)
    reason = await _first_answer(parse_addresses(addresses, default_port=TB_DEFAULT_PORT, default_host=TB_DEFAULT_HOST))
    if reason:
        raise ConfigError(f"cannot reach TigerBeetle at {settings.ledger.tb_addresses} ({reason}): start it, or fix "
                          "KEYLEDGER_TB_ADDRESSES (`keyledger dev` prints the address of the one it runs)")
    await check_cluster(settings.ledger.tb_addresses, settings.ledger.tb_cluster_id)


async def check_cluster(addresses: str, cluster_id: int, timeout: float = CLUSTER_PROBE_TIMEOUT) -> None:
    """The replicas that accept connections answer a request as cluster `cluster_id`.

    A replica drops, without a word, every message of another cluster: a wrong id looks like a server
    that never answers. When it does not answer as `cluster_id`, the same request as cluster 0 (what
    `tigerbeetle format` and `keyledger dev` use unless told) is asked at the same time, so the line can
    say which cluster the server is."""
    asked = [cluster_id] if cluster_id == 0 else [cluster_id, 0]
    answers = await asyncio.gather(*(_answers_as(addresses, c, timeout) for c in asked))
    if answers[0]:
        return
    if len(answers) > 1 and answers[1]:
        raise ConfigError(f"TigerBeetle at {addresses} accepts connections but did not answer as cluster {cluster_id} "
                          f"within {timeout:g}s (it answers as cluster 0): set KEYLEDGER_TB_CLUSTER_ID to the "
                          "--cluster its data file was formatted with")
    raise ConfigError(f"TigerBeetle at {addresses} accepts connections but did not answer as cluster {cluster_id} "
                      f"within {timeout:g}s: it is overloaded or has no quorum, or its data file was formatted with "
                      "another --cluster (set KEYLEDGER_TB_CLUSTER_ID to it)")


async def _answers_as(addresses: str, cluster_id: int, timeout: float) -> bool:
    from workers.ledger import LedgerUnavailable
    from workers.ledger.tigerbeetle import TigerBeetleLedger

    ledger = TigerBeetleLedger(addresses, cluster_id, batch_max=1, timeout=timeout)
    try:
        await ledger.lookup_accounts([1])  # any answer, an empty one too, is the cluster's
        return True
    except LedgerUnavailable:
        return False
    finally:
        with contextlib.suppress(Exception):
            await ledger.aclose()


Speaks = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[str | None]]


async def _first_answer(addresses: list[tuple[str, int]], *, speaks: Speaks | None = None,
                        timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when any address answers within `timeout` (connects, and `speaks` finds its protocol), else why
    the first one did not."""
    reasons = await asyncio.gather(*(_probe(host, port, speaks, timeout) for host, port in addresses))
    return None if any(r is None for r in reasons) else reasons[0]


async def _probe(host: str, port: int, speaks: Speaks | None, timeout: float) -> str | None:
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                return await speaks(reader, writer) if speaks else None
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except OSError as exc:
        return _os_reason(exc)


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror) or not exc.errno:
        return (exc.strerror or str(exc)).lower()
    return os.strerror(exc.errno).lower()  # asyncio's own text is "Connect call failed (...)"


_API_VERSIONS = 18
_PROBE_ID = 0x6B6C6467  # any correlation id; the answer must carry it back


async def _kafka_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str | None:
    """Send ApiVersions v0 (every Kafka broker answers it, before any other request) and read the reply."""
    client_id = b"keyledger-preflight"
    body = struct.pack(">hhih", _API_VERSIONS, 0, _PROBE_ID, len(client_id)) + client_id
    try:
        writer.write(struct.pack(">i", len(body)) + body)
        await writer.drain()
        _size, correlation = struct.unpack(">ii", await reader.readexactly(8))
    except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError):
        # the peer accepted the connection and then closed it, before or after our request reached it
        return "the connection was closed without a Kafka answer: is it a Kafka broker?"
    return None if correlation == _PROBE_ID else "the answer is not Kafka's: is it a Kafka broker?"


# --- at `keyledger run`: each group's KMS rights and the broker's topics ----------------------------------

KMS_PROBE_TIMEOUT = 15.0  # the adapter's own retries run inside it
PREFLIGHT_TENANT = "keyledger-system"  # the reserved tenant: a probe's encryption context names no real tenant
PREFLIGHT_KEY_ID = "0" * 32
# what each group's KMS role allows (docs/vault-kubernetes.md); the check asks for that and no more
VAULT_NEEDS: dict[str, tuple[str, ...]] = {
    "keyledger-keygen": ("encrypt",),
    "keyledger-rotation": ("encrypt", "decrypt", "rewrap"),
    "keyledger-signer": ("decrypt",),
    "keyledger-pii": ("decrypt",),
    "keyledger-audit-digest": ("encrypt", "decrypt"),
}
# groups that make data keys under the default key: their check makes one (AWS GenerateDataKey)
GENERATING = frozenset({"keyledger-keygen", "keyledger-rotation"})
# AWS error codes that say the request was not signed by credentials AWS accepts
CREDENTIAL_CODES = frozenset({"UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException",
                              "IncompleteSignature", "MissingAuthenticationToken", "InvalidClientTokenId",
                              "NoCredentialsError", "PartialCredentialsError"})


async def preflight(settings: Settings, bootstrap: str | None, groups: Sequence[str]) -> None:
    """Before `keyledger run` consumes anything: each configured KMS provider allows what these groups do,
    and the broker holds their topics. ConfigError with one line per failure, each naming the setting
    and what was tried."""
    problems = await check_kms(settings, groups)
    if not problems and bootstrap:  # topics are created only for a process that will run
        problems = await check_group_topics(settings, bootstrap)
    if problems:
        raise ConfigError("\n".join(problems))


async def check_kms(settings: Settings, groups: Sequence[str]) -> list[str]:
    from workers.kms.factory import open_provider

    problems = []
    for provider in settings.kms.configured_providers:
        if provider is KmsProvider.LOCAL:
            continue  # in this process: nothing to reach
        try:
            kms = open_provider(settings.kms, provider)
        except ValueError as exc:  # a provider's settings that do not go together
            problems.append(str(exc))
            continue
        try:
            async with asyncio.timeout(KMS_PROBE_TIMEOUT):
                if provider is KmsProvider.AWS:
                    problems += await _aws_problems(settings, kms, groups)
                elif provider is KmsProvider.VAULT:
                    problems += await _vault_problems(settings, kms, groups)
                else:
                    problems += await _key_store_problems(provider, kms, groups)
        except TimeoutError:
            problems.append(f"KEYLEDGER_KMS_PROVIDER={provider.value}: no answer within {KMS_PROBE_TIMEOUT:g}s "
                            f"({_kms_where(settings, provider)}): check that address and the network")
        finally:
            with contextlib.suppress(Exception):
                await kms.aclose()
    return problems


async def _aws_problems(settings: Settings, kms: Kms, groups: Sequence[str]) -> list[str]:
    """keygen and rotation: a GenerateDataKey under the default key; any other group: a DescribeKey, where
    an AccessDenied still proves the KMS was reached and took the credentials."""
    generating = sorted(GENERATING & set(groups))
    key = f"KEYLEDGER_KMS_KEY_ID={settings.kms.key_id}"
    where = _kms_where(settings, KmsProvider.AWS)
    context = encryption_context(PREFLIGHT_TENANT, PREFLIGHT_KEY_ID, KeyType.ENCRYPTION)
    operation = "GenerateDataKey" if generating else "DescribeKey"
    tried = f"{operation} for {', '.join(generating or groups)} ({where})"
    try:
        if generating:
            await kms.generate_data_key(None, context)  # the data key is dropped unused
        else:
            await kms.describe_key(kms.default_key_id)
        return []
    except KmsRefused as exc:
        code = str(exc).partition(": ")[2]
        detail = f" ({exc.detail})" if exc.detail else ""
        if code == "AccessDeniedException" and not generating:
            return []  # answered, and it knew the caller: all a group that only unwraps needs to know now
        if code in CREDENTIAL_CODES:
            return [f"AWS credentials refused: {tried} failed with {code}{detail}: check AWS_PROFILE, "
                    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the pod's role"]
        if code == "NotFoundException":
            return [f"{key}: {tried} found no such key{detail}: check the key id and the region "
                    "(KEYLEDGER_AWS_REGION)"]
        if code == "AccessDeniedException":
            return [f"{key}: {tried} was denied{detail}: the credentials need kms:GenerateDataKey on that key"]
        return [f"{key}: {tried} was refused: {code}{detail}"]
    except KmsUnavailable as exc:
        code = str(exc).partition(": ")[2]
        if code in CREDENTIAL_CODES:
            return [f"no AWS credentials: {tried} failed with {code}: set AWS_PROFILE or "
                    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or give the pod a role"]
        return [f"cannot reach the KMS: {tried} failed with {code}: check KEYLEDGER_KMS_ENDPOINT_URL and "
                "KEYLEDGER_AWS_REGION"]


async def _vault_problems(settings: Settings, kms: Kms, groups: Sequence[str]) -> list[str]:
    """The token's capabilities on the default Transit key's paths these groups use (sys/capabilities-self)."""
    from workers.kms.vault import VaultKms

    if not isinstance(kms, VaultKms):
        return []
    needs = sorted({op for group in groups for op in VAULT_NEEDS.get(group, ())})
    paths = {op: kms.transit_path(op) for op in needs}
    tried = f"sys/capabilities-self at KEYLEDGER_VAULT_ADDR={settings.kms.vault.addr}"
    try:
        held = await kms.token_capabilities(list(paths.values()))
    except KmsRefused as exc:
        return [f"the Vault token (KEYLEDGER_VAULT_AUTH={settings.kms.vault.auth.value}) was refused: {tried} "
                f"answered {exc}: check the token, role or secret"]
    except KmsUnavailable as exc:
        return [f"cannot reach Vault: {tried} failed with {exc}: check KEYLEDGER_VAULT_ADDR"]
    problems = []
    for op, path in paths.items():
        if not {"update", "root", "sudo"} & set(held.get(path, [])):
            users = ", ".join(g for g in groups if op in VAULT_NEEDS.get(g, ()))
            problems.append(f"KEYLEDGER_VAULT_KEY={settings.kms.vault.key}: the Vault token may not update {path} "
                            f"({tried} says {'/'.join(held.get(path) or ['nothing'])}), which {users} needs: "
                            "see docs/vault-kubernetes.md for each group's policy")
    return problems


async def _key_store_problems(provider: KmsProvider, kms: Kms, groups: Sequence[str]) -> list[str]:
    """pkcs11, gcp, azure: keygen and rotation wrap a data key under the default key; any other group
    reads the default key (its identity), which proves reach, credentials and that the key exists."""
    generating = sorted(GENERATING & set(groups))
    operation = "a data key wrapped" if generating else "the key described"
    tried = f"{operation} under {kms.default_key_id} for {', '.join(generating or groups)}"
    try:
        if generating:
            context = encryption_context(PREFLIGHT_TENANT, PREFLIGHT_KEY_ID, KeyType.ENCRYPTION)
            await kms.generate_data_key(None, context)  # the data key is dropped unused
        else:
            await kms.describe_key(kms.default_key_id)
        return []
    except KmsError as exc:
        kind = "was refused" if isinstance(exc, KmsRefused) else "could not reach it"
        return [f"KEYLEDGER_KMS_PROVIDER={provider.value}: {tried} {kind} ({exc}): check the "
                f"KEYLEDGER_{provider.value.upper()}_* settings (docs/runbooks/{provider.value}.md)"]


def _kms_where(settings: Settings, provider: KmsProvider) -> str:
    if provider is KmsProvider.VAULT:
        return f"KEYLEDGER_VAULT_ADDR={settings.kms.vault.addr}"
    if provider not in (KmsProvider.AWS, KmsProvider.LOCAL):
        return f"the KEYLEDGER_{provider.value.upper()}_* settings"
    endpoint = f"KEYLEDGER_KMS_ENDPOINT_URL={settings.kms.aws.endpoint_url}" if settings.kms.aws.endpoint_url else "AWS"
    return f"region {settings.kms.aws.region}, {endpoint}"


async def check_group_topics(settings: Settings, bootstrap: str) -> list[str]:
    """Every topic keyledger uses exists on the broker, created as `run` would create it when missing."""
    from aiokafka.errors import KafkaError

    from schemas.topics import Topic
    from workers.kafka.topics import ensure_topics

    try:
        await ensure_topics(bootstrap, settings)
    except KafkaError as exc:
        return [f"KEYLEDGER_KAFKA_BOOTSTRAP={bootstrap}: the topics could not be listed or created ({exc}): "
                "check the broker's ACLs for this principal"]
    try:
        await check_topics(bootstrap, [t.value for t in Topic])
    except ConfigError as exc:
        return [str(exc)]
    return []
