"""Where a request came from, without the transport: the stream that holds it, its partition, its position.

Ids derived from a request (operation transfers, budget debits, the offset a transfer carries) hash
these three values exactly as the broker gave them, so a replay after an upgrade lands on the same
ledger ids. Services name requests by their Source; the groups map a Source back to its record.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Source:
    topic: str
    """The stream (Kafka topic) that holds the request."""
    partition: int
    offset: int
    """The request's position in its partition."""
