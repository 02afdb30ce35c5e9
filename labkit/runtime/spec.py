"""The OCI runtime spec (config.json) as a typed model.

Only the fields labkit acts on are typed; every other field is kept in
`extra` and written back unchanged, so a config.json made by `runc spec`,
podman or a later chapter survives a load/save round trip.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, ClassVar

from .. import capabilities, seccomp
from ..errors import SpecError
from ..namespaces import TYPES as NAMESPACE_TYPES

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclasses.dataclass
class _Model:
    """from_dict/to_dict with unknown keys kept in `extra`."""

    NESTED: ClassVar[dict[str, Any]] = {}  # field -> model class (or [class] for lists)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        if not isinstance(data, dict):
            raise SpecError(f"{cls.__name__}: expected an object, got {type(data).__name__}",
                            "check config.json against the OCI runtime spec")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {"extra": {k: v for k, v in data.items() if k not in known}}
        for key in known & data.keys():
            kind, value = cls.NESTED.get(key), data[key]
            if isinstance(kind, list) and value is not None:
                value = [kind[0].from_dict(v) for v in value]
            elif kind is not None and value is not None:
                value = kind.from_dict(value)
            kwargs[key] = value
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or value is None:
                continue
            if isinstance(value, list):
                value = [v.to_dict() if isinstance(v, _Model) else v for v in value]
            elif isinstance(value, _Model):
                value = value.to_dict()
            out[f.name] = value
        out.update(self.extra)
        return out


@dataclasses.dataclass
class User(_Model):
    uid: int = 0
    gid: int = 0
    additionalGids: list[int] | None = None
    umask: int | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Process(_Model):
    NESTED: ClassVar[dict[str, Any]] = {"user": User}
    args: list[str] = dataclasses.field(default_factory=list)
    env: list[str] = dataclasses.field(default_factory=lambda: [DEFAULT_PATH, "TERM=xterm"])
    cwd: str = "/"
    user: User = dataclasses.field(default_factory=User)
    terminal: bool = False
    capabilities: dict[str, list[str]] | None = None  # None: no capabilities at all, as runc
    noNewPrivileges: bool = False
    rlimits: list[dict[str, Any]] | None = None  # [{"type": "RLIMIT_NOFILE", "soft": N, "hard": N}]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Root(_Model):
    path: str = "rootfs"
    readonly: bool = False
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Mount(_Model):
    destination: str = ""
    type: str | None = None
    source: str | None = None
    options: list[str] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Namespace(_Model):
    type: str = ""
    path: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class IDMapping(_Model):
    containerID: int = 0
    hostID: int = 0
    size: int = 0
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Linux(_Model):
    NESTED: ClassVar[dict[str, Any]] = {"namespaces": [Namespace], "uidMappings": [IDMapping],
                                        "gidMappings": [IDMapping]}
    namespaces: list[Namespace] = dataclasses.field(default_factory=list)
    uidMappings: list[IDMapping] | None = None
    gidMappings: list[IDMapping] | None = None
    cgroupsPath: str | None = None
    resources: dict[str, Any] | None = None  # OCI linux.resources, applied by labkit.cgroups
    seccomp: dict[str, Any] | None = None  # OCI linux.seccomp, compiled by labkit.seccomp
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def wants_cgroup(self) -> bool:
        return bool(self.cgroupsPath or self.resources)

    def namespace(self, ns_type: str) -> Namespace | None:
        return next((n for n in self.namespaces if n.type == ns_type), None)


@dataclasses.dataclass
class Spec(_Model):
    NESTED: ClassVar[dict[str, Any]] = {"process": Process, "root": Root, "mounts": [Mount],
                                        "linux": Linux}
    ociVersion: str = OCI_VERSION
    process: Process | None = None
    root: Root | None = None
    hostname: str | None = None
    mounts: list[Mount] = dataclasses.field(default_factory=list)
    linux: Linux | None = None
    annotations: dict[str, str] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    # --- files ---
    @classmethod
    def load(cls, bundle: str) -> "Spec":
        path = os.path.join(bundle, "config.json")
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise SpecError(f"no config.json in bundle {bundle}",
                            "create one with `labkit-runc spec` or labkit.runtime.default_spec()") from None
        except json.JSONDecodeError as err:
            raise SpecError(f"{path} is not valid JSON: {err}", "fix the syntax at that line") from None
        return cls.from_dict(data)

    def save(self, bundle: str) -> str:
        path = os.path.join(bundle, "config.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    def rootfs_path(self, bundle: str) -> str:
        assert self.root is not None
        return os.path.normpath(os.path.join(bundle, self.root.path))

    # --- checks, all before any kernel object exists ---
    def validate(self, bundle: str | None = None) -> "Spec":
        """Raise SpecError listing every problem found; return self if none."""
        problems = list(self._problems(bundle))
        if problems:
            raise SpecError("invalid runtime spec: " + "; ".join(problems),
                            "fix config.json (see the OCI runtime spec, config.md)")
        return self

    def _problems(self, bundle: str | None):
        if not self.ociVersion:
            yield "ociVersion is missing"
        if self.process is None or not self.process.args:
            yield "process.args must name the program to run"
        elif not self.process.cwd.startswith("/"):
            yield f"process.cwd {self.process.cwd!r} must be an absolute path"
        if self.process and (self.process.user.uid < 0 or self.process.user.gid < 0):
            yield "process.user uid/gid must not be negative"
        if self.process and self.process.terminal:
            yield "process.terminal=true is not supported yet: set it to false"
        if self.process:
            yield from capabilities.problems(self.process.capabilities)
            yield from _rlimit_problems(self.process.rlimits)
        if self.root is None or not self.root.path:
            yield "root.path is missing"
        elif bundle is not None and not os.path.isdir(self.rootfs_path(bundle)):
            yield f"root.path {self.rootfs_path(bundle)} is not a directory"
        for m in self.mounts:
            if not m.destination.startswith("/"):
                yield f"mount destination {m.destination!r} must be absolute"
        linux = self.linux or Linux()
        seen = set()
        for ns in linux.namespaces:
            if ns.type not in NAMESPACE_TYPES:
                yield f"unknown namespace type {ns.type!r} (use {', '.join(NAMESPACE_TYPES)})"
            elif ns.type in seen:
                yield f"namespace {ns.type!r} listed twice"
            seen.add(ns.type)
            if ns.path is not None and not os.path.exists(ns.path):
                yield f"namespace path {ns.path} does not exist"
        uts = linux.namespace("uts")
        if self.hostname and (uts is None or uts.path):
            yield "hostname needs a new uts namespace in linux.namespaces"
        user = linux.namespace("user")
        if user is not None and user.path is None and not (linux.uidMappings and linux.gidMappings):
            yield "a new user namespace needs linux.uidMappings and linux.gidMappings"
        yield from seccomp.problems(linux.seccomp)
        if (linux.uidMappings or linux.gidMappings) and user is None:
            yield "uid/gid mappings need a user namespace in linux.namespaces"


RLIMITS = ("RLIMIT_AS", "RLIMIT_CORE", "RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_FSIZE", "RLIMIT_LOCKS",
           "RLIMIT_MEMLOCK", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_NOFILE", "RLIMIT_NPROC",
           "RLIMIT_RSS", "RLIMIT_RTPRIO", "RLIMIT_RTTIME", "RLIMIT_SIGPENDING", "RLIMIT_STACK")


def _rlimit_problems(rlimits: Any):
    if rlimits is None:
        return
    if not isinstance(rlimits, list):
        yield "process.rlimits must be a list of {type, soft, hard}"
        return
    seen = set()
    for r in rlimits:
        kind = r.get("type") if isinstance(r, dict) else None
        if kind not in RLIMITS:
            yield f"process.rlimits: unknown type {kind!r} (use e.g. RLIMIT_NOFILE; see getrlimit(2))"
            continue
        soft, hard = r.get("soft"), r.get("hard")
        if not all(isinstance(v, int) and v >= 0 for v in (soft, hard)) or soft > hard:
            yield f"process.rlimits: {kind} needs integers 0 <= soft <= hard, got soft={soft!r} hard={hard!r}"
        if kind in seen:
            yield f"process.rlimits: {kind} listed twice"
        seen.add(kind)


def default_mounts() -> list[Mount]:
    """The mounts every Linux container gets (as `runc spec` lists them)."""
    return [
        Mount("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
        Mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        Mount("/dev/pts", "devpts", "devpts",
              ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
        Mount("/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        Mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
        Mount("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
    ]


DEFAULT_NAMESPACES = ("pid", "network", "ipc", "uts", "mount", "cgroup")


def default_spec(args: list[str] | None = None, rootfs: str = "rootfs",
                 hostname: str = "labkit", namespaces=DEFAULT_NAMESPACES) -> Spec:
    """A spec like `runc spec` makes: sh in busybox, all namespaces but user, runc's three
    capabilities, no new privileges, at most 1024 open files."""
    return Spec(
        process=Process(args=list(args or ["sh"]), capabilities=capabilities.oci_sets(capabilities.RUNC_DEFAULT, ambient=True),
                        noNewPrivileges=True, rlimits=[{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]),
        root=Root(path=rootfs),
        hostname=hostname,
        mounts=default_mounts(),
        linux=Linux(namespaces=[Namespace(t) for t in namespaces]),
    )
