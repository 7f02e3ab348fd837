"""`keyledger` command line.

One builder per verb adds its subparser (with a description and an example) and sets
`handler`, the function that runs it and returns the exit code. Every failure an operator
can cause ends as one line on stderr naming the setting and the fix (workers.app.failures):
exit 2 for configuration, 1 for a failed check; `--debug` or KEYLEDGER_LOG_LEVEL=DEBUG
also prints the traceback. Inputs (settings, files, arguments) are checked before any
connection is opened.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from schemas.errors import ErrorCode
from schemas.topics import Topic
from workers.app.preflight import (
    check_kafka,
    check_ledger,
    check_topics,
    load_settings,
    preflight,
    require_bootstrap,
)
from workers.errors import ConfigError
from workers.groups import ALL_GROUPS
from workers.settings import LedgerKind, Settings

if TYPE_CHECKING:
    from workers.tools.dlq import Letter, Selection

_T = TypeVar("_T")

DESCRIPTION = """\
keyledger: per-tenant signing (Ed25519) and encryption (AES-256-GCM) keys, wrapped by a KMS,
served over Kafka topics; every key operation is recorded in a ledger and on kms.audit.
Settings are KEYLEDGER_* environment variables (docs/contract.md lists them)."""

EPILOG = """\
first steps:
  keyledger demo          drive every flow once on an embedded stack
  keyledger dev           run everything locally; it prints the exports for the other verbs
  keyledger <verb> -h     what a verb does, with an example"""

Handler = Callable[[argparse.Namespace], int]


def _verb(verbs: Any, name: str, handler: Handler, *, summary: str, description: str,
          example: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = verbs.add_parser(
        name, help=summary, description=description, epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(handler=handler)
    # also after the verb; SUPPRESS keeps a --debug given before the verb
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="print the traceback on failure")
    return parser


def _tenant_scope(parser: argparse.ArgumentParser, *, all_help: str) -> None:
    """The required choice of a verb that acts on tenants: --all or --tenant NAME."""
    scope = parser.add_mutually_exclusive_group(required=True)
    scope.add_argument("--all", action="store_true", help=all_help)
    scope.add_argument("--tenant", help="one tenant")


async def _reach(bootstrap: str, *topics: str) -> None:
    """Before a tool verb reads: the broker answers and holds the topics it reads."""
    await check_kafka(bootstrap)
    await check_topics(bootstrap, list(topics))


def _run_reached(bootstrap: str, topics: Sequence[str], work: Callable[[], Awaitable[_T]]) -> _T:
    """`work`'s result, started only once the broker answers and holds `topics` (one event loop for both)."""

    async def checked() -> _T:
        await _reach(bootstrap, *topics)
        return await work()

    return asyncio.run(checked())


async def _check_stores(settings: Settings) -> None:
    """Before a verb that runs the workers: the broker answers (when one is set) and the ledger does."""
    if settings.kafka.bootstrap:
        await check_kafka(settings.kafka.bootstrap)
    await check_ledger(settings)


# --- run -----------------------------------------------------------------------------------------


def _add_run(verbs: Any) -> None:
    run = _verb(verbs, "run", _run, summary="run consumer groups until SIGTERM",
                description="Run consumer groups (default: all) against KEYLEDGER_KAFKA_BOOTSTRAP until SIGTERM;\n"
                            "a clean shutdown commits what was processed and nothing else.",
                example="KEYLEDGER_KAFKA_BOOTSTRAP=kafka:9092 keyledger run --group keyledger-signer")
    run.add_argument("--group", action="append", choices=ALL_GROUPS, help="a consumer group (repeat; default: all)")


def _run(args: argparse.Namespace) -> int:
    from workers.app.runtime import run

    settings = load_settings()

    async def checked_run() -> None:
        await _check_stores(settings)
        groups = args.group or ALL_GROUPS
        await preflight(settings, settings.kafka.bootstrap, groups)
        await run(settings, groups)

    asyncio.run(checked_run())
    return 0


# --- dev -----------------------------------------------------------------------------------------


