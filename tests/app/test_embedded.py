"""The embedded servers' start: one that does not listen in time is stopped, not left running behind the error
(a TigerBeetle replica holds its memory until it exits)."""

from __future__ import annotations

import os
import stat
import sys
from concurrent.futures import ThreadPoolExecutor
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


def listening_binary(folder: Path) -> Path:
    """A stand-in `tigerbeetle`: `start` notes its beginning and end in `starts.log` around a pause, then
    listens on the port of its --addresses until killed."""
    script = folder / "tigerbeetle"
    listen = ("import socket,sys,time; s=socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); "
              "time.sleep(60)")
    script.write_text(f'#!/bin/sh\n[ "$1" = format ] && exit 0\necho begin >> {folder}/starts.log\nsleep 0.3\n'
                      f'echo end >> {folder}/starts.log\nexec {sys.executable} -c "{listen}" "${{2##*:}}"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_replicas_on_one_machine_start_one_after_another(tmp_path: Path):
    binary = str(listening_binary(tmp_path))
    servers = [TigerBeetleServer(binary, tmp_path / str(n)) for n in range(3)]
    for n in range(3):
        (tmp_path / str(n)).mkdir()
    try:
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda server: server.start(timeout=20.0), servers))
        assert (tmp_path / "starts.log").read_text().split() == ["begin", "end"] * 3  # never two at once
    finally:
        for server in servers:
            server.stop()
