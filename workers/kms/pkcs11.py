"""`pkcs11` KMS provider: a hardware security module (or SoftHSM2) over PKCS#11, via python-pkcs11.

The KEK is an AES-256 secret key object on the token, generated there, never extractable and
sensitive, with CKA_WRAP/CKA_UNWRAP only. A KMS key id names a KEK; its versions are token
objects labelled `<key id>.v<N>` (N = 1, 2, ...) sharing CKA_ID = the key id. `rotate_kek`
generates version N+1; new wraps use the latest version; `retire_kek_versions` clears
CKA_WRAP/CKA_UNWRAP on older versions, so the token itself refuses them.

Data keys are 32 bytes from `os.urandom` (the port's default `generate_data_key`), wrapped by
the token with CKM_AES_KEY_WRAP_PAD (RFC 5649; SoftHSM2 refuses AES-GCM as a wrap mechanism).

Binding the encryption context: key wrap has no associated data, so what is wrapped is the envelope
of workers/kms/envelope (`data key (32) || salt (8) || SHA-256(canonical JSON of {"context",
"kms_key_id"})`, the wrap as its authenticator; the random salt because AES-KWP is deterministic),
imported as a short-lived session object and wrapped in one C_WrapKey; unwrap refuses it under any
other key or context.

Wrapped blob, fixed length: b"KLH1" || KEK version (4, big-endian) || AES-KWP(KEK, payload) (80).

Threads: PKCS#11 calls block, so they run on a thread pool of `sessions` threads, each call in a
session taken from a pool of that size (opened once, logged in through the first). python-pkcs11
calls C_Initialize without arguments, which under PKCS#11 promises the module no concurrent calls,
so calls enter the module one at a time (a lock); the pool keeps the event loop free and reuses
sessions and KEK handles.

Errors: device, session and token-presence failures -> KmsUnavailable (the session is dropped and
reopened by the next call); CKR_SESSION_COUNT -> KmsThrottled; anything else the token answers
(function not permitted on a retired or disabled version, no such KEK, a tampered blob) ->
KmsRefused. A wrong PIN, a missing module or token: one-line ConfigError at start (the CLI prints it and exits 2).

Deletion: `schedule_key_deletion` of a tenant's own KEK clears CKA_WRAP/CKA_UNWRAP on every
version (the token refuses it from then on, reversibly); destroying the objects after the pending
window is the operator's (docs/runbooks/pkcs11.md). The default KEK is never scheduled.

Messages never carry the PIN or key material.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from workers.errors import ConfigError
from workers.kms import (
    DataKey,
    KekVersions,
    Kms,
    KmsCapabilities,
    KmsError,
    KmsRefused,
    KmsThrottled,
    KmsUnavailable,
)
from workers.kms.envelope import PAYLOAD_BYTES, open_sealed, seal
from workers.settings import Pkcs11Settings

T = TypeVar("T")
log = logging.getLogger("workers.kms.pkcs11")

MAGIC = b"KLH1"
CKM_AES_KEY_WRAP_PAD = 0x210A
WRAPPED_BYTES = len(MAGIC) + 4 + PAYLOAD_BYTES + 8
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,95}")
_VERSION = re.compile(r"\.v([1-9][0-9]{0,8})")
LATEST_TTL = 30.0  # seconds a process trusts its view of the latest version (another process may rotate)


class Pkcs11Kms(Kms):
    """AES-KWP wraps under versioned KEKs on a PKCS#11 token; no batch API (the port's defaults gather
    single calls), rewrap is the port's default (unwrap + wrap here, under the latest version)."""

    capabilities = KmsCapabilities("pkcs11", kek_versions=True)

    def __init__(self, module: str, token_label: str, pin: str, *, default_key_id: str = "keyledger-kek",
                 sessions: int = 4, create_key: bool = True) -> None:
        """Loads the module, logs in and opens the session pool, and finds (or, with `create_key`,
        generates) the default KEK: every misconfiguration fails here, in one line (ConfigError)."""
        import pkcs11
        from pkcs11 import exceptions as p11

        self._p11 = pkcs11
        self.default_key_id = _check_name(default_key_id)
        self.concurrency = sessions
        self._token_label = token_label
        self._calls = 0
        self._module_lock = threading.Lock()  # C_Initialize(NULL): no concurrent calls into the module
        self._latest: dict[str, tuple[int, float]] = {}
        try:
            lib = pkcs11.lib(module)
        except Exception as exc:  # the loader raises RuntimeError/OSError kinds that vary by version
            raise ConfigError(f"PKCS#11 module {module!r} did not load: {type(exc).__name__}") from None
        try:
            self._token = lib.get_token(token_label=token_label)
        except p11.NoSuchToken:
            raise ConfigError(f"PKCS#11: no token labelled {token_label!r} in module {module!r}") from None
        try:
            self._login = self._token.open(rw=True, user_pin=pin)
        except p11.UserAlreadyLoggedIn:  # another adapter of this process holds the login
            self._login = self._token.open(rw=True)
        except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange, p11.PinLocked, p11.PinExpired) as exc:
            raise ConfigError(f"PKCS#11: token {token_label!r} refused the PIN ({type(exc).__name__})") from None
        except p11.PKCS11Error as exc:
            raise ConfigError(f"PKCS#11: token {token_label!r} could not be opened ({type(exc).__name__})") from None
        self._slots: asyncio.Queue[_Slot] = asyncio.Queue()
        opened: list[_Slot] = []
        try:
            for _ in range(sessions):
                opened.append(_Slot(self._token.open(rw=True)))
            if not self._versions_now(self._login, self.default_key_id):
                if not create_key:
                    raise ConfigError(f"PKCS#11: token {token_label!r} holds no KEK {self.default_key_id!r}")
                self._generate(self._login, self.default_key_id, 1)
        except BaseException as exc:
            self._close_now(opened)  # a failed start leaves no session, and no login, behind
            if isinstance(exc, p11.PKCS11Error):
                raise ConfigError(f"PKCS#11: token {token_label!r}: {type(exc).__name__} at start") from None
            raise
        for slot in opened:
            self._slots.put_nowait(slot)
        self._executor = ThreadPoolExecutor(max_workers=sessions, thread_name_prefix="pkcs11")

    @classmethod
    def from_settings(cls, settings: Pkcs11Settings) -> Pkcs11Kms:
        if settings.pin_file is None:
            raise ConfigError("KEYLEDGER_KMS_PROVIDER=pkcs11 needs KEYLEDGER_PKCS11_PIN_FILE")
        try:
            pin = settings.pin_file.read_text().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"KEYLEDGER_PKCS11_PIN_FILE {str(settings.pin_file)!r} is unreadable "
                             f"({exc.strerror})") from None
        return cls(settings.module, settings.token_label, pin, default_key_id=settings.key_label,
                   sessions=settings.sessions, create_key=settings.create_key)

    # --- the port ------------------------------------------------------------------------

    async def wrap(self, plaintext: bytes, kms_key_id: str | None, context: dict[str, str]) -> DataKey:
        key_id = _check_name(kms_key_id or self.default_key_id)
        version = await self._latest_version(key_id)
        payload = seal(plaintext, key_id, context, "pkcs11 wrap")
        sealed = await self._run("wrap", lambda slot: self._wrap_now(slot, key_id, version, payload))
        return DataKey(plaintext=plaintext, wrapped=MAGIC + version.to_bytes(4, "big") + sealed,
                       kms_key_id=key_id, kek_version=version)

    async def decrypt(self, wrapped: bytes, kms_key_id: str, context: dict[str, str]) -> bytes:
        key_id = _check_name(kms_key_id)
        if len(wrapped) != WRAPPED_BYTES or not wrapped.startswith(MAGIC):
            raise KmsRefused("pkcs11 unwrap: not a pkcs11-wrapped key")
        version = int.from_bytes(wrapped[len(MAGIC):len(MAGIC) + 4], "big")
        if version < 1:
            raise KmsRefused("pkcs11 unwrap: not a pkcs11-wrapped key")
        sealed = wrapped[len(MAGIC) + 4:]
        payload = await self._run("unwrap", lambda slot: self._unwrap_now(slot, key_id, version, sealed))
        return open_sealed(payload, key_id, context, "pkcs11 unwrap")

    async def describe_key(self, kms_key_id: str) -> str:
        key_id = _check_name(kms_key_id)
        if not await self._run("describe", lambda slot: self._versions_now(slot.session, key_id)):
            raise KmsRefused(f"pkcs11: token {self._token_label!r} holds no KEK {key_id!r}")
        return f"pkcs11:{self._token_label}/{key_id}"

    async def schedule_key_deletion(self, kms_key_id: str, pending_days: int) -> None:
        key_id = _check_name(kms_key_id)
        if key_id == self.default_key_id:
            raise KmsRefused(f"pkcs11 provider does not delete {key_id!r}: it is the shared KEK that wraps every "
                             "tenant without its own key (shredding a tenant tombstones its wrapped keys instead)")
        count = await self._run("disable", lambda slot: self._set_usable_now(slot.session, key_id, None, False))
        if not count:
            raise KmsRefused(f"pkcs11: token {self._token_label!r} holds no KEK {key_id!r}")
        log.info("pkcs11 KEK %s disabled, %d version(s) (pending deletion, %d days)", key_id, count, pending_days)

    async def create_key(self, kms_key_id: str) -> int:
        """The first version of a new KEK (a tenant's own key); KmsRefused when it exists. Returns 1."""
        key_id = _check_name(kms_key_id)

        def create(slot: _Slot) -> int:
            if self._versions_now(slot.session, key_id):
                raise KmsRefused(f"pkcs11: KEK {key_id!r} exists")
            self._generate(slot.session, key_id, 1)
            return 1

        version = await self._run("create", create)
        self._latest[key_id] = (version, time.monotonic())
        return version

    async def rotate_kek(self, kms_key_id: str | None = None) -> int:
        key_id = _check_name(kms_key_id or self.default_key_id)

        def rotate(slot: _Slot) -> int:
            versions = self._versions_now(slot.session, key_id)
            if not versions:
                raise KmsRefused(f"pkcs11: token {self._token_label!r} holds no KEK {key_id!r}")
            latest = max(versions) + 1
            self._generate(slot.session, key_id, latest)
            return latest

        latest = await self._run("rotate", rotate)
        self._latest[key_id] = (latest, time.monotonic())
        return latest

    async def kek_versions(self, kms_key_id: str | None = None) -> KekVersions:
        key_id = _check_name(kms_key_id or self.default_key_id)
        versions = await self._run("versions", lambda slot: self._versions_now(slot.session, key_id))
        if not versions:
            raise KmsRefused(f"pkcs11: token {self._token_label!r} holds no KEK {key_id!r}")
        latest = max(versions)
        self._latest[key_id] = (latest, time.monotonic())
        usable = [v for v, unwraps in versions.items() if unwraps]
        return KekVersions(latest, min(usable) if usable else latest + 1)

    async def retire_kek_versions(self, min_version: int, kms_key_id: str | None = None) -> None:
        key_id = _check_name(kms_key_id or self.default_key_id)
        latest = (await self.kek_versions(key_id)).latest
        if not 1 <= min_version <= latest:
            raise KmsRefused(f"pkcs11: min version {min_version} is outside 1..{latest} of KEK {key_id!r}")
        await self._run("retire", lambda slot: self._set_usable_now(slot.session, key_id, min_version, False))

    async def aclose(self) -> None:
        slots = []
        while not self._slots.empty():
            slots.append(self._slots.get_nowait())
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close_now, slots)
        self._executor.shutdown(wait=False)

    # --- the thread side ---------------------------------------------------------------

    async def _run(self, operation: str, call: Callable[[_Slot], T]) -> T:
        """`call` on a pooled session in the thread pool; the slot goes back when the thread is done
        with it (not when an awaiting caller is cancelled)."""
        slot = await self._slots.get()
        loop = asyncio.get_running_loop()
        self._calls += 1

        def in_thread() -> T:
            try:
                return self._in_session(operation, slot, call)
            finally:
                loop.call_soon_threadsafe(self._slots.put_nowait, slot)

        return await loop.run_in_executor(self._executor, in_thread)

    def _in_session(self, operation: str, slot: _Slot, call: Callable[[_Slot], T]) -> T:
        p11 = self._p11
        with self._module_lock:
            try:
                if slot.session is None:
                    slot.session, slot.keys = self._token.open(rw=True), {}
                return call(slot)
            except KmsError:
                raise
            except p11.PKCS11Error as exc:
                error = map_error(operation, exc)
                if isinstance(error, KmsUnavailable) and not isinstance(error, KmsThrottled):
                    slot.drop()
                raise error from None

    def _kek(self, slot: _Slot, key_id: str, version: int) -> Any:
        label = f"{key_id}.v{version}"
        key = slot.keys.get(label)
        if key is None:
            try:
                key = slot.session.get_key(object_class=self._p11.ObjectClass.SECRET_KEY, label=label)
            except self._p11.NoSuchKey:
                raise KmsRefused(f"pkcs11: token {self._token_label!r} holds no KEK {label!r}") from None
            slot.keys[label] = key
        return key

    def _wrap_now(self, slot: _Slot, key_id: str, version: int, payload: bytes) -> bytes:
        p11 = self._p11
        A = p11.Attribute
        kek = self._kek(slot, key_id, version)
        carrier = slot.session.create_object({
            A.CLASS: p11.ObjectClass.SECRET_KEY, A.KEY_TYPE: p11.KeyType.GENERIC_SECRET, A.VALUE: payload,
            A.TOKEN: False, A.PRIVATE: True, A.EXTRACTABLE: True, A.SENSITIVE: False})
        try:
            sealed: bytes = kek.wrap_key(carrier, mechanism=p11.Mechanism(CKM_AES_KEY_WRAP_PAD))
            return sealed
        finally:
            carrier.destroy()

    def _unwrap_now(self, slot: _Slot, key_id: str, version: int, sealed: bytes) -> bytes:
        p11 = self._p11
        A = p11.Attribute
        kek = self._kek(slot, key_id, version)
        carrier = kek.unwrap_key(p11.ObjectClass.SECRET_KEY, p11.KeyType.GENERIC_SECRET, sealed,
                                 mechanism=p11.Mechanism(CKM_AES_KEY_WRAP_PAD), store=False,
                                 template={A.PRIVATE: True, A.EXTRACTABLE: True, A.SENSITIVE: False})
        try:
            payload: bytes = carrier[A.VALUE]
            return payload
        finally:
            carrier.destroy()

    def _versions_now(self, session: Any, key_id: str) -> dict[int, bool]:
        """The KEK's versions on the token, each with whether it still unwraps (CKA_UNWRAP)."""
        A = self._p11.Attribute
        versions = {}
        for key in session.get_objects({A.CLASS: self._p11.ObjectClass.SECRET_KEY, A.ID: key_id.encode()}):
            label = key[A.LABEL]
            match = _VERSION.fullmatch(label[len(key_id):]) if label.startswith(key_id) else None
            if match:
                versions[int(match.group(1))] = bool(key[A.UNWRAP])
        return versions

    def _generate(self, session: Any, key_id: str, version: int) -> None:
        p11 = self._p11
        A = p11.Attribute
        session.generate_key(p11.KeyType.AES, 256, id=key_id.encode(), label=f"{key_id}.v{version}", store=True,
                             template={A.EXTRACTABLE: False, A.SENSITIVE: True, A.PRIVATE: True,
                                       A.WRAP: True, A.UNWRAP: True, A.ENCRYPT: False, A.DECRYPT: False,
                                       A.SIGN: False, A.VERIFY: False, A.DERIVE: False})
        log.info("pkcs11 KEK %s version %d generated on token %s", key_id, version, self._token_label)

    def _set_usable_now(self, session: Any, key_id: str, below: int | None, usable: bool) -> int:
        """Sets CKA_WRAP/CKA_UNWRAP on the KEK's versions below `below` (None: all). Returns how many."""
        A = self._p11.Attribute
        count = 0
        for key in session.get_objects({A.CLASS: self._p11.ObjectClass.SECRET_KEY, A.ID: key_id.encode()}):
            match = _VERSION.fullmatch(key[A.LABEL][len(key_id):])
            if match and (below is None or int(match.group(1)) < below):
                key[A.WRAP] = usable
                key[A.UNWRAP] = usable
                count += 1
        return count

    def _close_now(self, slots: list[_Slot]) -> None:
        with self._module_lock:
            for slot in slots:
                slot.drop()
            try:
                self._login.close()  # last: it logs the token out
            except self._p11.PKCS11Error:
                pass

    async def _latest_version(self, key_id: str) -> int:
        cached = self._latest.get(key_id)
        if cached is not None and time.monotonic() - cached[1] < LATEST_TTL:
            return cached[0]
        return (await self.kek_versions(key_id)).latest


