"""A key table held per partition (keystore/shards.py): the system partition always, a group's assigned
partitions loaded before their records are served and dropped on revocation, a record whose tenant hashes
to a partition not held served after that partition is loaded (never dropped, never a wrong key).

`Partitions` stands in for the broker-side reader (workers/kafka/follow.py `PartitionFollower`): it holds
each partition's `keys.material`/`keys.events` records and applies a partition's records when read, as
the follower does; tests/integration/test_sharded_flow.py runs the real one over a broker."""

from __future__ import annotations

import asyncio

import pytest

from schemas.messages import SYSTEM_TENANT, KeyEventType, KeyType
from tests.keystore.test_directory import event, material
from workers.kafka.partitioning import tenant_partition
from workers.keys.cache import SingleFlightCache
from workers.keys.service import KeyService, TenantKeysLoading
from workers.keystore.directory import KeyDirectory
from workers.keystore.follower import KeyRecords
from workers.keystore.shards import GUEST, KeyShards
from workers.kms.local import LocalKms
from workers.ledger.memory import MemoryLedger

PARTITIONS = 4


def tenants_of(partition: int, count: int = 3) -> list[str]:
    """`count` tenant ids whose key partition is `partition`."""
    found = []
    i = 0
    while len(found) < count:
        tenant = f"tenant-{i}"
        if tenant_partition(tenant, PARTITIONS) == partition:
            found.append(tenant)
        i += 1
    return found


class Partitions:
    """Each key partition's records; `read` applies the partitions asked for (after `gate`, when set)."""

    def __init__(self, directory: KeyDirectory) -> None:
        self.records: dict[int, list[tuple[str, bytes | None, bytes | None]]] = {p: [] for p in range(PARTITIONS)}
        self.apply = KeyRecords(directory).apply
        self.reads: list[frozenset[int]] = []
        self.stopped: list[frozenset[int]] = []
        self.gate: asyncio.Event | None = None
        self.failing: Exception | None = None
        self.following: set[int] = set()
        self.only: dict[int, frozenset[str]] = {}

    def add_tenant(self, tenant: str, versions: int = 1) -> None:
        partition = tenant_partition(tenant, PARTITIONS)
        previous = None
        for version in range(1, versions + 1):
            for key_type in KeyType:
                m = material(tenant, key_type, version)
                self.records[partition].append(("keys.material", m.key_id.encode(), m.to_json()))
                kind = KeyEventType.GENERATED if version == 1 else KeyEventType.ROTATED
                prev = previous if key_type is KeyType.SIGNING else None
                self.records[partition].append(("keys.events", tenant.encode(), event(kind, m, prev).to_json()))
                if key_type is KeyType.SIGNING:
                    previous = m.key_id

    async def start(self) -> int:
        return PARTITIONS

    async def read(self, numbers: frozenset[int]) -> None:
        self.reads.append(numbers)
        if self.gate is not None:
            await self.gate.wait()
        if self.failing is not None:
            raise self.failing
        for number in sorted(numbers):
            for topic, key, value in self.records[number]:
                self.apply(topic, key, value)
        self.following |= numbers

    async def read_tenants(self, number: int, tenants: frozenset[str]) -> None:
        for topic, key, value in self.records[number]:
            if key in {t.encode() for t in tenants} or any(t.encode() in (value or b"") for t in tenants):
                self.apply(topic, key, value)
        self.only[number] = tenants

    async def stop_following(self, numbers: frozenset[int]) -> None:
        self.stopped.append(numbers)
        self.following -= numbers


@pytest.fixture
def table():
    directory = KeyDirectory()
    reader = Partitions(directory)
    for partition in range(PARTITIONS):
        for tenant in tenants_of(partition):
            reader.add_tenant(tenant, versions=2)
    reader.add_tenant(SYSTEM_TENANT)
    return directory, reader, KeyShards(directory, reader, tenant_partition)


def held_tenants(directory: KeyDirectory) -> set[str]:
    return directory.tenants()


async def test_at_start_only_the_system_tenants_keys_are_held(table):
    directory, reader, shards = table
    await shards.start()
    system = tenant_partition(SYSTEM_TENANT, PARTITIONS)
    assert shards.loaded == frozenset() and reader.only == {system: {SYSTEM_TENANT}}
    assert directory.active(SYSTEM_TENANT, KeyType.SIGNING) is not None and shards.holds(SYSTEM_TENANT)
    assert held_tenants(directory) == {SYSTEM_TENANT}  # not the other tenants of its partition
    assert not shards.holds(tenants_of(system)[0])


