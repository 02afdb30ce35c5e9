"""From an image config to an OCI runtime spec (the OCI image spec's conversion.md).

    Entrypoint + Cmd   -> process.args   (arguments given at run time replace Cmd only)
    Env                -> process.env
    WorkingDir         -> process.cwd
    User               -> process.user   (names resolved in the image's /etc/passwd, /etc/group)
    ExposedPorts       -> annotation org.opencontainers.image.exposedPorts (used by networking)
    StopSignal, Labels -> annotations
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from ..errors import LabkitError
from ..runtime.spec import DEFAULT_PATH, Spec, User, default_spec
from .model import ImageConfig

EXPOSED_PORTS = "org.opencontainers.image.exposedPorts"
STOP_SIGNAL = "org.opencontainers.image.stopSignal"
ReadFile = Callable[[str], str | None]  # path inside the image -> its text, or None


@dataclasses.dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


def parse_passwd(text: str | None) -> list[PasswdEntry]:
    found = []
    for line in (text or "").splitlines():
        f = line.split(":")
        if len(f) >= 6 and f[2].isdigit() and f[3].isdigit():
            found.append(PasswdEntry(f[0], int(f[2]), int(f[3]), f[5]))
    return found


def parse_group(text: str | None) -> list[tuple[str, int, list[str]]]:
    found = []
    for line in (text or "").splitlines():
        f = line.split(":")
        if len(f) >= 4 and f[2].isdigit():
            found.append((f[0], int(f[2]), [m for m in f[3].split(",") if m]))
    return found


def resolve_user(user: str, passwd: str | None, group: str | None) -> User:
    """'', 'name', 'uid', 'name:group', 'uid:gid' -> uid, gid and supplementary groups.

    A numeric uid need not exist in /etc/passwd (its gid is then 0); a name
    must. Supplementary groups are those listing the user as a member.
    """
    name, _, grp = (user or "0").partition(":")
    users, groups = parse_passwd(passwd), parse_group(group)
    if name.isdigit():
        uid = int(name)
        entry = next((u for u in users if u.uid == uid), None)
    else:
        entry = next((u for u in users if u.name == name), None)
        if entry is None:
            raise LabkitError(f"user {name!r} is not in the image's /etc/passwd",
                              "use a numeric uid (USER 1000) or add the user to the image")
        uid = entry.uid
    gid = entry.gid if entry else 0
    if grp:
        if grp.isdigit():
            gid = int(grp)
        else:
            found = next((g for g in groups if g[0] == grp), None)
            if found is None:
                raise LabkitError(f"group {grp!r} is not in the image's /etc/group",
                                  "use a numeric gid (USER name:1000) or add the group to the image")
            gid = found[1]
    member_of = sorted({g[1] for g in groups if entry and entry.name in g[2] and g[1] != gid})
    return User(uid=uid, gid=gid, additionalGids=member_of or None)


def process_args(config: ImageConfig, args: list[str] | None = None,
                 entrypoint: list[str] | None = None) -> list[str]:
    """Docker's rule: ENTRYPOINT stays, CMD is the default arguments that `args` replace."""
    run = config.config
    ep = list(entrypoint if entrypoint is not None else run.entrypoint or [])
    argv = ep + list(args if args is not None else (run.cmd or []))
    if not argv:
        raise LabkitError("the image has no Cmd or Entrypoint and no command was given",
                          "pass the command to run, e.g. args=['sh']")
    return argv


def to_spec(config: ImageConfig, read_file: ReadFile | None = None, args: list[str] | None = None,
            entrypoint: list[str] | None = None, env: list[str] | None = None, rootfs: str = "rootfs",
            hostname: str = "labkit") -> Spec:
    """A runtime spec running this image: `default_spec` with the image's run defaults applied."""
    read = read_file or (lambda _path: None)
    run = config.config
    spec = default_spec(process_args(config, args, entrypoint), rootfs=rootfs, hostname=hostname)
    assert spec.process is not None
    merged = _merge_env(run.env or [DEFAULT_PATH], env or [])
    if not any(e.startswith("PATH=") for e in merged):
        merged.insert(0, DEFAULT_PATH)
    spec.process.env = merged
    spec.process.cwd = run.working_dir or "/"
    spec.process.user = resolve_user(run.user, read("/etc/passwd"), read("/etc/group"))
    spec.annotations = annotations(config)
    # Docker's run-time defaults (14 capabilities, device rules, masked paths) are the engine's
    # to add: labkit.engine.defaults. Here the image's own settings only.
    from ..engine import defaults
    return defaults.apply(spec)


def _merge_env(base: list[str], overrides: list[str]) -> list[str]:
    env = {e.split("=", 1)[0]: e for e in base}
    env.update({e.split("=", 1)[0]: e for e in overrides})
    return list(env.values())


def annotations(config: ImageConfig) -> dict[str, str]:
    run = config.config
    out = dict(run.labels or {})
    if run.exposed_ports:
        out[EXPOSED_PORTS] = ",".join(sorted(run.exposed_ports))
    if run.stop_signal:
        out[STOP_SIGNAL] = run.stop_signal
    return out


def exposed_ports(spec: Spec) -> list[tuple[int, str]]:
    """The (port, protocol) pairs an image exposes, from the spec's annotation."""
    text = (spec.annotations or {}).get(EXPOSED_PORTS, "")
    found = []
    for item in filter(None, text.split(",")):
        port, _, proto = item.partition("/")
        found.append((int(port), proto or "tcp"))
    return found