class _Slot:
    """One pooled session and the KEK handles found through it (None after a device failure)."""

    def __init__(self, session: Any) -> None:
        self.session: Any = session
        self.keys: dict[str, Any] = {}

    def drop(self) -> None:
        session, self.session, self.keys = self.session, None, {}
        if session is not None:
            try:
                session.close()
            except Exception:  # a session the device already lost cannot be closed cleanly
                pass


_UNAVAILABLE = frozenset({"DeviceError", "DeviceMemory", "DeviceRemoved", "TokenNotPresent", "TokenNotRecognised",
                          "SessionClosed", "SessionHandleInvalid", "UserNotLoggedIn", "HostMemory",
                          "FunctionCancelled", "SlotIDInvalid"})


def map_error(operation: str, error: Exception) -> KmsError:
    """A PKCS#11 error as the port's: the device or session gone -> unavailable; the module out of
    sessions -> throttled; anything else the token answered -> refused. Names only, never values."""
    name = type(error).__name__
    if name == "SessionCount":
        return KmsThrottled(f"pkcs11 {operation}: {name}")
    if name in _UNAVAILABLE:
        return KmsUnavailable(f"pkcs11 {operation}: {name}")
    return KmsRefused(f"pkcs11 {operation}: {name}", detail=str(error) or None)


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise KmsRefused("pkcs11: a KEK name is 1-96 of A-Z a-z 0-9 _ . : / - (not starting with . : / -)")
    return name