async def test_the_system_tenants_partition_assigned_then_revoked_keeps_the_system_keys(table):
    directory, reader, shards = table
    await shards.start()
    system = tenant_partition(SYSTEM_TENANT, PARTITIONS)
    await shards.hold("keyledger-signer", [system])
    assert held_tenants(directory) == {SYSTEM_TENANT, *tenants_of(system)}
    await shards.revoked("keyledger-signer", frozenset({system}))
    assert held_tenants(directory) == {SYSTEM_TENANT}
    assert directory.active(SYSTEM_TENANT, KeyType.SIGNING) is not None


async def test_assigned_partitions_are_loaded_before_their_records_are_served(table):
    directory, reader, shards = table
    await shards.start()
    reader.gate = asyncio.Event()
    wanted = frozenset({0, 1}) - shards.loaded or frozenset({2})
    shards.assigned("keyledger-signer", wanted)
    await asyncio.sleep(0.01)  # the listener's call reaches the loop (it may come from FastStream's thread)
    tenant = tenants_of(min(wanted))[0]
    serving = asyncio.create_task(shards.serve("keyledger-signer", [(tenant, min(wanted))]))
    await asyncio.sleep(0.02)
    assert not serving.done() and directory.active(tenant, KeyType.SIGNING) is None  # not served on a partial table
    assert shards.pending == wanted  # readiness waits for them too
    reader.gate.set()
    await serving
    assert shards.pending == frozenset()
    assert directory.active(tenant, KeyType.SIGNING).version == 2
    assert reader.reads.count(wanted) == 1  # the record's wait joined the assignment's load, no second read
    for number in wanted:
        assert shards.holders(number) == {"keyledger-signer"}


async def test_assignments_load_from_connect_on_and_records_wait_for_start(table):
    """A process joins its groups while the global tables load: an assignment told after `connect` loads
    at once, and no record is served before `start` returned (the system keys, and the callers before it)."""
    directory, reader, shards = table
    await shards.connect()
    number = next(p for p in range(PARTITIONS) if p != tenant_partition(SYSTEM_TENANT, PARTITIONS))
    shards.assigned("keyledger-signer", frozenset({number}))
    tenant = tenants_of(number)[0]
    for _ in range(100):
        if number in shards.loaded:
            break
        await asyncio.sleep(0.01)
    assert number in shards.loaded and reader.only == {}  # loaded before the system tenant's keys were read
    serving = asyncio.create_task(shards.serve("keyledger-signer", [(tenant, number)]))
    await asyncio.sleep(0.02)
    assert not serving.done()
    await shards.start()
    await asyncio.wait_for(serving, 1)
    assert directory.active(tenant, KeyType.SIGNING).version == 2 and shards.holds(SYSTEM_TENANT)
    await shards.aclose()


async def test_revoked_partitions_are_dropped_and_their_secrets_evicted(table):
    directory, reader, shards = table
    await shards.start()
    evicted: list[str] = []
    directory.on_evict(evicted.append)
    mine = frozenset(range(PARTITIONS))
    await shards.hold("keyledger-signer", mine)
    dropped_keys = {e.key_id for p in mine for t in tenants_of(p) for e in directory.tenant_keys(t)}
    assert dropped_keys
    await shards.revoked("keyledger-signer", mine)
    assert shards.loaded == frozenset() and reader.following == set()
    assert held_tenants(directory) == {SYSTEM_TENANT}
    assert dropped_keys <= set(evicted)
    assert all(directory.get(key_id) is None for key_id in dropped_keys)


async def test_a_partition_two_groups_hold_stays_until_both_gave_it_up(table):
    directory, reader, shards = table
    await shards.start()
    number = next(p for p in range(PARTITIONS) if p not in shards.loaded)
    await shards.hold("keyledger-signer", [number])
    await shards.hold("keyledger-pii", [number])
    await shards.revoked("keyledger-signer", frozenset({number}))
    assert number in shards.loaded and directory.is_known_tenant(tenants_of(number)[0])
    await shards.revoked("keyledger-pii", frozenset({number}))
    assert number not in shards.loaded and not directory.is_known_tenant(tenants_of(number)[0])


