import pytest
from pydantic import ValidationError

from workers.settings import KmsProvider, LedgerKind, Settings


def test_dev_defaults_match_the_design(monkeypatch):
    for name in ("KEYLEDGER_PROFILE", "KEYLEDGER_KAFKA_BOOTSTRAP", "KEYLEDGER_LEDGER", "KEYLEDGER_KMS_PROVIDER"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert s.kms.provider is KmsProvider.LOCAL and s.ledger.kind is LedgerKind.MEMORY and s.kafka.bootstrap is None
    assert (s.cache.private_ttl, s.cache.public_ttl, s.cache.max_entries) == (3600, 86400, 1000)
    assert s.limits.rotation_age == 7_776_000 and s.kms.aws.region is None and s.ledger.tb_cluster_id == 0


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"KEYLEDGER_KMS_PROVIDER": "local"}, "KEYLEDGER_KMS_PROVIDER"),
        ({"KEYLEDGER_LEDGER": "memory"}, "KEYLEDGER_LEDGER"),
        ({"KEYLEDGER_KAFKA_BOOTSTRAP": ""}, "KEYLEDGER_KAFKA_BOOTSTRAP"),
    ],
)
def test_production_refuses_each_unsafe_setting_by_name(monkeypatch, env, named):
    safe = {
        "KEYLEDGER_PROFILE": "production",
        "KEYLEDGER_KMS_PROVIDER": "aws",
        "KEYLEDGER_KMS_KEY_ID": "alias/keyledger",
        "KEYLEDGER_LEDGER": "tigerbeetle",
        "KEYLEDGER_TB_ADDRESSES": "3000",
        "KEYLEDGER_KAFKA_BOOTSTRAP": "kafka:9092",
    }
    for k, v in {**safe, **env}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValidationError) as err:
        Settings()
    message = str(err.value)
    assert named in message
    others = set(safe) - set(env) - {"KEYLEDGER_PROFILE", "KEYLEDGER_KMS_KEY_ID", "KEYLEDGER_TB_ADDRESSES"}
    assert not any(f"{o}=" in message or f"{o} is" in message for o in others)


def test_production_with_real_parts_starts(monkeypatch):
    monkeypatch.setenv("KEYLEDGER_PROFILE", "production")
    monkeypatch.setenv("KEYLEDGER_KMS_PROVIDER", "aws")
    monkeypatch.setenv("KEYLEDGER_KMS_KEY_ID", "alias/keyledger")
    monkeypatch.setenv("KEYLEDGER_LEDGER", "tigerbeetle")
    monkeypatch.setenv("KEYLEDGER_TB_ADDRESSES", "3000")
    monkeypatch.setenv("KEYLEDGER_KAFKA_BOOTSTRAP", "kafka:9092")
    assert Settings().profile.value == "production"


def test_every_field_is_described():
    assert all(field.description for field in Settings.model_fields.values())
