"""Kafka's default partitioner, as keyledger computes a tenant's partition: murmur2 against the Java
client's own test vectors (org.apache.kafka.common.utils.UtilsTest#testMurmur2), and the partition
aiokafka's `DefaultPartitioner` (what the publisher and every murmur2 producer use) gives the same key."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner, murmur2
from hypothesis import given
from hypothesis import strategies as st

from workers.kafka.partitioning import partition_for, tenant_partition

# the Java client's murmur2 answers, as signed 32-bit ints
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "java"), JAVA_MURMUR2.items())
def test_murmur2_is_the_java_clients(key, java):
    assert murmur2(key) & 0xFFFFFFFF == java & 0xFFFFFFFF
    for partitions in (1, 3, 6, 12, 100):
        assert partition_for(key, partitions) == (java & 0x7FFFFFFF) % partitions


@given(st.binary(min_size=0, max_size=64), st.integers(min_value=1, max_value=1000))
def test_a_key_lands_where_the_default_partitioner_puts_it(key, partitions):
    everything = list(range(partitions))
    assert partition_for(key, partitions) == DefaultPartitioner()(key, everything, everything)


@given(st.text(min_size=1, max_size=64))
def test_a_tenant_is_placed_by_its_utf8_bytes(tenant):
    assert tenant_partition(tenant, 12) == partition_for(tenant.encode(), 12)


def test_a_topic_has_a_partition():
    with pytest.raises(ValueError, match="at least one partition"):
        partition_for(b"acme", 0)
