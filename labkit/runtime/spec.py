"""The OCI runtime spec (config.json) as a typed model.

Only the fields labkit acts on are typed; every other field is kept in
`extra` and written back unchanged, so a config.json made by `runc spec`,
podman or a later chapter survives a load/save round trip.

Before anything is made, every field the OCI schema defines has its JSON
type checked (SCHEMA), and a field labkit does not apply is refused by name
(UNSUPPORTED): a malformed config.json ends in one SpecError listing every
problem, never in a traceback inside the container's init.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from .. import capabilities, rootfs, seccomp, sysctl
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
            if value is None:
                continue  # JSON null: the default, as runc (Go) reads it
            if isinstance(kind, list):
                if not isinstance(value, list):
                    raise SpecError(f"{cls.__name__}.{key}: expected a list, got {type(value).__name__}",
                                    "check config.json against the OCI runtime spec")
                value = [kind[0].from_dict(v) for v in value]
            elif kind is not None:
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

    @classmethod
    def from_dict(cls, data: Any) -> "Spec":
        """The model of a parsed config.json. Every field's JSON type is checked first (SpecError
        lists each wrong one), so the model's fields have the types their annotations say."""
        problems = [message for _, message in type_problems(data)]
        if problems:
            raise SpecError("invalid runtime spec: " + "; ".join(problems), SPEC_HINT)
        return super().from_dict(data)

    # --- files ---
    @classmethod
    def load(cls, bundle: str) -> "Spec":
        path = os.path.join(bundle, "config.json")
        try:
            with open(path, "rb") as f:  # bytes: json finds the encoding (UTF-8, or a BOM's)
                text = f.read()
        except FileNotFoundError:
            raise SpecError(f"no config.json in bundle {bundle}",
                            "create one with `labkit-runc spec` or labkit.runtime.default_spec()") from None
        except OSError as err:
            raise SpecError(f"cannot read {path}: {err.strerror}", "config.json must be a readable file") from None
        try:
            data = json.loads(text)
        except ValueError as err:  # bad syntax, not UTF-8 text, an integer of over 4300 digits
            raise SpecError(f"{path} is not valid JSON: {err}", "fix the syntax at that line") from None
        except RecursionError:
            raise SpecError(f"{path} is nested too deeply to read", "config.json is not a runtime spec") from None
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
            raise SpecError("invalid runtime spec: " + "; ".join(problems), SPEC_HINT)
        return self

    def _problems(self, bundle: str | None) -> Iterator[str]:
        raw = self.to_dict()
        # Types first, also of fields set on the model since it was loaded.
        wrong = [*model_problems(self), *type_problems(raw)]
        yield from (message for _, message in wrong)
        yield from unsupported_problems(raw)
        if typed_hooks := raw.get("hooks"):  # what each hook needs (path, timeout, ...)
            from .. import hooks

            yield from hooks.validate(typed_hooks)

        def typed(*sections: str) -> bool:  # the checks below read fields: only well-typed ones
            return not any(_overlaps(path, s) for path, _ in wrong for s in sections)

        if typed("ociVersion") and not self.ociVersion:
            yield "ociVersion is missing"
        yield from self._process_problems(typed)
        if typed("root"):
            if self.root is None or not self.root.path:
                yield "root.path is missing"
            elif bundle is not None and not os.path.isdir(self.rootfs_path(bundle)):
                yield f"root.path {self.rootfs_path(bundle)} is not a directory"
        if typed("mounts"):
            for m in self.mounts:
                if not m.destination.startswith("/"):
                    yield f"mount destination {m.destination!r} must be absolute"
        if typed("hostname", "linux.namespaces", "linux.uidMappings", "linux.gidMappings"):
            yield from self._namespace_problems()
        if typed("linux.seccomp"):
            yield from seccomp.problems(self.linux.seccomp if self.linux else None)
        linux = self.linux or Linux()
        if typed("linux.sysctl", "linux.namespaces"):  # which namespace makes each key the container's
            yield from sysctl.problems(linux.extra.get("sysctl"), linux.namespaces)
        if typed("linux.devices", "linux.maskedPaths", "linux.readonlyPaths", "linux.rootfsPropagation",
                 "linux.namespaces"):
            yield from rootfs.path_problems(linux.extra, linux.namespace("mount") is not None)
        if typed("process.apparmorProfile") and self.process:
            from .. import apparmor

            yield from apparmor.problems(self.process.extra.get("apparmorProfile"))
        if typed("linux.resources") and linux.resources:  # every field applied here, or refused now
            from .. import cgroups

            yield from cgroups.problems(linux.resources)

    def _process_problems(self, typed: Callable[..., bool]) -> Iterator[str]:
        p = self.process
        if typed("process.args", "process.cwd"):
            if p is None or not p.args:
                yield "process.args must name the program to run"
            elif not p.cwd.startswith("/"):
                yield f"process.cwd {p.cwd!r} must be an absolute path"
        if p is None:
            return
        if typed("process.capabilities"):
            yield from capabilities.problems(p.capabilities)
        if typed("process.rlimits"):
            yield from _rlimit_problems(p.rlimits)

    def _namespace_problems(self) -> Iterator[str]:
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
        size = len(self.hostname.encode()) if self.hostname else 0
        if size > HOST_NAME_MAX:
            yield f"hostname must be at most {HOST_NAME_MAX} bytes (sethostname(2)), got {size}"
        user = linux.namespace("user")
        if user is not None and user.path is None and not (linux.uidMappings and linux.gidMappings):
            yield "a new user namespace needs linux.uidMappings and linux.gidMappings"
        if (linux.uidMappings or linux.gidMappings) and user is None:
            yield "uid/gid mappings need a user namespace in linux.namespaces"


