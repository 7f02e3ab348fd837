"""Builds the configured ledger adapter."""

from __future__ import annotations

from workers.ledger import Ledger
from workers.settings import LedgerKind, LedgerSettings


def open_ledger(ledger: LedgerSettings) -> Ledger:
    if ledger.kind is LedgerKind.TIGERBEETLE:
        from workers.ledger.tigerbeetle import TigerBeetleLedger

        return TigerBeetleLedger(ledger.tb_addresses or "", ledger.tb_cluster_id, ledger.tb_batch_max)
    from workers.ledger.memory import MemoryLedger

    return MemoryLedger()


def describe_ledger(ledger: LedgerSettings) -> str:
    """How outputs name the ledger: TigerBeetle only when one is used."""
    if ledger.kind is LedgerKind.TIGERBEETLE:
        return f"TigerBeetle at {ledger.tb_addresses}"
    return "the ledger (memory)"
