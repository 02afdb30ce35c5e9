"""Container state on disk, and the OCI `state` it is reported as.

runtime_root()/<id>/
  state.json   written by `create` once the container is created (with monitor_pid and
               monitor_start when labkit's monitor made it)
  exec.fifo    exists while the container waits for `start` (as in runc)
  paused       exists while the container is frozen
  exit.json    written by labkit's monitor when the container's process has exited: the
               exit code and the cgroup's final counters (Cgroup.stats(), e.g. oom_kills)
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

from .. import settings
from ..errors import ContainerError
from .spec import OCI_VERSION

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_id(container_id: str) -> str:
    if not ID_PATTERN.match(container_id):
        raise ContainerError(f"invalid container id {container_id!r}",
                             "use letters, digits, '_', '.', '-' (max 128), starting with a letter or digit")
    return container_id


def state_dir(container_id: str, root: str | None = None) -> str:
    return os.path.join(root or settings.runtime_root(), check_id(container_id))


def write_json(path: str, data: dict[str, Any]) -> None:
    """Atomically: a reader sees the old file or the new one, never half."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat; tells a live pid from a reused one. None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


@dataclasses.dataclass
class State:
    """The OCI state of one container (see runtime.md, "State")."""

    id: str
    status: str  # creating | created | running | paused | stopped
    pid: int
    bundle: str
    annotations: dict[str, str]
    monitor_pid: int = 0  # labkit's monitor (conmon's role), if it made the container
    monitor_start: int | None = None  # its start time, to tell it from a reused pid
    exit_code: int | None = None
    created: str = ""
    cgroup: dict[str, Any] | None = None  # labkit.cgroups.Cgroup fields, if the container has one
    cgroup_stats: dict[str, Any] | None = None  # its Cgroup.stats() as the monitor read them after the exit

    def oci(self) -> dict[str, Any]:
        """Exactly the fields the OCI runtime spec defines for `state`."""
        out: dict[str, Any] = {"ociVersion": OCI_VERSION, "id": self.id, "status": self.status,
                               "bundle": self.bundle}
        if self.status in ("created", "running", "paused"):
            out["pid"] = self.pid
        if self.annotations:
            out["annotations"] = self.annotations
        return out


def load(container_id: str, root: str | None = None) -> State:
    directory = state_dir(container_id, root)
    saved = read_json(os.path.join(directory, "state.json"))
    if saved is None:
        raise ContainerError(f"container {container_id!r} does not exist",
                             "list containers with `labkit-runc list`")
    exit_info = read_json(os.path.join(directory, "exit.json"))
    alive = proc_start_time(saved["pid"]) == saved["start_time"]
    if exit_info is not None or not alive:
        status = "stopped"
    elif os.path.exists(os.path.join(directory, "exec.fifo")):
        status = "created"
    elif os.path.exists(os.path.join(directory, "paused")):
        status = "paused"
    else:
        status = "running"
    return State(id=container_id, status=status, pid=saved["pid"], bundle=saved["bundle"],
                 annotations=saved.get("annotations") or {},
                 monitor_pid=saved.get("monitor_pid", 0), monitor_start=saved.get("monitor_start"),
                 exit_code=exit_info["exit_code"] if exit_info else None,
                 created=saved.get("created", ""), cgroup=saved.get("cgroup"),
                 cgroup_stats=exit_info.get("cgroup_stats") if exit_info else None)


def list_ids(root: str | None = None) -> list[str]:
    root = root or settings.runtime_root()
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if ID_PATTERN.match(n)
                  and os.path.exists(os.path.join(root, n, "state.json")))
