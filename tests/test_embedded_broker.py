"""The embedded broker must not outlive a parent that was SIGKILLed."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys

import pytest

CHILD = """
import sys
from pipeline.kafka.embedded import EmbeddedBroker
b = EmbeddedBroker().start()
print(b._proc.pid, flush=True)
sys.stdin.read()
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv (Linux)")
def test_broker_stops_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    broker_pid = int(parent.stdout.readline())
    assert _alive(broker_pid)
    with open(f"/proc/{broker_pid}/cmdline", "rb") as f:
        assert b"tansu" in f.read()
    exited = os.pidfd_open(broker_pid)  # readable once the broker has exited
    try:
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        readable, _, _ = select.select([exited], [], [], 10)
    finally:
        os.close(exited)
    alive = not readable and _alive(broker_pid)
    if alive:
        os.kill(broker_pid, signal.SIGKILL)
    assert not alive, "the broker outlived its SIGKILLed parent"
