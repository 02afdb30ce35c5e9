"""Container records on disk: immutable config + mutable state, one dir each.

    <root>/<id>/config.json   written once at create (podman's ContainerConfig)
    <root>/<id>/state.json    name, status, pid, exit code, times… (rewritten)
    <root>/<id>/.lock         flock: one writer of this record at a time
    <root>/.names.lock        flock: create/rename/remove, so a name has one owner

<root> is settings.data_root()/containers unless the caller gives another.
Every file is written atomically (temp, fsync, rename, fsync dir) and a record
appears by renaming a finished temp dir into place, so a crash never leaves a
half-written record. Lock order is always names lock, then record lock.
The name lives in state.json because `docker rename` changes it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterator, Mapping

from labkit import settings
from labkit.engine import names as _names
from labkit.engine.errors import Invalid, NotFound
from labkit.engine.restart import RestartPolicy
from labkit.engine.status import Status
from labkit.engine.timefmt import now_ns, parse_rfc3339, rfc3339_nano

CONFIG_FILE, STATE_FILE, LOCK_FILE, NAMES_LOCK = "config.json", "state.json", ".lock", ".names.lock"
_NAME_TRIES = 6  # Docker tries a few random names, then appends digits


@dataclass(frozen=True)
class Mount:
    """One -v/--mount: bind, volume or tmpfs."""

    type: str          # "bind" | "volume" | "tmpfs"
    target: str
    source: str = ""
    read_only: bool = False
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Resources:
    """Resource limits as `docker run` takes them; None = unlimited."""

    memory: int | None = None        # bytes
    memory_swap: int | None = None   # bytes, memory+swap; -1 unlimited swap
    nano_cpus: int | None = None     # --cpus 1.5 → 1_500_000_000
    cpu_shares: int | None = None
    pids_limit: int | None = None


@dataclass(frozen=True)
class PortSpec:
    """One -p: container_port/proto published on host_ip:host_port (0: a free port at start)."""

    container_port: int
    proto: str = "tcp"
    host_ip: str = ""        # "": every address of the host
    host_port: int = 0


@dataclass(frozen=True)
class ContainerConfig:
    """What the user asked for at create; never changes afterwards."""

    image: str
    command: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None   # None = the image's
    env: tuple[str, ...] = ()                   # "KEY=value", as docker keeps them
    working_dir: str = ""
    user: str = ""
    hostname: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[Mount, ...] = ()
    restart_policy: RestartPolicy = RestartPolicy()
    auto_remove: bool = False
    stop_signal: str = ""                       # "" until create: --stop-signal, the image's, or SIGTERM
    stop_timeout: int | None = None             # None = engine default (10 s)
    init: bool = False
    tty: bool = False
    open_stdin: bool = False
    resources: Resources = Resources()
    log_opts: Mapping[str, str] = field(default_factory=dict)
    image_id: str = ""                          # the image's config digest at create (docker's .Image)
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    privileged: bool = False
    read_only: bool = False                     # --read-only: the root filesystem
    network_mode: str = "bridge"                # bridge | host | none | container:<id> | a network's name
    ip: str = ""                                # --ip on that network
    aliases: tuple[str, ...] = ()               # --network-alias
    ports: tuple[PortSpec, ...] = ()            # -p (and -P: the image's EXPOSE, host_port 0)
    dns: tuple[str, ...] = ()                   # --dns: upstream servers
    publish_all: bool = False                   # -P: the image's EXPOSE ports too (added at create)

    def __post_init__(self) -> None:
        # Freeze the mappings too, and accept lists from JSON/callers.
        set_ = object.__setattr__
        set_(self, "labels", MappingProxyType(dict(self.labels)))
        set_(self, "log_opts", MappingProxyType(dict(self.log_opts)))
        for name in ("command", "env", "mounts", "cap_add", "cap_drop", "aliases", "ports", "dns"):
            set_(self, name, tuple(getattr(self, name)))
        if self.entrypoint is not None:
            set_(self, "entrypoint", tuple(self.entrypoint))
        if not self.image:
            raise Invalid("a container needs an image")

    def to_json(self) -> dict[str, Any]:
        # Field by field: dataclasses.asdict cannot deep-copy the mapping proxies.
        d: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["labels"], d["log_opts"] = dict(self.labels), dict(self.log_opts)
        d["mounts"] = [dataclasses.asdict(m) for m in self.mounts]
        d["ports"] = [dataclasses.asdict(p) for p in self.ports]
        d["resources"] = dataclasses.asdict(self.resources)
        d["restart_policy"] = self.restart_policy.to_json()
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ContainerConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["mounts"] = tuple(Mount(**{**m, "options": tuple(m.get("options", ()))})
                             for m in d.get("mounts", ()))
        kw["resources"] = Resources(**d.get("resources", {}))
        kw["ports"] = tuple(PortSpec(**p) for p in d.get("ports", ()))
        kw["restart_policy"] = RestartPolicy.from_json(d.get("restart_policy", {}))
        return cls(**kw)


@dataclass
class ContainerState:
    """What changes over a container's life. Times are ns since the epoch."""

    name: str
    status: Status = Status.CREATED
    pid: int = 0
    exit_code: int = 0
    oom_killed: bool = False
    error: str = ""
    created_at: int = field(default_factory=now_ns)
    started_at: int | None = None
    finished_at: int | None = None
    restart_count: int = 0
    stopped_by_user: bool = False   # Docker's HasBeenManuallyStopped (unless-stopped)
    monitor_pid: int = 0            # the engine monitor of the current start (0: none)
    monitor_start: int | None = None  # its start time, so a reused pid is not taken for it
    ports: list[dict[str, Any]] = field(default_factory=list)  # published while it runs: PortSpec fields

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["status"] = Status(self.status).value
        for k in ("created_at", "started_at", "finished_at"):
            d[k] = rfc3339_nano(d[k])  # Docker's spelling, ns kept
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ContainerState":
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["status"] = Status(kw.get("status", "created"))
        for k in ("created_at", "started_at", "finished_at"):
            if k in kw:
                kw[k] = parse_rfc3339(kw[k]) if isinstance(kw[k], str) else kw[k]
        if kw.get("created_at") is None:
            kw["created_at"] = 0
        return cls(**kw)