RLIMITS = ("RLIMIT_AS", "RLIMIT_CORE", "RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_FSIZE", "RLIMIT_LOCKS",
           "RLIMIT_MEMLOCK", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_NOFILE", "RLIMIT_NPROC",
           "RLIMIT_RSS", "RLIMIT_RTPRIO", "RLIMIT_RTTIME", "RLIMIT_SIGPENDING", "RLIMIT_STACK")
RLIM_MAX = 2**63 - 1  # Python's setrlimit takes a C long: beyond it only RLIM_INFINITY fits (as -1)
RLIM_INFINITY = 2**64 - 1  # "unlimited", as Docker and podman write it


def _rlimit_problems(rlimits: list[dict[str, Any]] | None) -> Iterator[str]:
    """Each rlimit's meaning (its JSON types and keys are checked before)."""
    seen = set()
    for r in rlimits or []:
        kind, soft, hard = r["type"], r["soft"], r["hard"]
        if kind not in RLIMITS:
            yield f"process.rlimits: unknown type {kind!r} (use e.g. RLIMIT_NOFILE; see getrlimit(2))"
            continue
        if soft > hard:
            yield f"process.rlimits: {kind} needs soft <= hard, got soft={soft} hard={hard}"
        if any(RLIM_MAX < v < RLIM_INFINITY for v in (soft, hard)):
            yield (f"process.rlimits: {kind} between {RLIM_MAX} and {RLIM_INFINITY} (unlimited) cannot be "
                   "set: give a smaller number, or unlimited")
        if kind in seen:
            yield f"process.rlimits: {kind} listed twice"
        seen.add(kind)


# --- the JSON type of every config.json field ---------------------------------------------------
# The OCI runtime-spec JSON schema (schema/config-schema.json, config-linux.json, defs.json,
# defs-linux.json), written as a table the standard library can walk: the runtime has no
# dependencies. A kind is STR, BOOL, an Int, a Text, an Obj, a MapOf, or shorthand: [kind] is a
# list of it, {field: kind} an object with those optional fields. Fields not listed are not
# checked (they stay in `extra`); a field set to null counts as absent, as in runc (Go).
Problem = tuple[str, str]  # (the field's path, what is wrong with it)


