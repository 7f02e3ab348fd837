"""Reading `kms.audit` events in tests: the records a grouped event names (keys/audit.py)."""

from __future__ import annotations

from typing import Any

from schemas.messages import Op
from workers.core import ids


def places(event: dict[str, Any]) -> set[tuple[str, int, int]]:
    """(topic, partition, offset) of every record the event names (a lifecycle event: its source)."""
    if "source" in event:
        source = event["source"]
        return {(source["topic"], source["partition"], source["offset"])}
    found = set()
    for ranges in event.get("sources", ()):
        for run in ranges["offsets"]:
            first, last = (run, run) if isinstance(run, int) else run
            found |= {(ranges["topic"], ranges["partition"], offset) for offset in range(first, last + 1)}
    return found


def transfers_by_place(event: dict[str, Any]) -> dict[tuple[str, int, int], str]:
    """The transfer id (hex) of each record the event names by place, as its derivation says."""
    if "source" in event:
        return {place: event["event_id"] for place in places(event)}
    return {place: ids.to_hex(ids.grouped_transfer_id(Op(event["op"]), event["key_id"], event.get("id_parts", ()),
                                                      place, event.get("id_wrap")))
            for place in places(event)}


def topics_of(event: dict[str, Any]) -> set[str]:
    """The input topics whose records the event accounts for."""
    return {topic for topic, _, _ in places(event)}