def _add_dev(verbs: Any) -> None:
    _verb(verbs, "dev", _dev, summary="run the whole stack locally (in memory)",
          description="An embedded Kafka-compatible broker on KEYLEDGER_DEV_PORT (default 9092 when free),\n"
                      "the local KMS, TigerBeetle when a server binary is found (TIGERBEETLE_BIN or PATH;\n"
                      "else, or with KEYLEDGER_LEDGER=memory, the memory ledger) and every consumer group,\n"
                      "in one process. It prints the export lines the other verbs need. Everything is gone\n"
                      "when it stops.",
          example="keyledger dev      # then, in another shell, paste the export lines it prints")


def _dev(args: argparse.Namespace) -> int:
    from workers.app.dev import dev

    asyncio.run(dev(load_settings()))
    return 0


# --- demo ----------------------------------------------------------------------------------------


def _add_demo(verbs: Any) -> None:
    _verb(verbs, "demo", _demo, summary="drive every flow once on an embedded stack",
          description="Start the embedded stack and drive every flow through the real topics: onboarding,\n"
                      "signing and independent verification, PII encryption, rotation, crypto-shredding,\n"
                      "and an audit of kms.audit against the ledger, in the same process.",
          example="keyledger demo")


def _demo(args: argparse.Namespace) -> int:
    from workers.app.demo import demo

    settings = load_settings()

    async def checked_demo() -> int:
        await _check_stores(settings)
        return await demo(settings)

    return asyncio.run(checked_demo())


# --- verify --------------------------------------------------------------------------------------


def _add_verify(verbs: Any) -> None:
    verify = _verb(verbs, "verify", _verify, summary="verify signed spans against keys.events",
                   description="Verify signed spans (JSON lines, as on spans.signed) with the public keys learned\n"
                               "from keys.events. Prints `line, job_id, verdict` per span (valid, invalid,\n"
                               "unknown key, revoked key); exits 1 when any span is not valid.",
                   example="keyledger verify signed.jsonl")
    verify.add_argument("file", help="a file of signed spans, one per line; - for stdin")


