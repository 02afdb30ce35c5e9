"""AppArmor: a mandatory access control profile for the container's process (process.apparmorProfile).

The profile is named, not loaded, by the runtime: the host's AppArmor must
already know it (podman's containers-default, Docker's docker-default). As
runc does, the init asks the kernel to switch to it at the next execve, by
writing "exec PROFILE" to /proc/self/attr/apparmor/exec, the last step
before exec. Where AppArmor is not enabled (Debian's default kernel here),
a spec that names a profile is refused: it would confine nothing.
"""
from __future__ import annotations

import os

ENABLED = "/sys/module/apparmor/parameters/enabled"


def enabled(flag: str = ENABLED) -> bool:
    try:
        with open(flag) as f:
            return f.read().strip() == "Y"
    except OSError:
        return False


def problems(profile: str | None, flag: str = ENABLED) -> list[str]:
    if not profile or enabled(flag):
        return []
    return [f"process.apparmorProfile {profile!r}: AppArmor is not enabled on this host ({flag} is not Y), "
            "so the profile would confine nothing: remove it, or run where AppArmor is enabled (e.g. Ubuntu)"]


def apply_on_exec(profile: str) -> None:
    """Switch to `profile` at the coming execve (the new attr path, else the old one)."""
    path = "/proc/self/attr/apparmor/exec"
    if not os.path.exists(path):
        path = "/proc/self/attr/exec"
    with open(path, "w") as f:
        f.write(f"exec {profile}")
