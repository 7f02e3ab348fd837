"""Which partition a key lands on: Kafka's default partitioner (murmur2 of the key bytes, as the Java
client and aiokafka's `DefaultPartitioner` compute it), for a topic of `partitions` partitions.

A tenant's records share one partition number on every topic keyed (or partitioned) by its tenant id:
the input topics, `keys.events`, and `keys.material`, whose records are keyed by key id for compaction but
placed by their tenant id. That is what lets a process hold only the keys of its assigned partitions
(KEYLEDGER_KEY_TABLE_SHARDED); it holds only while every topic has the same partition count and every
producer of the input topics uses murmur2 (librdkafka's default `consistent_random` does not).
"""

from __future__ import annotations

from aiokafka.partitioner import murmur2


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives `key` on a topic of `partitions` partitions."""
    if partitions < 1:
        raise ValueError("a topic has at least one partition")
    return (int(murmur2(key)) & 0x7FFFFFFF) % partitions


def tenant_partition(tenant_id: str, partitions: int) -> int:
    """The partition of every record of `tenant_id` (its UTF-8 bytes, as the record key is written)."""
    return partition_for(tenant_id.encode(), partitions)