class Text:
    """A JSON string; `ok`, if given, is a rule the value must follow (say which in `what`)."""

    def __init__(self, what: str = "a string", many: str = "strings",
                 ok: Callable[[str], bool] | None = None) -> None:
        self.what, self.many, self.ok = what, many, ok

    def problems(self, value: Any, path: str) -> Iterator[Problem]:
        if not isinstance(value, str):
            yield path, _wrong(path, self.what, value)
        elif "\x00" in value:  # the kernel would read the string only up to it
            yield path, f"{path} must not contain a NUL character"
        elif not _encodable(value):
            yield path, f"{path} must be Unicode text, got a lone surrogate (a \\ud800-\\udfff escape)"
        elif self.ok is not None and not self.ok(value):
            yield path, _wrong(path, self.what, value)


def Enum(*values: str) -> Text:
    return Text("one of " + ", ".join(values), "strings", frozenset(values).__contains__)


class Bool:
    what, many = "true or false", "booleans"

    def problems(self, value: Any, path: str) -> Iterator[Problem]:
        if not isinstance(value, bool):
            yield path, _wrong(path, self.what, value)


class Int:
    """A JSON integer from lo to hi (not a float, not a boolean)."""

    what, many = "an integer", "integers"

    def __init__(self, lo: int, hi: int, note: str = "") -> None:
        self.lo, self.hi, self.note = lo, hi, note

    def problems(self, value: Any, path: str) -> Iterator[Problem]:
        if isinstance(value, bool) or not isinstance(value, int):
            yield path, _wrong(path, self.what, value)
        elif not self.lo <= value <= self.hi:
            yield path, f"{path} must be from {self.lo} to {self.hi}{self.note}, got {_shown(value)}"


class ListOf:
    many = "lists"

    def __init__(self, item: Any) -> None:
        self.item = _kind(item)
        self.what = "a list of " + self.item.many

    def problems(self, value: Any, path: str) -> Iterator[Problem]:
        if not isinstance(value, (list, tuple)):
            yield path, _wrong(path, self.what, value)
            return
        for i, item in enumerate(value):
            yield from self.item.problems(item, f"{path}[{i}]")


class Obj:
    """A JSON object with these fields (`required` ones must be there; others may be)."""

    what, many = "an object", "objects"

    def __init__(self, fields: dict[str, Any], *required: str) -> None:
        self.fields = {name: _kind(kind) for name, kind in fields.items()}
        self.required = required

    def problems(self, value: Any, path: str) -> Iterator[Problem]:
        if not isinstance(value, dict):
            yield path, f"{path or 'config.json'}: expected an object, got {_shown(value, literal=False)}"
            return
        for name in self.required:
            if value.get(name) is None:
                yield _join(path, name), f"{_join(path, name)} is required"
        for name, kind in self.fields.items():
            if value.get(name) is not None:
                yield from kind.problems(value[name], _join(path, name))


class MapOf:
    """A JSON object used as a map: any names, each value of one kind."""

    many = "objects"

    def __init__(self, value: Any) -> None:
        self.value = _kind(value)
        self.what = "an object of " + self.value.many

    def problems(self, value: Any, path: str) -> Iterator[Problem]:
        if not isinstance(value, dict):
            yield path, _wrong(path, self.what, value)
            return
        for name, item in value.items():
            yield from self.value.problems(item, f"{path}[{_shown(name)}]")


Kind = Text | Bool | Int | ListOf | Obj | MapOf


def _kind(kind: Any) -> Kind:
    if isinstance(kind, list):
        return ListOf(kind[0])
    if isinstance(kind, dict):
        return Obj(kind)
    return kind


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _encodable(text: str) -> bool:
    try:
        text.encode()
        return True
    except UnicodeEncodeError:
        return False


