"""One error family for everything labkit refuses or fails at.

Each error says what failed, the kernel's errno text where there is one, and
what to do about it, so a learner never has to read a bare traceback for an
expected failure.
"""
from __future__ import annotations

import errno as _errno
import os


class LabkitError(Exception):
    """Base class: `what` failed; `hint` says what to do."""

    def __init__(self, what: str, hint: str = "") -> None:
        self.what = what
        self.hint = hint
        self.message = f"{what}\n  hint: {hint}" if hint else what
        super().__init__(self.message)

    def __str__(self) -> str:  # OSError subclasses would print "[Errno N] ..." instead
        return self.message


class SyscallError(LabkitError, OSError):
    """A system call failed: carries errno, its name and text, and a hint."""

    def __init__(self, call: str, err: int, detail: str = "", hint: str = "") -> None:
        self.call = call
        self.errno_name = _errno.errorcode.get(err, f"E{err}")
        self.strerror = os.strerror(err)
        where = f" ({detail})" if detail else ""
        LabkitError.__init__(
            self,
            f"{call}{where} failed: {self.errno_name}: {self.strerror}",
            hint or default_hint(call, err),
        )
        self.errno = err  # after __init__: OSError's own init resets it
        self.strerror = os.strerror(err)

    def __reduce__(self):  # keep picklable despite the custom __init__
        return (type(self), (self.call, self.errno, "", self.hint))


class SpecError(LabkitError):
    """An OCI runtime spec (config.json) is invalid; nothing was created."""


class ContainerError(LabkitError):
    """A container operation is not possible in the container's state."""


def default_hint(call: str, err: int) -> str:
    """The usual fix for a failed call, in words a learner can act on."""
    if err == _errno.EPERM:
        return "this needs root (CAP_SYS_ADMIN): run as root, e.g. `sudo`, or inside the lab VM"
    if err == _errno.ENOSYS:
        return f"this kernel or architecture has no {call}; check `labkit doctor`"
    if err == _errno.EINVAL and call == "pivot_root":
        return ("new_root must be a mount point in a private mount namespace and "
                "not the current root: bind-mount it onto itself and make / private first")
    if err == _errno.EINVAL and call == "unshare":
        return "this namespace type may be disabled in the kernel; check `labkit doctor`"
    if err == _errno.ENOSPC and call in ("unshare", "setns"):
        return "the per-user namespace limit is reached: see /proc/sys/user/max_*_namespaces"
    if err == _errno.EACCES:
        return ("permission denied: inside a user namespace the mapped host uid must be able "
                "to reach the path (check every parent directory's mode, e.g. chmod 755)")
    if err == _errno.ENOENT:
        return "the path does not exist: create it first or check for typos"
    if err == _errno.EBUSY:
        return "something still uses it: stop the processes inside or unmount what is below it"
    if err == _errno.ENODEV and call == "mount":
        return "the kernel lacks this filesystem type: try `modprobe` for it or check `labkit doctor`"
    return "see `man 2 " + call + "`"
