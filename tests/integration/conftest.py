"""Integration tests: workers over a real broker. The fixtures live in tests/conftest.py, the helpers in
tests/support (kafka: topic readers and offsets; processes: `keyledger run` and in-process workers)."""

import pytest

pytestmark = pytest.mark.integration
