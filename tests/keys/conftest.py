"""The `ledger` fixture of tests/ledger (memory and a real TigerBeetle) for key-level tests."""

from tests.ledger.conftest import ledger  # noqa: F401  (a pytest fixture, used by name)
