"""`labkit registry start|stop|status`: one registry for the user, on loopback, until stopped.

What `docker run -d -p 127.0.0.1:5000:5000 -v registry:/var/lib/registry registry:2`
gives a Docker user, without a container: Debian's docker-registry, detached
(its own session, so it outlives the command that started it), listening on
127.0.0.1 only, with the same config LocalRegistry writes.

    <run root>/registry/config.yml     rewritten at each start
    <run root>/registry/registry.pid   {"pid", "start_time", "port"}: stop signals that
                                       process only, never a recycled pid
    <run root>/registry/registry.log   its output
    <data root>/registry/              its storage: kept across stop and start, like a volume

`labkit doctor --leaks` lists it while it runs (its config is under a labkit path),
and `labkit reset` kills it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import signal
import subprocess
import time
from typing import Any, Iterator

from .. import settings
from ..errors import LabkitError
from ..runtime.store import proc_start_time, read_json, write_json
from .local import find_registry_binary, registry_config, spawn_registry, wait_answering, write_config

DEFAULT_PORT = 5000
PID_FILE = "registry.pid"
CONFIG_FILE = "config.yml"
LOG_FILE = "registry.log"
_spawned: dict[int, subprocess.Popen] = {}  # ours to reap when started and stopped by one process


@dataclasses.dataclass(frozen=True)
class RegistryStatus:
    """The registry of `labkit registry start`: running (with pid and port) or stopped."""

    running: bool
    port: int | None = None
    pid: int | None = None
    storage: str = ""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}" if self.port else ""

    def __str__(self) -> str:
        if not self.running:
            return "registry: stopped"
        return f"registry: running on {self.address} (pid {self.pid}, storage {self.storage})"


def _path(name: str) -> str:
    return os.path.join(settings.registry_state(), name)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """start and stop one at a time: two `start`s at once must not spawn two registries."""
    os.makedirs(settings.registry_state(), exist_ok=True)
    fd = os.open(_path(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _record() -> dict[str, Any] | None:
    """The pid file, if it names a process that still runs (same pid *and* start time)."""
    try:
        saved = read_json(_path(PID_FILE))
    except (OSError, ValueError):
        return None
    if not saved or not isinstance(saved.get("pid"), int):
        return None
    start_time = saved.get("start_time")
    return saved if start_time is not None and proc_start_time(saved["pid"]) == start_time else None


def _status_of(saved: dict[str, Any] | None) -> RegistryStatus:
    if saved is None:
        return RegistryStatus(False, storage=settings.registry_storage())
    return RegistryStatus(True, saved.get("port"), saved["pid"], saved.get("storage", ""))


def status() -> RegistryStatus:
    return _status_of(_record())


def _remove_pid_file() -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_path(PID_FILE))


def _log_since(offset: int) -> str:
    try:
        with open(_path(LOG_FILE), "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def start(port: int | None = None, timeout: float = 20.0) -> tuple[RegistryStatus, bool]:
    """Start the registry on 127.0.0.1:`port` (default 5000) and wait until /v2/ answers.

    Returns its status and whether this call started it (False: it already ran).
    """
    with _locked():
        running = _record()
        if running:
            if port is not None and port != running.get("port"):
                raise LabkitError(f"the registry already runs on 127.0.0.1:{running.get('port')}, not on {port}",
                                  "stop it first (labkit registry stop), or use the port it has")
            return _status_of(running), False
        binary = find_registry_binary()
        if not binary:
            raise LabkitError("no docker-registry binary found",
                              "apt-get install docker-registry (Debian/Ubuntu ship CNCF distribution as it)")
        return _spawn(binary, DEFAULT_PORT if port is None else port, timeout), True


def _spawn(binary: str, port: int, timeout: float) -> RegistryStatus:
    storage = settings.registry_storage()
    os.makedirs(storage, exist_ok=True)
    write_config(_path(CONFIG_FILE), registry_config(storage, port))
    log_offset = os.path.getsize(_path(LOG_FILE)) if os.path.exists(_path(LOG_FILE)) else 0
    process = spawn_registry(binary, _path(CONFIG_FILE), _path(LOG_FILE))
    saved = {"pid": process.pid, "start_time": proc_start_time(process.pid), "port": port, "storage": storage}
    write_json(_path(PID_FILE), saved)  # before the wait: a stop from elsewhere can already find it
    _spawned[process.pid] = process
    if wait_answering(port, lambda: process.poll() is None, timeout):
        return _status_of(saved)
    _end(saved, timeout=5.0)
    _remove_pid_file()
    log = _log_since(log_offset)
    hint = (f"another program listens on 127.0.0.1:{port}: pick another port with --port"
            if "address already in use" in log else f"see {_path(LOG_FILE)}")
    raise LabkitError(f"docker-registry did not answer on 127.0.0.1:{port} within {timeout:g}s:\n{log[-2000:]}",
                      hint)


def _gone(pid: int, start_time: int | None) -> bool:
    """Whether that process has ended (reaping it if it is our own child)."""
    process = _spawned.get(pid)
    if process is not None and process.poll() is not None:
        _spawned.pop(pid, None)
    now = proc_start_time(pid)  # None: gone, or a zombie
    return now is None or now != start_time


def _wait_gone(pid: int, start_time: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _gone(pid, start_time):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _end(saved: dict[str, Any], timeout: float) -> None:
    """TERM (docker-registry shuts down gracefully), then KILL after `timeout` seconds."""
    pid, start_time = saved["pid"], saved.get("start_time")
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if _gone(pid, start_time):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if _wait_gone(pid, start_time, wait):
            return
    raise LabkitError(f"the registry (pid {pid}) did not end after SIGKILL", f"look at it with `ps -p {pid} -o stat`")


def stop(timeout: float = 10.0) -> RegistryStatus | None:
    """Stop the registry by its recorded pid; what was stopped, or None if none ran."""
    with _locked():
        running = _record()
        if running is not None:
            _end(running, timeout)
        _remove_pid_file()  # also a stale one, whose process is long gone
        return dataclasses.replace(_status_of(running), running=False) if running else None