def _verify(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise ConfigError(f"cannot read {args.file}: {exc.strerror}") from None
    with stream:
        return asyncio.run(_verify_stream(settings, stream))


async def _verify_stream(settings: Settings, stream: TextIO) -> int:
    from workers.tools.verify import default_threads, load_book, reads_a_file, write_verdicts

    bootstrap = require_bootstrap(settings)
    await _reach(bootstrap, Topic.KEYS_EVENTS)
    # public keys: the design's 24 h cache, sized like the others (KEYLEDGER_CACHE_PUBLIC_TTL, _MAX_ENTRIES)
    book = await load_book(bootstrap, ttl=settings.cache.public_ttl, maxsize=settings.cache.max_entries)
    # the file is already open (checked before any connection); reading lines of it is local and short.
    # The same bytes a print per span wrote, in input order. From a file: in chunks, the Ed25519 checks
    # on one thread per CPU while this one parses. From a pipe or a terminal: each verdict as its line comes
    if reads_a_file(stream):
        failures = write_verdicts(stream, book, sys.stdout, threads=default_threads())
    else:
        failures = write_verdicts(stream, book, sys.stdout, chunk=1)
    sys.stdout.flush()
    return 1 if failures else 0


# --- rotate --------------------------------------------------------------------------------------


def _add_rotate(verbs: Any) -> None:
    rotate = _verb(verbs, "rotate", _rotate, summary="rotate keys now, with a progress bar",
                   description="Publish a rotation tick on keys.rotation-ticks and follow the new versions on\n"
                               "keys.events to the end. Old signatures keep verifying; old ciphertexts decrypt\n"
                               "and re-encrypt to the new version. Exits 1 on a tenant with no keys.",
                   example="keyledger rotate --tenant acme --key-type encryption")
    _tenant_scope(rotate, all_help="every tenant")
    rotate.add_argument("--key-type", choices=["signing", "encryption"], help="only this key type")
    rotate.add_argument("--reason", choices=["scheduled", "manual", "compromise"], default="manual",
                        help="scheduled rotates only keys older than KEYLEDGER_ROTATION_AGE; compromise also revokes")
    rotate.add_argument("--operator-key", metavar="FILE", type=Path,
                        help="the operator key file (`keyledger operator keygen`): signs a manual or compromise tick "
                             "for --all, which the workers refuse unsigned when it touches more than one tenant")


def _rotate(args: argparse.Namespace) -> int:
    from schemas.messages import KeyType, RotationReason
    from workers.tools.rotate import rotate

    settings = load_settings()
    bootstrap = require_bootstrap(settings)
    key_type = KeyType(args.key_type) if args.key_type else None
    operator = None
    if args.operator_key is not None:
        from workers.tools.callers import load_operator_key
        operator = load_operator_key(args.operator_key)

    return _run_reached(bootstrap, (Topic.KEYS_EVENTS, Topic.ROTATION_TICKS),
                        lambda: rotate(bootstrap, args.tenant, key_type, RotationReason(args.reason),
                                       operator=operator))


# --- rewrap / migrate ----------------------------------------------------------------------------


def _add_rewrap(verbs: Any) -> None:
    rewrap = _verb(verbs, "rewrap", _rewrap, summary="re-wrap live keys under their KMS key's latest version",
                   description="One `rewrap` tick per tenant on keys.rotation-ticks, followed until keyledger-rotation\n"
                               "has handled them all: every live key is re-wrapped under the latest version of its KMS\n"
                               "key (Vault transit/rewrap, AWS ReEncrypt; the plaintext never leaves the KMS). The keys\n"
                               "do not change: signatures verify, ciphertexts decrypt. With --all, a `retire` tick then\n"
                               "raises each Vault transit key's min_decryption_version as far as no live key needs.\n"
                               "Resumable: run it again after an interruption. Exits 1 when a tenant failed.",
                   example="keyledger rewrap --all")
    _tenant_scope(rewrap, all_help="every tenant, then retire unneeded KEK versions")
    rewrap.add_argument("--scheduled", action="store_true",
                        help="with --all, for a CronJob: one scheduled tick (retire what the last pass left unneeded, "
                             "then re-wrap keys under an older Vault KEK version); returns once the worker took it")


def _rewrap(args: argparse.Namespace) -> int:
    from workers.tools.rewrap import rewrap, rewrap_scheduled

    bootstrap = require_bootstrap(load_settings())
    if args.scheduled and args.tenant:
        raise ConfigError("--scheduled goes with --all: a scheduled pass covers every tenant")

    return _run_reached(bootstrap, (Topic.KEYS_MATERIAL, Topic.KEYS_EVENTS, Topic.ROTATION_TICKS),
                        lambda: rewrap_scheduled(bootstrap) if args.scheduled else rewrap(bootstrap, args.tenant))


def _add_migrate(verbs: Any) -> None:
    migrate = _verb(verbs, "migrate", _migrate, summary="move wrapped keys to another KMS provider, resumable",
                    description="One `migrate` tick per tenant with a key under another provider; the workers (run\n"
                                "with both providers in KEYLEDGER_KMS_PROVIDERS) unwrap each key under its provider,\n"
                                "wrap it under the target's default key and prove the new wrapping unwraps to the\n"
                                "same key before publishing it. Keys already there are skipped; keys under a tenant's\n"
                                "own KMS key are not moved. Prints how many keys remain elsewhere: remove the old\n"
                                "provider only when none does. Exits 1 while any remains.",
                    example="keyledger migrate --to vault")
    migrate.add_argument("--to", required=True, choices=["aws", "vault", "pkcs11", "gcp", "azure"], help="the provider every key moves to")


def _migrate(args: argparse.Namespace) -> int:
    from workers.tools.migrate import migrate

    bootstrap = require_bootstrap(load_settings())

    return _run_reached(bootstrap, (Topic.KEYS_MATERIAL, Topic.KEYS_EVENTS, Topic.ROTATION_TICKS),
                        lambda: migrate(bootstrap, args.to))


# --- status --------------------------------------------------------------------------------------


def _add_status(verbs: Any) -> None:
    status = _verb(verbs, "status", _status, summary="the key table at a glance",
                   description="Tenants, keys by type and state, keys due for rotation (KEYLEDGER_ROTATION_AGE)\n"
                               "and, with a TigerBeetle ledger, keys near wear-out (KEYLEDGER_ENCRYPT_LIMIT),\n"
                               "read from keys.material and keys.events. Writes nothing.",
                   example="keyledger status --json | jq .keys")
    status.add_argument("--json", action="store_true", help="one JSON object, for tools")


def _status(args: argparse.Namespace) -> int:
    settings = load_settings()
    bootstrap = require_bootstrap(settings)
    return asyncio.run(_status_report(settings, bootstrap, as_json=args.json))


async def _status_report(settings: Settings, bootstrap: str, *, as_json: bool) -> int:
    from workers.ledger.factory import describe_ledger, open_ledger
    from workers.tools.status import read_status, render, to_json

    await check_ledger(settings)
    await _reach(bootstrap, Topic.KEYS_MATERIAL, Topic.KEYS_EVENTS)
    ledger = open_ledger(settings.ledger) if settings.ledger.kind is LedgerKind.TIGERBEETLE else None
    note = (f"skipped: {describe_ledger(settings.ledger)} lives inside the worker process; usage is read from a "
            "TigerBeetle ledger (KEYLEDGER_LEDGER=tigerbeetle)")
    try:
        status = await read_status(bootstrap, ledger, rotation_age=settings.limits.rotation_age,
                                   encrypt_limit=settings.limits.encrypt_limit, ledger_note=note,
                                   shred_window=settings.limits.shred_window)
    finally:
        if ledger is not None:
            await ledger.aclose()
    print(to_json(status) if as_json else render(status, f"Kafka {bootstrap}, {describe_ledger(settings.ledger)}"))
    return 0


# --- audit ---------------------------------------------------------------------------------------


def _add_audit(verbs: Any) -> None:
    audit = verbs.add_parser("audit", help="audit trail tools", description="Audit trail tools.")
    audit_verbs = audit.add_subparsers(dest="audit_verb", required=True, metavar="{verify,report}")
    _add_audit_verify(audit_verbs)
    _add_audit_report(audit_verbs)


def _add_audit_verify(audit_verbs: Any) -> None:
    verify = _verb(audit_verbs, "verify", _audit_verify,
                   summary="replay kms.audit, compare it with the ledger, check the digest chain",
                   description="Replay kms.audit and compare it with the ledger both ways: every event names a\n"
                               "transfer that exists and matches, and every transfer of the tenants seen is on\n"
                               "the topic (tenants from the ledger as well as from the topic). Then check the\n"
                               "signed digest chain on kms.audit.digests: every audit record covered by exactly\n"
                               "one digest, hashes and signatures good, no gap, every digest the ledger recorded\n"
                               "present, each digest key pinned by the ledger or given with --digest-public-key.\n"
                               "Safe while the workers run: ledger entries newer than the read are in flight and\n"
                               "must settle within --settle seconds. Needs a ledger another process can read\n"
                               "(TigerBeetle); exits 1 on any mismatch or break.",
                   example="keyledger audit verify --tenant acme")
    verify.add_argument("--tenant", help="only this tenant in the ledger comparison (the chain is checked whole)")
    verify.add_argument("--digest-public-key", action="append", default=[], metavar="BASE64URL",
                        help="a digest public key (raw Ed25519, base64url) trusted out of band, besides the keys "
                             "the ledger pins; repeatable")
    verify.add_argument("--settle", type=float, default=30.0, metavar="SECONDS",
                        help="how long work in flight at the read may take to land before it counts (default 30)")


def _outside_ledger(settings: Settings) -> None:
    if settings.ledger.kind is LedgerKind.MEMORY:
        raise ConfigError("the ledger (memory) lives inside the process that runs the workers (keyledger dev or "
                          "run), so no other process can audit it: run `keyledger dev` with a TigerBeetle binary "
                          "(TIGERBEETLE_BIN or PATH) and paste its export lines, or run `keyledger demo`, which "
                          "audits in-process")


def _audit_verify(args: argparse.Namespace) -> int:
    settings = load_settings()
    _outside_ledger(settings)
    bootstrap = require_bootstrap(settings)
    if args.settle < 0:
        raise ConfigError("--settle is a number of seconds, 0 or more")
    configured = [_digest_public_key(text) for text in args.digest_public_key]
    return asyncio.run(_audit_verify_report(settings, bootstrap, args.tenant, configured, args.settle))


def _digest_public_key(text: str) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from workers.core.b64 import b64url_decode

    try:
        raw = b64url_decode(text)
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise ConfigError(f"--digest-public-key {text!r} is not a raw Ed25519 public key in base64url") from None
    return raw


async def _audit_verify_report(settings: Settings, bootstrap: str, tenant: str | None,
                               configured: list[bytes], settle: float) -> int:
    from workers.ledger.factory import describe_ledger, open_ledger
    from workers.tools.audit_check import verify_audit, verify_chain

    await check_ledger(settings)
    await _reach(bootstrap, Topic.KMS_AUDIT)
    ledger = open_ledger(settings.ledger)
    try:
        report = await verify_audit(bootstrap, ledger, tenant, settle=settle)
        for problem in report.mismatches[:100]:
            print(f"MISMATCH {problem}")
        verdict = "agrees with" if report.agrees else "DISAGREES with"
        print(f"kms.audit {verdict} {describe_ledger(settings.ledger)}: {report.events} events naming "
              f"{report.transfers} transfers ({report.duplicates} duplicate records), {report.ledger_tenants} tenants, {len(report.mismatches)} mismatches; "
              f"{report.settled} in flight at the read, settled")
        chain = await verify_chain(bootstrap, ledger=ledger, configured=configured, settle=settle)
    finally:
        await ledger.aclose()
    for problem in chain.problems[:100]:
        print(f"CHAIN {problem}")
    waiting = ", ".join(f"partition {p}: {n}" for p, n in sorted(chain.not_yet_digested.items())) or "none"
    print(f"digest chain {'intact' if chain.intact else 'BROKEN'}: {chain.digests} digests over {chain.records} "
          f"records ({chain.duplicates} republished, {chain.recorded} recorded in the ledger), "
          f"{len(chain.problems)} breaks; not yet digested: {waiting}")
    return 0 if report.agrees and chain.intact else 1


def _add_audit_report(audit_verbs: Any) -> None:
    report = _verb(audit_verbs, "report", _audit_report,
                   summary="one tenant's key lifecycle for an auditor (HTML or JSON), signed; or verify a saved one",
                   description="Every key version of a tenant with its created/rotated/revoked/destroyed times\n"
                               "(ledger time), operations per key and per day with caller, outcome and reason,\n"
                               "rotation cadence against the policy, wear-out headroom, denied operations, and\n"
                               "the verdicts of the ledger comparison and the digest chain; at its top, what it\n"
                               "covers (period, topics and offsets, ledger, digest chain span). HTML is one\n"
                               "self-contained file with an SVG timeline. The JSON form is signed by the\n"
                               "keyledger-system key (unwrapped through the KMS; the signing is audited) and the\n"
                               "HTML carries it. Exits 1 for a tenant the ledger and kms.audit do not know.\n"
                               "`keyledger audit report verify FILE [--public-key K]` checks a saved report\n"
                               "offline (the key from keys.events when --public-key is not given); exits 1 on\n"
                               "any edit.",
                   example="keyledger audit report --tenant acme --from 2026-01-01 --out acme.html")
    report.add_argument("check", nargs="*", metavar="verify FILE", help="check a saved report instead")
    report.add_argument("--tenant", help="the tenant (required unless verifying)")
    report.add_argument("--format", choices=["html", "json"], default="html", help="html (default): one self-contained file")
    report.add_argument("--out", help="write to this file (default: stdout)")
    report.add_argument("--from", dest="start", metavar="TIME", help="period start, RFC 3339 or a date (UTC); default: "
                        "the beginning")
    report.add_argument("--to", dest="end", metavar="TIME", help="period end, included; default: the report time")
    report.add_argument("--public-key", metavar="BASE64URL", help="verify: the report key (raw Ed25519, base64url)")


def _audit_report(args: argparse.Namespace) -> int:
    if args.check:
        return _audit_report_verify(args)
    if args.tenant is None:
        raise ConfigError("--tenant is required (or: keyledger audit report verify FILE)")
    from workers.tools.report import Period, parse_time

    try:
        period = Period(parse_time(args.start) if args.start else None, parse_time(args.end) if args.end else None)
    except ValueError:
        raise ConfigError("--from and --to are RFC 3339 times or dates, e.g. 2026-01-31T12:00:00Z") from None
    settings = load_settings()
    _outside_ledger(settings)
    bootstrap = require_bootstrap(settings)
    from workers.tools.report import UnknownTenant

    try:
        text, summary = asyncio.run(_build_report(settings, bootstrap, args.tenant, args.format, period))
    except UnknownTenant as exc:
        print(f"keyledger audit report: {exc}", file=sys.stderr)
        return 1
    if args.out is None:
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text, encoding="utf-8")
    print(f"{summary} -> {args.out or 'stdout'}", file=sys.stderr)
    return 0


