"""Crash points for the engine's crash tests: `LABKIT_FAULT=NAME` kills this process there.

Every multi-step operation of the engine must leave either a consistent
container or nothing when its process dies at any step (a killed CLI, an OOM
kill, a power cut). The tests prove it by dying at each named point on
purpose; outside tests the variable is unset and a point costs one lookup.
"""
from __future__ import annotations

import os
import signal

POINTS = (
    "create:volumes-made",     # anonymous volumes exist, no record yet
    "create:record-written",   # the record exists, its bundle does not yet
    "start:monitor-spawned",   # the CLI dies before the monitor reported
    "monitor:created",         # the monitor dies with the container created, not started
    "monitor:started",         # ... started, not yet recorded as running
    "rm:killed",               # the container is dead, its runtime state not yet removed
    "rm:runtime-deleted",      # the runtime state is gone, the record not yet
)


def point(name: str) -> None:
    if os.environ.get("LABKIT_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
