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
    rewrap = verbs.add_parser("rewrap", help="re-wrap live keys under their KMS key's latest version (same keys)")
    rewrap_scope = rewrap.add_mutually_exclusive_group(required=True)
    rewrap_scope.add_argument("--all", action="store_true", help="every tenant; then retire unneeded KEK versions")
    rewrap_scope.add_argument("--tenant", help="one tenant")
    migrate = verbs.add_parser("migrate", help="move wrapped keys to another KMS provider (resumable)")
    migrate.add_argument("--to", required=True, choices=["aws", "vault"], help="the provider to move every key to")
    audit = verbs.add_parser("audit", help="audit trail tools")
    audit_verbs = audit.add_subparsers(dest="audit_verb", required=True)
    audit_verify = audit_verbs.add_parser("verify", help="replay kms.audit and compare it with TigerBeetle")
    audit_verify.add_argument("--tenant", help="only this tenant")
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
    elif args.verb == "rewrap":
        from workers.tools.rewrap import rewrap

        sys.exit(asyncio.run(rewrap(_bootstrap_or_exit(_settings()), args.tenant)))
    elif args.verb == "migrate":
        from workers.tools.migrate import migrate

        sys.exit(asyncio.run(migrate(_bootstrap_or_exit(_settings()), args.to)))
    elif args.verb == "audit":
        sys.exit(asyncio.run(_audit_verify(_settings(), args.tenant)))


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
    from workers.tools.audit_check import verify_audit

    ledger = open_ledger(settings)
    try:
        report = await verify_audit(_bootstrap_or_exit(settings), ledger, tenant)
    finally:
        await ledger.aclose()
    for problem in report.mismatches[:100]:
        print(f"MISMATCH {problem}")
    verdict = "agrees with" if report.agrees else "DISAGREES with"
    print(f"kms.audit {verdict} TigerBeetle: {report.events} events ({report.duplicates} duplicate records), "
          f"{len(report.tenants)} tenants, {len(report.mismatches)} mismatches")
    return 0 if report.agrees else 1


if __name__ == "__main__":
    main()
