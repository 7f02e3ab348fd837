"""Builds the configured ledger adapter."""

from __future__ import annotations

from workers.ledger import Ledger
from workers.settings import LedgerKind, Settings


def open_ledger(settings: Settings) -> Ledger:
    if settings.ledger is LedgerKind.TIGERBEETLE:
        from workers.ledger.tigerbeetle import TigerBeetleLedger

        return TigerBeetleLedger(settings.tb_addresses or "", settings.tb_cluster_id, settings.tb_batch_max)
    from workers.ledger.memory import MemoryLedger

    return MemoryLedger()


def describe_ledger(settings: Settings) -> str:
    """How outputs name the ledger: TigerBeetle only when one is used."""
    if settings.ledger is LedgerKind.TIGERBEETLE:
        return f"TigerBeetle at {settings.tb_addresses}"
    return "the ledger (memory)"
