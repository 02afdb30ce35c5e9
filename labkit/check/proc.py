"""Facts the exercise checks read from the kernel (/proc), never from what was typed.

Also the verdicts every "return a running container's id" exercise shares:
the container must exist, be started, and still run.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from .. import runtime
from ..errors import ContainerError
from ..procfs import status_fields
from ..runtime.store import State
from . import Verdict, failed

# The directory that holds the labkit package, so helper processes import this same labkit.
_LABKIT_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def container_state(container_id: str, root: str | None = None) -> State | None:
    """The runtime's state of a container, or None if there is no such container."""
    if not isinstance(container_id, str) or not container_id:
        return None
    try:
        return runtime.state(container_id, root=root)
    except ContainerError:
        return None


def lifecycle_verdict(container_id: object, status: str | None, exit_code: int | None,
                      keeps_running: str = "e.g. ['sleep', '300']") -> Verdict | None:
    """The failing verdict when a container is missing, not started or exited; None if running."""
    if status is None:
        if not isinstance(container_id, str):
            return failed(f"your function returned {container_id!r}, not a container id",
                          "return the id (a str) you passed to runtime.create")
        return failed(f"there is no container {container_id!r}",
                      "create it with runtime.create(container_id, bundle) and return that same id; "
                      "`runtime.list_containers()` lists the ones that exist")
    if status == "created":
        return failed(f"container {container_id!r} is created but not started",
                      f"call runtime.start({container_id!r}): `create` leaves the init waiting before exec")
    if status != "running":
        return failed(f"container {container_id!r} has already exited (exit code {exit_code})",
                      f"its PID 1 must keep running for the check to look at it: run something "
                      f"long-lived, {keeps_running}")
    return None


def ns_pids(pid: int) -> list[int]:
    """The process's PID in each PID namespace it is in: the host's first, its own last."""
    return [int(p) for p in status_fields(pid).get("NSpid", "").split()]


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def host_uid(pid: int) -> int | None:
    """The process's effective uid as the host's kernel sees it."""
    uids = status_fields(pid).get("Uid", "").split()
    return int(uids[1]) if len(uids) > 1 else None


def id_map(pid: int, which: str = "uid_map") -> list[tuple[int, int, int]]:
    """/proc/PID/uid_map (or gid_map): (inside id, outside id, count) lines."""
    try:
        with open(f"/proc/{pid}/{which}") as f:
            return [tuple(int(x) for x in line.split()) for line in f if line.strip()]  # type: ignore[misc]
    except OSError:
        return []


def inside_id(outside: int, mapping: list[tuple[int, int, int]]) -> int | None:
    """Which id `outside` (a host id) is inside a user namespace with this map; None if unmapped."""
    for inside, start, count in mapping:
        if start <= outside < start + count:
            return inside + outside - start
    return None


def catches(pid: int, sig: int = signal.SIGTERM) -> bool:
    """Has the process installed a handler for `sig`? (bit sig-1 of SigCgt)"""
    mask = status_fields(pid).get("SigCgt")
    return bool(mask) and bool(int(mask, 16) & (1 << (sig - 1)))


def hostname_in(pid: int) -> str | None:
    """The hostname in the UTS namespace of `pid`.

    A helper process joins that namespace (setns) and asks the kernel; the
    calling process (a notebook kernel) never changes its own namespaces.
    """
    code = ("import os, sys\nfrom labkit import namespaces\n"
            "namespaces.join(sys.argv[1], 'uts')\nprint(os.uname().nodename)")
    env = dict(os.environ)
    env["PYTHONPATH"] = _LABKIT_PARENT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        result = subprocess.run([sys.executable, "-c", code, f"/proc/{pid}/ns/uts"], capture_output=True,
                                text=True, timeout=30, env=env)
    except subprocess.TimeoutExpired:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def has_exec(state: State) -> bool:
    """Has the container's init exec'd process.args yet? (`start` returns before it has.)"""
    return "labkit.runtime.init" not in cmdline(state.pid)  # the init runs `python -m labkit.runtime.init`


def wait_exec(state: State, timeout: float = 5.0) -> bool:
    """Wait until a running container's PID 1 is the program it was started with."""
    return wait_until(lambda: has_exec(state), timeout)