async def test_a_record_of_a_tenant_of_another_partition_is_served_after_its_partition_is_loaded(table, caplog):
    directory, reader, shards = table
    await shards.start()
    free = [p for p in range(PARTITIONS) if p not in shards.loaded]
    mine, theirs = free[0], free[1]
    await shards.hold("keyledger-signer", [mine])
    stranger = tenants_of(theirs)[0]
    assert directory.active(stranger, KeyType.SIGNING) is None
    # its producer did not partition by murmur2: the record arrived on `mine`
    await shards.serve("keyledger-signer", [(stranger, mine)])
    entry = directory.active(stranger, KeyType.SIGNING)
    assert entry is not None and entry.tenant_id == stranger and entry.version == 2  # its own newest key
    assert shards.holders(theirs) == {GUEST}
    assert any("loaded on demand" in r.getMessage() for r in caplog.records)
    # a guest goes at the next revocation; a later record of it loads it again
    await shards.revoked("keyledger-signer", frozenset())
    assert theirs not in shards.loaded and not directory.is_known_tenant(stranger)
    await shards.serve("keyledger-signer", [(stranger, mine)])
    assert directory.active(stranger, KeyType.SIGNING).tenant_id == stranger


async def test_a_failed_load_makes_the_record_wait_and_the_next_try_loads_it(table):
    directory, reader, shards = table
    await shards.start()
    number = next(p for p in range(PARTITIONS) if p not in shards.loaded)
    tenant = tenants_of(number)[0]
    reader.failing = TimeoutError("broker away")
    with pytest.raises(TimeoutError):
        await shards.serve("keyledger-pii", [(tenant, number)])
    assert number not in shards.loaded and directory.active(tenant, KeyType.ENCRYPTION) is None
    reader.failing = None
    await shards.serve("keyledger-pii", [(tenant, number)])
    assert directory.active(tenant, KeyType.ENCRYPTION).tenant_id == tenant


async def test_a_partition_released_while_it_loads_is_dropped_once_loaded(table):
    directory, reader, shards = table
    await shards.start()
    number = next(p for p in range(PARTITIONS) if p not in shards.loaded)
    reader.gate = asyncio.Event()
    loading = asyncio.create_task(shards.hold("keyledger-signer", [number]))
    await asyncio.sleep(0.01)
    await shards.revoked("keyledger-signer", frozenset({number}))
    reader.gate.set()
    await loading
    assert number not in shards.loaded and not directory.is_known_tenant(tenants_of(number)[0])


async def test_the_key_service_never_answers_for_a_tenant_it_does_not_hold(table):
    """A record keyed by one tenant naming another: the lookup waits (Unavailable) while that tenant's
    partition loads, then answers with that tenant's own key, never `unknown_tenant` or another's."""
    directory, reader, shards = table
    await shards.start()
    keys = KeyService(directory, LocalKms(), MemoryLedger(), SingleFlightCache(ttl=60, max_entries=100), shards=shards)
    number = next(p for p in range(PARTITIONS) if p not in shards.loaded)
    tenant = tenants_of(number)[0]
    with pytest.raises(TenantKeysLoading):
        keys.active(tenant, KeyType.SIGNING)
    with pytest.raises(TenantKeysLoading):
        keys.unknown_tenant(tenant)
    with pytest.raises(TenantKeysLoading):
        keys.owned(tenant, material(tenant, KeyType.SIGNING, 1).key_id)
    for _ in range(100):  # `want` started the load in the background
        if shards.holds(tenant):
            break
        await asyncio.sleep(0.01)
    assert keys.active(tenant, KeyType.SIGNING).key_id == material(tenant, KeyType.SIGNING, 2).key_id
    assert keys.owned(tenant, material(tenant, KeyType.SIGNING, 1).key_id).tenant_id == tenant
    assert not keys.unknown_tenant(tenant)
    held = tenants_of(number)[1]
    assert keys.active(held, KeyType.ENCRYPTION).tenant_id == held
    await shards.aclose()


def test_drop_tenants_forgets_their_keys_only():
    directory = KeyDirectory()
    for tenant in ("acme", "globex"):
        m = material(tenant, KeyType.SIGNING, 1)
        directory.apply_material(m)
        directory.apply_event(event(KeyEventType.GENERATED, m))
    evicted: list[str] = []
    directory.on_evict(evicted.append)
    assert directory.drop_tenants(lambda t: t == "acme") == 1
    assert directory.tenants() == {"globex"} and len(directory) == 1
    assert evicted == [material("acme", KeyType.SIGNING, 1).key_id]
