"""The embedded servers' start: one that does not listen in time is stopped, not left running behind the error
(a TigerBeetle replica holds its memory until it exits)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from workers.app.embedded import TigerBeetleServer


def silent_binary(folder: Path) -> Path:
    """A stand-in `tigerbeetle`: `format` succeeds, `start` writes its pid and never listens."""
    script = folder / "tigerbeetle"
    script.write_text(f'#!/bin/sh\n[ "$1" = format ] && exit 0\necho $$ > {folder}/started.pid\nexec sleep 60\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_a_tigerbeetle_that_does_not_listen_in_time_is_killed(tmp_path: Path):
    server = TigerBeetleServer(str(silent_binary(tmp_path)), tmp_path)
    with pytest.raises(TimeoutError):
        server.start(timeout=1.0)
    pid = int((tmp_path / "started.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone (and reaped), not sleeping on
