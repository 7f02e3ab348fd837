"""The dev banner counts and names the groups that run; the README's sample banner is that banner."""

from __future__ import annotations

from pathlib import Path

from workers.app.dev import DevStack, banner
from workers.groups import ALL_GROUPS
from workers.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_banner_counts_what_runs():
    stack = DevStack(Settings(), "127.0.0.1:9092", True, [])
    assert banner(stack, 6.4)[0] == f"keyledger dev: {len(ALL_GROUPS)} consumer groups running after 6.4s"
    two = banner(stack, 6.4, groups=["keyledger-keygen", "keyledger-signer"])
    assert two[0].startswith("keyledger dev: 2 consumer groups") and "  groups  keyledger-keygen, keyledger-signer" in two


def test_the_readme_shows_every_group_dev_runs():
    text = README.read_text()
    assert f"keyledger dev: {len(ALL_GROUPS)} consumer groups running" in text
    assert f"  groups  {', '.join(ALL_GROUPS)}\n" in text