def _shown(value: Any, literal: bool = True) -> str:
    """A value as an error shows it: scalars as JSON (when `literal`), containers by their kind."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    if not literal:
        kinds = {str: "a string", bool: "a boolean", int: "a number", float: "a number", type(None): "null"}
        return kinds.get(type(value), type(value).__name__)
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):  # not JSON (a Python object), or an int too long to print
        return type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _wrong(path: str, what: str, value: Any) -> str:
    # A list or an object wanted: say what came ("got a string"); a scalar: show it ("got \"0\"").
    literal = not what.startswith(("a list", "an object"))
    return f"{path} must be {what}, got {_shown(value, literal)}"


STR, BOOL = Text(), Bool()
INT32, INT64 = Int(-2**31, 2**31 - 1), Int(-2**63, 2**63 - 1)
UINT16, UINT32, UINT64 = Int(0, 2**16 - 1), Int(0, 2**32 - 1), Int(0, 2**64 - 1)
ID = Int(0, 2**32 - 2, " (4294967295 is (uid_t)-1, which setresuid(2) reads as 'keep the current id')")
ENV = [Text('a "KEY=VALUE" string', '"KEY=VALUE" strings', lambda s: s.find("=") > 0)]  # as runc checks
ABSOLUTE = Text("an absolute path", "absolute paths", lambda s: s.startswith("/"))
ID_MAPPINGS = [Obj({"containerID": UINT32, "hostID": UINT32, "size": UINT32}, "containerID", "hostID", "size")]
HOOKS = [Obj({"path": STR, "args": [STR], "env": ENV, "timeout": Int(1, 2**63 - 1)}, "path")]
THROTTLES = [Obj({"major": INT64, "minor": INT64, "rate": UINT64}, "major", "minor", "rate")]  # cgroups reads rate
TIME_OFFSET = {"secs": INT64, "nanosecs": UINT32}
PROPAGATIONS = ("private", "shared", "slave", "unbindable", "rprivate", "rshared", "rslave", "runbindable")  # runc's

PROCESS = {
    "terminal": BOOL,
    "consoleSize": Obj({"height": UINT16, "width": UINT16}, "height", "width"),  # struct winsize: 16 bits
    "user": {"uid": ID, "gid": ID, "umask": Int(0, 0o777, " (0o777; e.g. 18 is 0o022)"), "additionalGids": [ID],
             "username": STR},
    "args": [STR], "commandLine": STR, "env": ENV, "cwd": STR,
    "capabilities": {name: [STR] for name in capabilities.SETS},  # the names: capabilities.problems
    "rlimits": [Obj({"type": STR, "soft": UINT64, "hard": UINT64}, "type", "soft", "hard")],
    "noNewPrivileges": BOOL,
    "apparmorProfile": STR,
    "oomScoreAdj": Int(-1000, 1000, " (see oom_score_adj in proc(5))"),
    "selinuxLabel": STR,
    "ioPriority": Obj({"class": Enum("IOPRIO_CLASS_RT", "IOPRIO_CLASS_BE", "IOPRIO_CLASS_IDLE"), "priority": INT32},
                      "class"),
    "scheduler": Obj({"policy": Enum("SCHED_OTHER", "SCHED_FIFO", "SCHED_RR", "SCHED_BATCH", "SCHED_ISO",
                                     "SCHED_IDLE", "SCHED_DEADLINE"),
                      "nice": INT32, "priority": INT32, "flags": [STR], "runtime": UINT64, "deadline": UINT64,
                      "period": UINT64}, "policy"),
    "execCPUAffinity": {"initial": STR, "final": STR},
}
RESOURCES = {  # what labkit.cgroups applies of it, it checks further
    "unified": MapOf(STR),
    "devices": [Obj({"allow": BOOL, "type": STR, "major": INT64, "minor": INT64, "access": STR}, "allow")],
    "pids": Obj({"limit": INT64}, "limit"),
    "blockIO": {"weight": UINT16, "leafWeight": UINT16, "throttleReadBpsDevice": THROTTLES,
                "throttleWriteBpsDevice": THROTTLES, "throttleReadIOPSDevice": THROTTLES,
                "throttleWriteIOPSDevice": THROTTLES,
                "weightDevice": [Obj({"major": INT64, "minor": INT64, "weight": UINT16, "leafWeight": UINT16},
                                     "major", "minor")]},
    "cpu": {"cpus": STR, "mems": STR, "period": UINT64, "quota": INT64, "burst": UINT64, "realtimePeriod": UINT64,
            "realtimeRuntime": INT64, "shares": UINT64, "idle": INT64},
    "hugepageLimits": [Obj({"pageSize": STR, "limit": UINT64}, "pageSize", "limit")],
    "memory": {"kernel": INT64, "kernelTCP": INT64, "limit": INT64, "reservation": INT64, "swap": INT64,
               "swappiness": UINT64, "disableOOMKiller": BOOL, "useHierarchy": BOOL, "checkBeforeUpdate": BOOL},
    "network": {"classID": UINT32, "priorities": [Obj({"name": STR, "priority": UINT32}, "name", "priority")]},
    "rdma": MapOf({"hcaHandles": UINT32, "hcaObjects": UINT32}),
}
SECCOMP = {  # what is required, and the action, flag and operator names: seccomp.problems
    "defaultAction": STR, "defaultErrnoRet": UINT32, "flags": [STR], "listenerPath": STR, "listenerMetadata": STR,
    "architectures": [STR],
    "syscalls": [{"names": [STR], "action": STR, "errnoRet": UINT32,
                  "args": [{"index": UINT32, "value": UINT64, "valueTwo": UINT64, "op": STR}]}],
}
LINUX = {
    "namespaces": [Obj({"type": STR, "path": STR}, "type")],
    "uidMappings": ID_MAPPINGS, "gidMappings": ID_MAPPINGS,
    "timeOffsets": {"boottime": TIME_OFFSET, "monotonic": TIME_OFFSET},
    "devices": [Obj({"type": Enum("c", "b", "u", "p"), "path": STR, "major": INT64, "minor": INT64,
                     "fileMode": Int(0, 0o777), "uid": ID, "gid": ID}, "type", "path")],
    "netDevices": MapOf({"name": STR}),
    "cgroupsPath": STR,
    "rootfsPropagation": Text("one of " + ", ".join(PROPAGATIONS), "strings",
                              lambda s: s in PROPAGATIONS or not s),  # "": unset, as for runc
    "resources": RESOURCES,
    "sysctl": MapOf(STR),
    "seccomp": SECCOMP,
    "maskedPaths": [ABSOLUTE], "readonlyPaths": [ABSOLUTE],
    "mountLabel": STR,
    "intelRdt": {"closID": STR, "schemata": [STR], "l3CacheSchema": STR, "memBwSchema": STR,
                 "enableMonitoring": BOOL, "enableCMT": BOOL, "enableMBM": BOOL},
    "personality": {"domain": Enum("LINUX", "LINUX32"), "flags": [STR]},
    "memoryPolicy": {"mode": STR, "nodes": STR, "flags": [STR]},
}
SCHEMA = Obj({
    "ociVersion": STR,
    "hooks": {kind: HOOKS for kind in ("prestart", "createRuntime", "createContainer", "startContainer",
                                       "poststart", "poststop")},
    "annotations": MapOf(STR),
    "hostname": STR,
    "domainname": STR,
    "mounts": [Obj({"destination": STR, "type": STR, "source": STR, "options": [STR],
                    "uidMappings": ID_MAPPINGS, "gidMappings": ID_MAPPINGS}, "destination")],
    "root": Obj({"path": STR, "readonly": BOOL}, "path"),
    "process": PROCESS,
    "linux": LINUX,
})
SPEC_HINT = "fix config.json (see the OCI runtime spec, config.md)"
HOST_NAME_MAX = 64


def type_problems(data: Any) -> list[Problem]:
    """Each field of a config.json (as parsed) whose JSON type or range is not the schema's."""
    return list(SCHEMA.problems(data, ""))


