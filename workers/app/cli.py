"""`keyledger` command line: run, dev, demo (and the verbs later issues add)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TextIO

from pydantic import ValidationError

from workers.groups import ALL_GROUPS
from workers.settings import Settings


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = [f"  KEYLEDGER_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()]
        sys.exit("keyledger: bad configuration\n" + "\n".join(lines))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keyledger", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)
    run = verbs.add_parser("run", help="run consumer groups until SIGTERM")
    run.add_argument("--group", action="append", choices=ALL_GROUPS, help="a consumer group (default: all)")
    verbs.add_parser("dev", help="embedded broker + local KMS + memory ledger + all workers")
    verbs.add_parser("demo", help="start the embedded stack and drive every flow")
    verify = verbs.add_parser("verify", help="verify signed spans (JSON lines) against keys.events")
    verify.add_argument("file", help="a file of signed spans, one per line; - for stdin")
    rotate = verbs.add_parser("rotate", help="rotate keys now (a tick on keys.rotation-ticks), with a progress bar")
    scope = rotate.add_mutually_exclusive_group(required=True)
    scope.add_argument("--all", action="store_true", help="every tenant")
    scope.add_argument("--tenant", help="one tenant")
    rotate.add_argument("--key-type", choices=["signing", "encryption"], help="only this key type")
    rotate.add_argument("--reason", choices=["scheduled", "manual", "compromise"], default="manual",
                        help="scheduled rotates only keys older than KEYLEDGER_ROTATION_AGE; compromise also revokes")
    audit = verbs.add_parser("audit", help="audit trail tools")
    audit_verbs = audit.add_subparsers(dest="audit_verb", required=True)
    audit_verify = audit_verbs.add_parser(
        "verify", help="replay kms.audit, compare it with TigerBeetle and check the digest chain on kms.audit.digests")
    audit_verify.add_argument("--tenant", help="only this tenant in the ledger comparison (the chain is checked whole)")
    report = audit_verbs.add_parser("report", help="one tenant's key lifecycle for an auditor (TigerBeetle + keys.events)")
    report.add_argument("--tenant", required=True, help="the tenant")
    report.add_argument("--format", choices=["html", "json"], default="html", help="html (default): one self-contained file")
    report.add_argument("--out", help="write to this file (default: stdout)")
    docs = verbs.add_parser("docs", help="write the contract: docs/asyncapi.json and schemas/json/<topic>.json")
    docs.add_argument("--out", metavar="DIR", help="write under DIR instead of the repository (DIR/docs, DIR/schemas/json)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    from workers.app.runtime import setup_logging

    setup_logging()
    if args.verb == "run":
        from workers.app.runtime import run

        asyncio.run(run(_settings(), args.group or ALL_GROUPS))
    elif args.verb == "dev":
        from workers.app.dev import dev

        asyncio.run(dev(_settings()))
    elif args.verb == "demo":
        from workers.app.demo import demo

        sys.exit(asyncio.run(demo(_settings())))
    elif args.verb == "verify":
        settings = _settings()
        try:
            stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            sys.exit(f"keyledger verify: cannot read {args.file}: {exc.strerror}")
        with stream:
            sys.exit(asyncio.run(_verify(settings, stream)))
    elif args.verb == "rotate":
        from schemas.messages import KeyType, RotationReason
        from workers.tools.rotate import rotate

        key_type = KeyType(args.key_type) if args.key_type else None
        sys.exit(asyncio.run(rotate(_bootstrap_or_exit(_settings()), args.tenant, key_type, RotationReason(args.reason))))
    elif args.verb == "audit" and args.audit_verb == "report":
        text, summary = asyncio.run(_audit_report(_settings(), args.tenant, args.format))
        if args.out is None:
            sys.stdout.write(text)
        else:
            with open(args.out, "w", encoding="utf-8") as file:
                file.write(text)
        print(f"{summary} -> {args.out or 'stdout'}", file=sys.stderr)
    elif args.verb == "audit":
        sys.exit(asyncio.run(_audit_verify(_settings(), args.tenant)))
    elif args.verb == "docs":
        from workers.tools.contract import docs_command

        sys.exit(docs_command(args.out))


def _bootstrap_or_exit(settings: Settings) -> str:
    if not settings.kafka_bootstrap:
        sys.exit("keyledger: set KEYLEDGER_KAFKA_BOOTSTRAP to the broker that holds the topics")
    return settings.kafka_bootstrap


async def _verify(settings: Settings, stream: TextIO) -> int:
    from workers.core.signing import Verdict
    from workers.tools.verify import load_book, verify_lines

    try:
        # public keys: the design's 24 h cache, sized like the others (KEYLEDGER_CACHE_PUBLIC_TTL, _MAX_ENTRIES)
        book = await load_book(_bootstrap_or_exit(settings), ttl=settings.cache_public_ttl,
                               maxsize=settings.cache_max_entries)
    except TimeoutError as exc:
        sys.exit(f"keyledger verify: cannot read keys.events: {exc}")
    failures = 0
    # the file is already open (checked before any connection); reading lines of it is local and short
    for line_no, job_id, verdict in verify_lines(stream, book):
        print(f"{line_no}\t{job_id}\t{verdict.value}")
        failures += verdict is not Verdict.VALID
    return 1 if failures else 0


async def _audit_verify(settings: Settings, tenant: str | None) -> int:
    from workers.ledger.factory import open_ledger
    from workers.tools.audit_check import verify_audit, verify_chain

    bootstrap = _bootstrap_or_exit(settings)
    ledger = open_ledger(settings)
    try:
        report = await verify_audit(bootstrap, ledger, tenant)
    finally:
        await ledger.aclose()
    for problem in report.mismatches[:100]:
        print(f"MISMATCH {problem}")
    verdict = "agrees with" if report.agrees else "DISAGREES with"
    print(f"kms.audit {verdict} TigerBeetle: {report.events} events ({report.duplicates} duplicate records), "
          f"{len(report.tenants)} tenants, {len(report.mismatches)} mismatches")
    chain = await verify_chain(bootstrap)
    for problem in chain.problems[:100]:
        print(f"CHAIN {problem}")
    waiting = ", ".join(f"partition {p}: {n}" for p, n in sorted(chain.not_yet_digested.items())) or "none"
    print(f"digest chain {'intact' if chain.intact else 'BROKEN'}: {chain.digests} digests over {chain.records} records "
          f"({chain.duplicates} republished), {len(chain.problems)} breaks; not yet digested: {waiting}")
    return 0 if report.agrees and chain.intact else 1


async def _audit_report(settings: Settings, tenant: str, form: str) -> tuple[str, str]:
    import json

    from workers.ledger.factory import open_ledger
    from workers.tools.report import build_report
    from workers.tools.report_html import render_html

    bootstrap = _bootstrap_or_exit(settings)
    ledger = open_ledger(settings)
    try:
        report = await build_report(bootstrap, ledger, tenant, rotation_age=settings.rotation_age,
                                    encrypt_limit=settings.encrypt_limit)
    finally:
        await ledger.aclose()
    text = render_html(report) if form == "html" else json.dumps(report.to_json(), indent=2) + "\n"
    summary = (f"{form} report of {tenant}: {len(report.keys)} key versions, {len(report.operations)} ledger operations; "
               f"ledger vs kms.audit {'agree' if report.ledger_agrees else 'DISAGREE'}, "
               f"digest chain {'intact' if report.chain_intact else 'BROKEN'}")
    return text, summary


if __name__ == "__main__":
    main()