async def _build_report(settings: Settings, bootstrap: str, tenant: str, form: str, period: Any) -> tuple[str, str]:
    import json

    from workers.kms.factory import open_kms
    from workers.ledger.factory import describe_ledger, open_ledger
    from workers.tools.report import build_report
    from workers.tools.report_html import render_document
    from workers.tools.report_signing import sign_over_kafka

    await check_ledger(settings)
    await _reach(bootstrap, Topic.KMS_AUDIT, Topic.KEYS_EVENTS)
    ledger = open_ledger(settings.ledger)
    kms = open_kms(settings.kms)
    try:
        report = await build_report(bootstrap, ledger, tenant, rotation_age=settings.limits.rotation_age,
                                    encrypt_limit=settings.limits.encrypt_limit, period=period,
                                    ledger_name=f"{describe_ledger(settings.ledger)}, cluster id "
                                                f"{settings.ledger.tb_cluster_id}")
        document = await sign_over_kafka(bootstrap, report.to_json(), kms=kms, ledger=ledger)
    finally:
        await ledger.aclose()
        await kms.aclose()
    text = render_document(document) if form == "html" else json.dumps(document, indent=2) + "\n"
    levels = ", ".join(f"{v.name}: {v.headline}" for v in report.verdicts)
    summary = (f"{form} report of {tenant}: {len(report.keys)} key versions, {len(report.operations)} ledger "
               f"operations; {levels}; signed by {document['signature']['key_id']}")
    return text, summary