def model_problems(model: _Model, path: str = "") -> Iterator[Problem]:
    """What the JSON types of to_dict() cannot show: None where the model needs a value, and
    a section that is not its model class (a dict assigned to spec.process.user, say)."""
    for f in dataclasses.fields(model):
        if f.name == "extra":
            continue
        value, where, kind = getattr(model, f.name), _join(path, f.name), model.NESTED.get(f.name)
        if value is None:
            if f.default is not None:  # a default value or factory: the model needs one
                yield where, f"{where} must not be None (leave it out of the spec for its default)"
        elif isinstance(kind, list) and isinstance(value, list):  # not a list: type_problems says so
            for i, item in enumerate(value):
                yield from _nested_problems(item, kind[0], f"{where}[{i}]")
        elif kind is not None and not isinstance(kind, list):
            yield from _nested_problems(value, kind, where)


def _nested_problems(value: Any, cls: type[_Model], where: str) -> Iterator[Problem]:
    if isinstance(value, cls):
        yield from model_problems(value, where)
    else:
        yield where, f"{where} must be a labkit.runtime.spec.{cls.__name__}, got {type(value).__name__}"


def _overlaps(path: str, section: str) -> bool:
    """Whether one path is the other or inside it ("process" and "process.args[0]" overlap)."""
    short, long = sorted((path, section), key=len)
    return long == short or long.startswith((short + ".", short + "["))


