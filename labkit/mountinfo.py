"""/proc/PID/mountinfo: the mount table one process sees, as the kernel reports it.

Each line (see proc(5)) is

    36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    id parent dev root point per-mount-options [optional...] - fstype source super-options

Mount points are relative to the reading process's view of *that* process's
root, so reading /proc/PID/mountinfo from the host shows a container's
mounts as the container sees them ("/", "/proc", "/tmp", ...).
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Mount:
    mount_id: int
    parent_id: int
    dev: str            # major:minor of the filesystem: equal means the same filesystem
    root: str           # the part of the source filesystem mounted here
    point: str          # where, as the process sees it
    options: tuple[str, ...]        # per-mount: ro/rw, nosuid, nodev, noexec, ...
    fstype: str
    source: str
    super_options: tuple[str, ...]  # per-filesystem: size=, mode=, ...

    @property
    def readonly(self) -> bool:
        return "ro" in self.options

    def option(self, name: str) -> str | None:
        """The value of `name=value` among the superblock options (e.g. mode)."""
        for opt in self.super_options:
            key, _, value = opt.partition("=")
            if key == name:
                return value
        return None


def _unescape(field: str) -> str:
    # the kernel writes space, tab, newline and backslash as octal escapes
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def parse(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        if not line.strip():
            continue
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        mounts.append(Mount(
            mount_id=int(fields[0]), parent_id=int(fields[1]), dev=fields[2], root=_unescape(fields[3]),
            point=_unescape(fields[4]), options=tuple(fields[5].split(",")),
            fstype=tail[0], source=_unescape(tail[1]) if len(tail) > 1 else "",
            super_options=tuple(tail[2].split(",")) if len(tail) > 2 else (),
        ))
    return mounts


def read(pid: int | str = "self") -> list[Mount]:
    """The mount table process `pid` sees."""
    with open(f"/proc/{pid}/mountinfo") as f:
        return parse(f.read())


def at(mounts: list[Mount], point: str) -> Mount | None:
    """The mount visible at `point`: the last one mounted there (it hides the others)."""
    found = [m for m in mounts if m.point == point]
    return found[-1] if found else None