def _audit_report_verify(args: argparse.Namespace) -> int:
    from workers.tools.report_signing import check_saved, known_report_keys, public_key_of

    if len(args.check) != 2 or args.check[0] != "verify":
        raise ConfigError("usage: keyledger audit report verify FILE [--public-key BASE64URL]")
    path = Path(args.check[1])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    known: dict[str, bytes] = {}
    public_key = None
    if args.public_key:
        try:
            public_key = public_key_of(args.public_key)
        except ValueError:
            raise ConfigError(f"--public-key {args.public_key!r} is not a raw Ed25519 public key in base64url") from None
    else:
        from workers.kafka.tap import read_topic

        settings = load_settings()
        bootstrap = require_bootstrap(settings)
        known = known_report_keys([r.value for r in asyncio.run(read_topic(bootstrap, Topic.KEYS_EVENTS.value))])
    problems = check_saved(text, public_key, known)
    for problem in problems:
        print(f"NOT VERIFIED {path}: {problem}")
    if not problems:
        print(f"verified {path}: signed by the keyledger-system report key, unchanged since")
    return 1 if problems else 0


# --- dlq -----------------------------------------------------------------------------------------


def _add_dlq(verbs: Any) -> None:
    dlq = verbs.add_parser("dlq", help="dead letters: list, show, replay",
                           description="Dead letters on kms.dlq: list and show them (never a field value), and replay\n"
                                       "them to their original topic once the cause is fixed.",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    dlq_verbs = dlq.add_subparsers(dest="sub_verb", required=True, metavar="{list,show,replay}")
    listing = _verb(dlq_verbs, "list", _dlq_list, summary="one line per dead letter",
                    description="One line per letter: its id (<kms.dlq partition>/<offset>), when it failed, the\n"
                                "group, the original topic, the error code, the tenant, and whether it can be\n"
                                "replayed (or was). Never a field value.",
                    example="keyledger dlq list --code kms_refused --since 2h")
    show = _verb(dlq_verbs, "show", _dlq_show, summary="a letter's metadata and, outside pii.requests, its payload",
                 description="The letters named (or selected by the filters) in full: original coordinates, tenant,\n"
                             "group, error code and message, header names, replay state and, for any topic but\n"
                             "pii.requests, the payload.",
                 example="keyledger dlq show 0/17")
    replay = _verb(dlq_verbs, "replay", _dlq_replay, summary="send letters back to their topic, once each",
                   description="Write each selected letter's record back to its original topic (same key, headers\n"
                               "and value, plus a keyledger-dlq-letter header) and record the replay on\n"
                               "kms.dlq.replays. A letter already replayed is skipped, so a letter is answered once;\n"
                               "a letter whose payload was redacted or cut is not replayable. Fix the cause first.\n"
                               "Exits 1 when a selected letter could not be replayed.",
                   example="keyledger dlq replay --code kms_refused --since 1h")
    for parser in (listing, show, replay):
        if parser is not listing:
            parser.add_argument("ids", nargs="*", metavar="ID", help="letter ids (<partition>/<offset>)")
        parser.add_argument("--code", choices=[c.value for c in ErrorCode], metavar="CODE",
                            help="only letters with this error code (e.g. kms_refused)")
        parser.add_argument("--tenant", help="only letters of this tenant")
        parser.add_argument("--group", choices=ALL_GROUPS, help="only letters of this consumer group")
        parser.add_argument("--since", metavar="TIME", help="only letters since TIME (ISO 8601, or an age: 30m, 2h, 7d)")
    replay.add_argument("--all", action="store_true", help="every replayable letter (without ids or filters)")


def _dlq_selection(args: argparse.Namespace) -> Selection:
    from workers.tools.dlq import Selection, parse_letter_id, parse_since

    return Selection(ids=frozenset(parse_letter_id(i) for i in getattr(args, "ids", [])), code=args.code,
                     tenant=args.tenant, group=args.group, since=parse_since(args.since) if args.since else None)


def _dlq_read(args: argparse.Namespace) -> tuple[Settings, str, list[Letter]]:
    """The settings, the broker, and the letters `args` select (every id named must exist)."""
    from workers.tools.dlq import read_letters

    selection = _dlq_selection(args)
    settings = load_settings()
    bootstrap = require_bootstrap(settings)

    found = _run_reached(bootstrap, (Topic.DLQ,), lambda: read_letters(bootstrap))
    chosen = [letter for letter in found.letters if selection.matches(letter)]
    missing = sorted(selection.ids - {letter.id for letter in found.letters})
    if missing:
        raise ConfigError(f"no letter {', '.join(missing)} on kms.dlq (`keyledger dlq list` names them)")
    if found.unreadable:
        print(f"({found.unreadable} records on kms.dlq are not keyledger letters: skipped)", file=sys.stderr)
    return settings, bootstrap, chosen


def _dlq_list(args: argparse.Namespace) -> int:
    from workers.tools.dlq import list_lines

    *_, chosen = _dlq_read(args)
    for line in list_lines(chosen):
        print(line)
    print(f"{len(chosen)} letters", file=sys.stderr)
    return 0


def _dlq_show(args: argparse.Namespace) -> int:
    from workers.tools.dlq import show_text

    *_, chosen = _dlq_read(args)
    print("\n\n".join(show_text(letter) for letter in chosen))
    return 0


def _dlq_replay(args: argparse.Namespace) -> int:
    from workers.tools.dlq import replay

    if not (args.all or _dlq_selection(args).narrowed):
        raise ConfigError("name the letters to replay (ids or --code/--tenant/--group/--since), or --all")
    settings, bootstrap, chosen = _dlq_read(args)
    outcomes = asyncio.run(replay(bootstrap, settings, chosen))
    for outcome in outcomes:
        print(outcome.line())
    sent = sum(o.replay is not None for o in outcomes)
    refused = sum(o.replay is None and o.letter.replay is None for o in outcomes)
    print(f"{sent} replayed, {len(outcomes) - sent - refused} already replayed, {refused} not replayable",
          file=sys.stderr)
    return 1 if refused else 0


# --- docs ----------------------------------------------------------------------------------------


def _add_docs(verbs: Any) -> None:
    docs = _verb(verbs, "docs", _docs, summary="write the contract: AsyncAPI and JSON Schema per topic",
                 description="Write docs/asyncapi.json (AsyncAPI 3.0.0: every topic a channel with its payload\n"
                             "schema) and schemas/json/<topic>.json (JSON Schema 2020-12), generated from schemas/.",
                 example="keyledger docs --out /tmp/contract")
    docs.add_argument("--out", metavar="DIR", help="write under DIR instead of the repository (DIR/docs, DIR/schemas/json)")


def _docs(args: argparse.Namespace) -> int:
    from workers.tools.contract import docs_command

    return docs_command(args.out)


# --- caller, operator, client (workers/app/callers_cli.py) ----------------------------------------


def _add_callers(verbs: Any) -> None:
    from workers.app.callers_cli import add_caller, add_client, add_operator

    for build in (add_caller, add_operator, add_client):
        build(verbs, _verb)


# --- the command ---------------------------------------------------------------------------------

BUILDERS: list[Callable[[Any], None]] = [_add_run, _add_dev, _add_demo, _add_verify, _add_rotate, _add_rewrap,
                                         _add_migrate, _add_status, _add_audit, _add_dlq, _add_docs,
                                         _add_callers]


def version() -> str:
    """The installed distribution's version; from pyproject.toml when running from a source tree."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("keyledger")
    except PackageNotFoundError:
        import tomllib

        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        try:
            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keyledger", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"keyledger {version()}")
    parser.add_argument("--debug", action="store_true",
                        help="on failure, print the traceback too (as KEYLEDGER_LOG_LEVEL=DEBUG does)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="<verb>")
    for build in BUILDERS:
        build(verbs)
    return parser


def _debugging(args: argparse.Namespace) -> bool:
    # read from the environment directly: the settings may be what is broken
    return bool(args.debug) or os.environ.get("KEYLEDGER_LOG_LEVEL", "").strip().upper() == "DEBUG"


LONG_RUNNING = ("run", "dev", "demo")  # their clients' logs are operational news, kept


def _quiet_clients() -> None:
    """The clients' own error logs would repeat, in their words, the one line the CLI prints on failure."""
    import logging

    for name in ("aiokafka", "kafka", "tigerbeetle"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


KEY_OPTIONS = ("--public-key", "--digest-public-key")
"""Options whose value is a base64url key: one in 64 begins with '-', which argparse would take for an option."""


def attached_key_values(argv: Sequence[str]) -> list[str]:
    """`--public-key -abc…` as `--public-key=-abc…`, so a key that begins with '-' is read as the value it is."""
    out: list[str] = []
    items = iter(argv)
    for item in items:
        if item in KEY_OPTIONS:
            value = next(items, None)
            out.append(item if value is None else f"{item}={value}")
        else:
            out.append(item)
    return out


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(attached_key_values(sys.argv[1:] if argv is None else argv))
    from workers.app.observability.logs import setup_logging

    setup_logging()
    debugging = _debugging(args)
    if not debugging and args.verb not in LONG_RUNNING:
        _quiet_clients()
    name = " ".join(filter(None, ["keyledger", args.verb, getattr(args, "audit_verb", None),
                                  getattr(args, "sub_verb", None)]))
    try:
        code = args.handler(args)
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        from workers.app.failures import explain

        if debugging:
            traceback.print_exc()
        message, code = explain(exc)
        for line in message.splitlines():
            print(f"{name}: {line}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
