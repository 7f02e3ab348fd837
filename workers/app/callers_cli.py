"""`keyledger caller ...`, `keyledger operator keygen` and `keyledger client ...`: the verbs of trusted callers.

Builders in the shape of workers/app/cli.py's (each takes the subparsers and cli's verb factory, so
this module does not import cli). Inputs (files, arguments, settings) are checked before any
connection is opened; the caller secret is written to its file only, never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemas.messages import CallerKem
from schemas.topics import Topic
from workers.app.preflight import check_kafka, check_topics, load_settings, require_bootstrap
from workers.errors import ConfigError

Handler = Callable[[argparse.Namespace], int]
VerbFactory = Callable[..., argparse.ArgumentParser]
KEMS = [kem.value for kem in CallerKem]


async def _reach(bootstrap: str, *topics: str) -> None:
    await check_kafka(bootstrap)
    await check_topics(bootstrap, list(topics))


def _group(verbs: Any, name: str, summary: str) -> Any:
    parser = verbs.add_parser(name, help=summary, description=summary[:1].upper() + summary[1:] + ".")
    return parser.add_subparsers(dest="sub_verb", required=True)


# --- caller --------------------------------------------------------------------------------------


def add_caller(verbs: Any, verb: VerbFactory) -> None:
    callers = _group(verbs, "caller", "callers and their policy (keys.callers, signed by the operator key)")
    add = verb(callers, "add", _caller_add, summary="register a caller, or its next policy version",
               description="Issue the caller a fresh HMAC secret (from the KMS; the record keeps it KMS-wrapped) and\n"
                           "publish its policy on keys.callers, signed by the operator key: the tenants and\n"
                           "operations it may ask for, and the HPKE public key its results are sealed to. A known\n"
                           "name gets its next version (and a new secret). The secret goes to --secret-out only\n"
                           "(created 0600, never overwritten), never to the screen. The version is pinned in the\n"
                           "ledger (KEYLEDGER_LEDGER) before it is published: workers refuse a lower one.",
               example="keyledger caller add billing --tenants acme,globex --operations encrypt,decrypt "
                       "--public-key billing/caller.pub --operator-key ops/operator.key --secret-out billing.secret")
    add.add_argument("name", help="the caller's name (a-z 0-9 . _ -): its id is derived from it")
    add.add_argument("--tenants", required=True, help="tenant ids, comma separated, or '*' for every tenant")
    add.add_argument("--operations", required=True, help="comma separated: encrypt, decrypt, reencrypt, sign")
    add.add_argument("--public-key", required=True, type=Path,
                     help="the caller's HPKE public key (caller.pub of `caller keygen`, or base64url raw with --kem)")
    add.add_argument("--kem", choices=KEMS, help="the public key's KEM (read from caller.pub when omitted)")
    add.add_argument("--operator-key", required=True, type=Path, help="the operator's private key file")
    add.add_argument("--secret-out", required=True, type=Path, help="new file (0600) for the caller's credential")
    verb(callers, "list", _caller_list, summary="the callers on keys.callers, as the workers see them",
         description="Every caller's latest policy signed by KEYLEDGER_OPERATOR_PUBLIC_KEY (name, id, version,\n"
                     "state, KEM, operations and tenants), and the records that key did not sign.",
         example="KEYLEDGER_OPERATOR_PUBLIC_KEY=$(cat ops/operator.pub) keyledger caller list")
    revoke = verb(callers, "revoke", _caller_revoke, summary="revoke a caller: it grants nothing from now on",
                  description="Publish the caller's next policy version with revoked=true, signed by the operator key,\n"
                              "pinned in the ledger first (workers then refuse the caller's older records).\n"
                              "Exits 1 when no such caller signed by that key exists.",
                  example="keyledger caller revoke billing --operator-key ops/operator.key")
    revoke.add_argument("name", help="the caller's name")
    revoke.add_argument("--operator-key", required=True, type=Path, help="the operator's private key file")
    keygen = verb(callers, "keygen", _caller_keygen, summary="make a caller's HPKE key pair",
                  description="Write caller.key (private, 0600) and caller.pub into DIR. Results are sealed to the\n"
                              "public half; the private half stays with the caller.",
                  example="keyledger caller keygen --out billing --kem mlkem768-x25519")
    keygen.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory for the two files")
    keygen.add_argument("--kem", choices=KEMS, default=CallerKem.X25519.value, help="HPKE KEM (default: x25519)")


def _caller_add(args: argparse.Namespace) -> int:
    from workers.kms.factory import open_kms
    from workers.ledger.factory import open_ledger
    from workers.tools.callers import (
        caller_add,
        load_operator_key,
        parse_operations,
        parse_tenants,
        read_caller_public_key,
    )

    settings = load_settings()
    bootstrap = require_bootstrap(settings)
    tenants, operations = parse_tenants(args.tenants), parse_operations(args.operations)
    kem, public = read_caller_public_key(args.public_key, CallerKem(args.kem) if args.kem else None)
    operator = load_operator_key(args.operator_key)
    if args.secret_out.exists():
        raise ConfigError(f"--secret-out {args.secret_out} exists: a credential file is never overwritten")

    async def checked_add() -> int:
        await _reach(bootstrap, Topic.KEYS_CALLERS)
        kms, ledger = open_kms(settings.kms), open_ledger(settings.ledger)
        try:
            policy = await caller_add(bootstrap, kms, operator, args.name, ledger=ledger, tenants=tenants,
                                      operations=operations, kem=kem, caller_public_key=public,
                                      secret_out=args.secret_out)
        finally:
            await kms.aclose()
            await ledger.aclose()
        print(f"caller {policy.name} ({policy.caller_id}) version {policy.version}: "
              f"{','.join(o.value for o in policy.operations)} on "
              f"{policy.tenants if isinstance(policy.tenants, str) else ','.join(policy.tenants)}; "
              f"credential written to {args.secret_out} (0600)")
        return 0

    return asyncio.run(checked_add())


def _operator_public_key() -> Any:
    from workers.core.callers import operator_public_key

    settings = load_settings()
    if not settings.callers.operator_public_key:
        raise ConfigError("KEYLEDGER_OPERATOR_PUBLIC_KEY is not set: set it to the content of operator.pub "
                          "(`keyledger operator keygen` writes it)")
    try:
        return operator_public_key(settings.callers.operator_public_key)
    except ValueError:
        raise ConfigError("KEYLEDGER_OPERATOR_PUBLIC_KEY: not base64url of a 32-byte Ed25519 public key") from None


def _caller_list(args: argparse.Namespace) -> int:
    from workers.tools.callers import read_policies, render

    bootstrap = require_bootstrap(load_settings())
    operator = _operator_public_key()

    async def checked_list() -> int:
        await _reach(bootstrap, Topic.KEYS_CALLERS)
        print(render(await read_policies(bootstrap, operator)))
        return 0

    return asyncio.run(checked_list())


def _caller_revoke(args: argparse.Namespace) -> int:
    from workers.ledger.factory import open_ledger
    from workers.tools.callers import caller_revoke, load_operator_key

    settings = load_settings()
    bootstrap = require_bootstrap(settings)
    operator = load_operator_key(args.operator_key)

    async def checked_revoke() -> int:
        await _reach(bootstrap, Topic.KEYS_CALLERS)
        ledger = open_ledger(settings.ledger)
        try:
            policy = await caller_revoke(bootstrap, operator, args.name, ledger=ledger)
        finally:
            await ledger.aclose()
        print(f"caller {policy.name} ({policy.caller_id}) revoked at version {policy.version}")
        return 0

    return asyncio.run(checked_revoke())


def _caller_keygen(args: argparse.Namespace) -> int:
    from workers.tools.callers import caller_keygen

    private, public = caller_keygen(args.out, CallerKem(args.kem))
    print(f"{args.kem} key pair: {private} (private, 0600), {public} (public: give it to `keyledger caller add`)")
    return 0


# --- operator ------------------------------------------------------------------------------------


def add_operator(verbs: Any, verb: VerbFactory) -> None:
    operator = _group(verbs, "operator", "the operator key that signs caller policies")
    keygen = verb(operator, "keygen", _operator_keygen, summary="make the operator's Ed25519 key pair",
                  description="Write operator.key (private, 0600) and operator.pub into DIR. Configure every worker\n"
                              "with KEYLEDGER_OPERATOR_PUBLIC_KEY=<content of operator.pub>; keep operator.key offline.",
                  example="keyledger operator keygen --out ops")
    keygen.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory for the two files")


def _operator_keygen(args: argparse.Namespace) -> int:
    from workers.tools.callers import operator_keygen

    private, public = operator_keygen(args.out)
    print(f"operator key pair: {private} (private, 0600), {public} "
          f"(KEYLEDGER_OPERATOR_PUBLIC_KEY={public.read_text().strip()})")
    return 0


# --- client --------------------------------------------------------------------------------------


def add_client(verbs: Any, verb: VerbFactory) -> None:
    client = _group(verbs, "client", "the caller side: proved requests, sealed results, for shells")
    for operation, what in (("encrypt", "values"), ("decrypt", "ciphertexts")):
        parser = verb(client, operation, _client_pii, summary=f"{operation} fields as a caller",
                      description=f"Produce one proved {operation} request to pii.requests and print its result from\n"
                                  f"pii.results as JSON{' (sealed fields opened with --private-key)' if operation == 'decrypt' else ''}.",
                      example=f"keyledger client {operation} --credential billing.secret "
                              f"{'--private-key billing/caller.key ' if operation == 'decrypt' else ''}"
                              f"--tenant acme --field email=...")
        _client_options(parser)
        parser.add_argument("--field", action="append", required=True, metavar="PATH=VALUE",
                            help=f"a field and its {what[:-1]} (repeat)")
        parser.add_argument("--record-id", help="the record the fields belong to (default: a new uuid)")
        if operation == "decrypt":
            parser.add_argument("--private-key", required=True, type=Path, help="the caller's private key file")
        parser.set_defaults(operation=operation)
    sign = verb(client, "sign", _client_sign, summary="sign a span as a caller",
                description="Produce one proved span to spans.to-sign and print the signed span from spans.signed\n"
                            "(one JSON line, for `keyledger verify`).",
                example="keyledger client sign --credential billing.secret --tenant acme --span span.json")
    _client_options(sign)
    sign.add_argument("--span", required=True, help="a file holding the span (a JSON object); - for stdin")


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--credential", required=True, type=Path, help="the credential file of `caller add`")
    parser.add_argument("--tenant", required=True, help="the tenant")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer (default 30)")


def _client(args: argparse.Namespace, private_key: Path | None = None) -> Any:
    from workers.client import CallerClient, CallerCredential, CallerKeyPair

    try:
        credential = CallerCredential.load(args.credential)
        keys = CallerKeyPair.load(private_key) if private_key is not None else None
        return CallerClient(credential, keys)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _client_pii(args: argparse.Namespace) -> int:
    from workers.tools.client import pii

    bootstrap = require_bootstrap(load_settings())
    fields = dict(field.split("=", 1) for field in args.field if "=" in field)
    if len(fields) != len(args.field):
        raise ConfigError("--field: PATH=VALUE, each path once")
    client = _client(args, getattr(args, "private_key", None))

    async def checked_pii() -> dict[str, Any]:
        await _reach(bootstrap, Topic.PII_REQUESTS, Topic.PII_RESULTS)
        return await pii(bootstrap, client, args.tenant, args.operation, fields, args.record_id, args.timeout)

    result = asyncio.run(checked_pii())
    print(json.dumps(result, ensure_ascii=False))
    return 1 if result.get("error") or result.get("errors") else 0


def _client_sign(args: argparse.Namespace) -> int:
    from workers.tools.client import sign

    bootstrap = require_bootstrap(load_settings())
    try:
        text = sys.stdin.read() if args.span == "-" else Path(args.span).read_text(encoding="utf-8")
        span = json.loads(text)
    except OSError as exc:
        raise ConfigError(f"--span {args.span}: cannot read it ({exc.strerror})") from None
    except ValueError:
        raise ConfigError(f"--span {args.span}: not JSON") from None
    if not isinstance(span, dict):
        raise ConfigError(f"--span {args.span}: a span is a JSON object")
    client = _client(args)

    async def checked_sign() -> dict[str, Any]:
        await _reach(bootstrap, Topic.SPANS_TO_SIGN, Topic.SPANS_SIGNED)
        return await sign(bootstrap, client, args.tenant, span, args.timeout)

    print(json.dumps(asyncio.run(checked_sign()), ensure_ascii=False))
    return 0
