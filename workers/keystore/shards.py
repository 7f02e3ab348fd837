"""A key table held per partition (KEYLEDGER_KEY_TABLE_SHARDED): which key partitions this process holds, and why.

A tenant's keys live on one partition number of `keys.material` and `keys.events`: murmur2 of its tenant
id (workers/kafka/partitioning.py), the number its input records carry when their producer partitions by
murmur2 too. A process holds a key partition while someone needs it:

- the system tenant (`keyledger-system`, the digest key): its records alone, from its partition, followed
  for the life of the process (the other tenants of that partition only while the partition is held);
- a consumer group: the numbers of the input partitions it is assigned (`assigned`, before any of their
  records is served; given up by `revoked`, after the group's runner settled the revoked partitions);
- `guest`: the partition of a tenant whose record arrived on a partition that is not its own (a producer
  not partitioning by murmur2): loaded on demand, like an assigned one, before that record is served,
  and given up at the next revocation that leaves no batch of the group in hand.

The rule for every record (`serve`): nothing is handled before `start` returned (the system tenant's
keys read, and whatever the process loaded before calling it: the caller policies); its tenant's key
partition is read to its end, and followed, before the record is handled; a record is never handled
against a partial table (never a wrong key) and never dropped for a partition the process does not hold
(it waits for the load; a load that fails makes it wait and be tried again, like any transient failure). A partition no one needs any more is no longer followed
and its tenants' keys are forgotten (`KeyDirectory.drop_tenants`, which evicts their cached secrets).

Assignments are taken from `connect` on, before `start` returned: a process may join its consumer groups
while its global tables load, and each assigned partition's load starts as soon as the group is told of it.

The reading itself is the `PartitionReader`'s (workers/kafka/follow.py): it reads a partition of both
topics from the beginning to its end offset, then follows it, and stops following on request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from schemas.messages import SYSTEM_TENANT
from workers.keystore.directory import KeyDirectory

log = logging.getLogger("keyledger.keystore")

GUEST = "guest"
_MEMO_MAX = 100_000  # tenants whose partition is remembered; past it the memo starts again


class PartitionReader(Protocol):
    async def start(self) -> int:
        """Connect; the partition count of the key topics (the same on both, or it raises)."""
        ...

    async def read(self, numbers: frozenset[int]) -> None:
        """Read these partitions of the key topics from the beginning to their end offsets, then follow them."""
        ...

    async def read_tenants(self, number: int, tenants: frozenset[str]) -> None:
        """Read the records of `tenants` in partition `number` to its end, then follow them."""
        ...

    async def stop_following(self, numbers: frozenset[int]) -> None:
        """No record of these partitions is applied after this returns (but those of tenants followed alone)."""
        ...


class KeyShards:
    def __init__(self, directory: KeyDirectory, reader: PartitionReader,
                 partition_of: Callable[[str, int], int]) -> None:
        self._directory = directory
        self._reader = reader
        self._partition_of = partition_of
        self.partitions = 0  # the key topics' partition count, once started
        self._holders: dict[int, set[str]] = {}
        self._loaded: set[int] = set()
        self._loading: dict[int, asyncio.Future[None]] = {}
        self._memo: dict[str, int] = {}
        self._prefetch: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = asyncio.Event()

    async def connect(self) -> None:
        """Learn the partition count: from then on assignments (`assigned`) start loading when told."""
        if self._loop is None:
            self.partitions = await self._reader.start()
            self._loop = asyncio.get_running_loop()

    async def start(self) -> None:
        """Connect (unless done) and load the system tenant's keys (the global ones); `serve` lets records
        through only once this returned."""
        await self.connect()
        await self._reader.read_tenants(self.partition(SYSTEM_TENANT), frozenset([SYSTEM_TENANT]))
        self._started.set()

    # --- reads ---------------------------------------------------------------------

    def partition(self, tenant_id: str) -> int:
        number = self._memo.get(tenant_id)
        if number is None:
            if len(self._memo) > _MEMO_MAX:
                self._memo.clear()
            number = self._memo[tenant_id] = self._partition_of(tenant_id, self.partitions)
        return number

    def holds(self, tenant_id: str) -> bool:
        """Whether every key of `tenant_id` is in the table (its partition read to the end and followed)."""
        return tenant_id == SYSTEM_TENANT or self.partition(tenant_id) in self._loaded

    @property
    def loaded(self) -> frozenset[int]:
        return frozenset(self._loaded)

    @property
    def pending(self) -> frozenset[int]:
        """Partitions someone holds whose keys are not read to their end yet."""
        return frozenset(n for n, holding in self._holders.items() if holding and n not in self._loaded)

    def holders(self, number: int) -> frozenset[str]:
        return frozenset(self._holders.get(number, ()))

    # --- holding -------------------------------------------------------------------

    async def hold(self, holder: str, numbers: Iterable[int]) -> None:
        """`holder` needs these partitions: returns once each is read to its end (loading those not yet loaded)."""
        wanted = frozenset(numbers)
        for number in wanted:
            self._holders.setdefault(number, set()).add(holder)
        new = frozenset(n for n in wanted if n not in self._loaded and n not in self._loading)
        waits = [self._loading[n] for n in wanted if n in self._loading]
        if new:
            done = asyncio.get_running_loop().create_future()
            for number in new:
                self._loading[number] = done
            try:
                await self._reader.read(new)
            except BaseException as exc:
                for number in new:
                    del self._loading[number]
                done.set_exception(exc)
                done.exception()  # retrieved: the waiters (if any) raise it themselves
                raise
            for number in new:
                del self._loading[number]
            self._loaded |= new
            done.set_result(None)
            log.info("key partitions %s loaded for %s (%d keys held)", sorted(new), holder, len(self._directory))
            await self._drop(frozenset(n for n in new if not self._holders.get(n)))  # released while loading
        for wait in waits:
            await asyncio.shield(wait)

    async def release(self, holder: str, numbers: Iterable[int]) -> None:
        """`holder` no longer needs these partitions: those no one holds are dropped."""
        unheld = set()
        for number in numbers:
            holding = self._holders.get(number)
            if holding is not None:
                holding.discard(holder)
                if not holding:
                    unheld.add(number)
        await self._drop(frozenset(n for n in unheld if n in self._loaded))

    async def _drop(self, numbers: frozenset[int]) -> None:
        if not numbers:
            return
        await self._reader.stop_following(numbers)
        self._loaded -= numbers
        for number in numbers:
            self._holders.pop(number, None)
        forgotten = self._directory.drop_tenants(
            lambda tenant_id: tenant_id != SYSTEM_TENANT and self.partition(tenant_id) in numbers)
        log.info("key partitions %s dropped: %d keys forgotten, %d held", sorted(numbers), forgotten,
                 len(self._directory))

    # --- what a consumer group tells it --------------------------------------------

    def assigned(self, group: str, numbers: frozenset[int]) -> None:
        """A rebalance gave `group` these partitions: their keys start loading now (`serve` awaits them).
        Callable from any thread: FastStream runs a rebalance listener's plain callbacks in a worker thread."""
        if self._loop is None:
            raise RuntimeError("KeyShards.connect() first")
        self._loop.call_soon_threadsafe(self._start_loading, group, numbers)

    def want(self, tenant_id: str) -> None:
        """A service met `tenant_id` without holding its keys (a record keyed by another tenant than the one
        it names): its partition starts loading as a guest; the record waits and is tried again."""
        number = self.partition(tenant_id)
        if number not in self._loaded and number not in self._loading:
            self._start_loading(GUEST, frozenset([number]))

    def _start_loading(self, holder: str, numbers: frozenset[int]) -> None:
        task = asyncio.get_running_loop().create_task(self._prefetch_for(holder, numbers), name=f"{holder}-keys")
        self._prefetch.add(task)
        task.add_done_callback(self._prefetch.discard)

    async def _prefetch_for(self, group: str, numbers: frozenset[int]) -> None:
        try:
            await self.hold(group, numbers)
        except Exception as exc:  # the records' own `serve` loads them again and waits until it can
            log.warning("key partitions %s of %s not loaded yet (%s)", sorted(numbers), group, type(exc).__name__)

    async def revoked(self, group: str, numbers: frozenset[int]) -> None:
        """`group` gave these partitions up (its runner settled them): they, and the guests, are dropped
        unless held otherwise; a guest still needed is loaded again by the next record that needs it."""
        await self.release(group, numbers)
        await self.release(GUEST, [n for n, holding in self._holders.items() if GUEST in holding])

    async def serve(self, group: str, arrived: Iterable[tuple[str, int]]) -> None:
        """Returns once `start` returned and the key partition of each (tenant, partition it arrived on) is
        loaded; a tenant whose partition is not held (not its group's, not a guest yet) has it loaded on demand
        as a guest."""
        await self._started.wait()
        needed = {self.partition(tenant_id): (tenant_id, partition) for tenant_id, partition in arrived}
        missing = {n: why for n, why in needed.items() if n not in self._loaded}
        if not missing:
            return
        for number, (_tenant_id, partition) in missing.items():
            if partition != number and not self._holders.get(number):
                log.warning("%s: a record of partition %d names a tenant of key partition %d: that partition is "
                            "loaded on demand (is its producer partitioning by murmur2 of the tenant id?)",
                            group, partition, number, extra={"group": group, "partition": partition})
        guests = [n for n in missing if not self._holders.get(n) and n not in self._loading]
        if guests:
            await self.hold(GUEST, guests)
        for number in missing:
            loading = self._loading.get(number)
            if loading is not None:
                await asyncio.shield(loading)
        still = [n for n in missing if n not in self._loaded]
        if still:  # its group's load failed, or it was released meanwhile: load it now
            await self.hold(GUEST, still)

    async def aclose(self) -> None:
        for task in list(self._prefetch):
            task.cancel()
        if self._prefetch:
            await asyncio.gather(*self._prefetch, return_exceptions=True)