# --- the fields labkit does not apply (yet) --------------------------------------------------------
# Every field that changes isolation or behaviour is applied, or refused here, by path (mounts[].x:
# every mount's x) — never silently ignored. When labkit applies one, delete its line.
# Not listed: process.consoleSize (used with process.terminal only), and the Windows/Solaris/VM
# sections (runc ignores them too). Inside linux.resources and linux.seccomp: labkit.cgroups and
# labkit.seccomp.
UNSUPPORTED: dict[str, str] = {
    "domainname": "setdomainname(2) is not called: the container would keep the host's domain name",
    "process.selinuxLabel": "labkit has no SELinux support: the process would run unlabelled",
    "process.user.username": "a Windows-only field: on Linux the user is process.user.uid and gid",
    "process.commandLine": "a Windows-only field: on Linux the command is process.args",
    "process.ioPriority": "ioprio_set(2) is not called",
    "process.scheduler": "sched_setattr(2) is not called",
    "process.execCPUAffinity": "sched_setaffinity(2) is not called",
    "mounts[].uidMappings": "idmapped mounts are not made",
    "mounts[].gidMappings": "idmapped mounts are not made",
    "linux.seccomp.listenerMetadata": "seccomp notify listeners (SCMP_ACT_NOTIFY) are not supported",
    "linux.mountLabel": "labkit has no SELinux support: mounts would be unlabelled",
    "linux.intelRdt": "Intel RDT (resctrl) is not used",
    "linux.personality": "personality(2) is not called",
    "linux.timeOffsets": "time namespaces are not made",
    "linux.netDevices": "network devices are not moved into the container",
    "linux.memoryPolicy": "set_mempolicy(2) is not called",
}


def field_values(data: Any, path: str) -> list[tuple[str, Any]]:
    """(exact path, value) of each field a dotted path names in a parsed config.json:
    "linux.sysctl" one at most, "mounts[].uidMappings" one for each mount that has it."""
    found: list[tuple[str, Any]] = [("", data)]
    for part in path.split("."):
        name, each = part.removesuffix("[]"), part.endswith("[]")
        step = []
        for where, parent in found:
            value, where = (parent.get(name) if isinstance(parent, dict) else None), _join(where, name)
            if each and isinstance(value, list):
                step += [(f"{where}[{i}]", item) for i, item in enumerate(value)]
            elif not each and value is not None:
                step.append((where, value))
        found = step
    return found


def is_set(value: Any) -> bool:
    """Whether a value asks for anything: null, false, 0, "", [] and {} (or all-unset objects) do not."""
    if isinstance(value, dict):
        return any(is_set(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return bool(value)
    return value is not None and value is not False and value != 0 and value != ""


def unsupported_problems(data: Any) -> Iterator[str]:
    for path, reason in UNSUPPORTED.items():
        for where, value in field_values(data, path):
            if is_set(value):
                yield f"{where} is not supported by labkit: remove it ({reason})"


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