@dataclass
class ContainerRecord:
    id: str
    config: ContainerConfig
    state: ContainerState

    @property
    def name(self) -> str:
        return self.state.name

    def __repr__(self) -> str:
        return (f"<ContainerRecord {_names.short_id(self.id)} {self.state.name!r} "
                f"{self.config.image} {self.state.status.value}>")


def write_json_atomic(path: str, data: Any) -> None:
    """Write JSON so readers see the old file or the new one, never a torn one."""
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(d)


def _fsync_dir(d: str) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _flock(path: str) -> Iterator[None]:
    """An exclusive flock on `path`, released when the block ends or the process dies."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


class Store:
    """All container records under one directory."""

    def __init__(self, root: str | None = None) -> None:
        self.root = root or os.path.join(settings.data_root(), "containers")

    def __repr__(self) -> str:
        return f"<Store {self.root}>"

    # -- paths and locks -------------------------------------------------
    def path(self, cid: str, *parts: str) -> str:
        return os.path.join(self.root, cid, *parts)

    def _names_lock(self) -> contextlib.AbstractContextManager[None]:
        os.makedirs(self.root, exist_ok=True)
        return _flock(os.path.join(self.root, NAMES_LOCK))

    @contextlib.contextmanager
    def _record_lock(self, cid: str) -> Iterator[None]:
        try:
            lock = _flock(self.path(cid, LOCK_FILE))
            lock.__enter__()
        except FileNotFoundError:  # the record dir is gone: removed meanwhile
            raise NotFound(f"No such container: {cid}") from None
        try:
            yield
        finally:
            lock.__exit__(None, None, None)

    # -- reading ---------------------------------------------------------
    def ids(self) -> list[str]:
        if not os.path.isdir(self.root):
            return []
        return sorted(e for e in os.listdir(self.root)
                      if _names.is_full_id(e) and os.path.isfile(self.path(e, STATE_FILE)))

    def names(self) -> dict[str, str]:
        """{id: name} for every record (what `names.resolve` needs)."""
        out = {}
        for cid in self.ids():
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                out[cid] = self._read_state(cid).name
        return out

    def resolve(self, ref: str) -> str:
        return _names.resolve(ref, self.names())

    def load(self, cid: str) -> ContainerRecord:
        try:
            with open(self.path(cid, CONFIG_FILE)) as f:
                config = ContainerConfig.from_json(json.load(f))
            return ContainerRecord(cid, config, self._read_state(cid))
        except FileNotFoundError:
            raise NotFound(f"No such container: {cid}") from None

    def get(self, ref: str) -> ContainerRecord:
        """By full id, name or unique id prefix (Docker's order and errors)."""
        return self.load(self.resolve(ref))

    def list(self) -> list[ContainerRecord]:
        out = []
        for cid in self.ids():
            with contextlib.suppress(NotFound):
                out.append(self.load(cid))
        return sorted(out, key=lambda r: r.state.created_at, reverse=True)  # newest first, as docker ps

    def _read_state(self, cid: str) -> ContainerState:
        with open(self.path(cid, STATE_FILE)) as f:
            return ContainerState.from_json(json.load(f))

    # -- writing ---------------------------------------------------------
    def create(self, config: ContainerConfig, name: str | None = None, cid: str | None = None) -> ContainerRecord:
        """Make a record in status created; Conflict if the name is taken."""
        wanted = _names.validate_name(name) if name else None
        with self._names_lock():
            taken = {n: cid for cid, n in self.names().items()}
            if wanted is not None and wanted in taken:
                raise _names.name_conflict(wanted, taken[wanted])
            final = wanted or self._free_random_name(taken)
            cid = cid or _names.new_id()
            state = ContainerState(name=final)
            tmp = tempfile.mkdtemp(prefix=".new-", dir=self.root)
            try:
                write_json_atomic(os.path.join(tmp, CONFIG_FILE), config.to_json())
                write_json_atomic(os.path.join(tmp, STATE_FILE), state.to_json())
                os.rename(tmp, self.path(cid))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            _fsync_dir(self.root)
        return ContainerRecord(cid, config, state)

    @staticmethod
    def _free_random_name(taken: Mapping[str, str]) -> str:
        for retry in range(_NAME_TRIES * 10):
            n = _names.random_name(retry // _NAME_TRIES)
            if n not in taken:
                return n
        raise RuntimeError("no free random container name")  # needs ~6000 containers

    def save_state(self, cid: str, state: ContainerState) -> None:
        """Replace state.json; call it while holding `edit` (or from within it)."""
        if not os.path.isdir(self.path(cid)):
            raise NotFound(f"No such container: {cid}")
        write_json_atomic(self.path(cid, STATE_FILE), state.to_json())

    @contextlib.contextmanager
    def edit(self, ref: str) -> Iterator[ContainerRecord]:
        """Lock a record, yield it fresh from disk, save its state if the block succeeds."""
        cid = self.resolve(ref)
        with self._record_lock(cid):
            rec = self.load(cid)  # NotFound if removed while we waited
            yield rec
            self.save_state(cid, rec.state)

    def rename(self, ref: str, new_name: str) -> None:
        new = _names.validate_name(new_name)
        with self._names_lock():
            cid = self.resolve(ref)
            owners = {n: i for i, n in self.names().items()}
            if new in owners and owners[new] != cid:
                raise _names.name_conflict(new, owners[new])
            with self._record_lock(cid):
                state = self._read_state(cid)
                state.name = new
                self.save_state(cid, state)

    def remove(self, ref: str) -> str:
        """Delete a record (the caller checked its status); returns its id."""
        with self._names_lock():
            cid = self.resolve(ref)
            with self._record_lock(cid):
                # Rename first: the record (and its name) vanish in one step.
                doomed = os.path.join(self.root, f".removing-{cid}")
                os.rename(self.path(cid), doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        return cid

    def cleanup(self) -> list[str]:
        """Finish what a crash interrupted: half-made or half-removed dirs."""
        gone: list[str] = []
        if not os.path.isdir(self.root):
            return gone
        with self._names_lock():  # a .new- dir may belong to a create in progress
            for e in os.listdir(self.root):
                if e.startswith((".new-", ".removing-")):
                    shutil.rmtree(os.path.join(self.root, e), ignore_errors=True)
                    gone.append(e)
        return gone
