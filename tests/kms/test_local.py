import pytest

from workers.kms import KmsRefused, encryption_context
from workers.kms.local import WRAPPED_BYTES, LocalKms

CONTEXT = encryption_context("acme", "0" * 32, "signing")


async def test_generate_then_decrypt_returns_the_same_key():
    kms = LocalKms()
    data_key = await kms.generate_data_key(None, CONTEXT)
    assert len(data_key.plaintext) == 32 and len(data_key.wrapped) == WRAPPED_BYTES
    assert await kms.decrypt(data_key.wrapped, data_key.kms_key_id, CONTEXT) == data_key.plaintext


@pytest.mark.parametrize("field", ["tenant_id", "key_id", "key_type"])
async def test_another_context_is_refused(field):
    kms = LocalKms()
    data_key = await kms.generate_data_key(None, CONTEXT)
    with pytest.raises(KmsRefused):
        await kms.decrypt(data_key.wrapped, data_key.kms_key_id, {**CONTEXT, field: "other"})


async def test_every_bit_flip_and_truncation_is_refused():
    kms = LocalKms()
    data_key = await kms.generate_data_key(None, CONTEXT)
    blob = data_key.wrapped
    for bit in range(len(blob) * 8):
        flipped = bytearray(blob)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(KmsRefused):
            await kms.decrypt(bytes(flipped), data_key.kms_key_id, CONTEXT)
    for size in range(len(blob)):
        with pytest.raises(KmsRefused):
            await kms.decrypt(blob[:size], data_key.kms_key_id, CONTEXT)


async def test_another_kek_cannot_unwrap():
    data_key = await LocalKms().generate_data_key(None, CONTEXT)
    with pytest.raises(KmsRefused):
        await LocalKms(kek=b"\x01" * 32).decrypt(data_key.wrapped, data_key.kms_key_id, CONTEXT)


async def test_a_key_pending_deletion_unwraps_nothing():
    kms = LocalKms()
    data_key = await kms.generate_data_key("byok/tenant", CONTEXT)
    await kms.schedule_key_deletion("byok/tenant", 7)
    with pytest.raises(KmsRefused):
        await kms.decrypt(data_key.wrapped, "byok/tenant", CONTEXT)


def test_repr_never_shows_the_plaintext():
    from workers.kms import DataKey

    key = DataKey(plaintext=b"\xaa" * 32, wrapped=b"w", kms_key_id="k")
    assert "aa" not in repr(key).lower().replace("kms_key_id", "")
