"""Chapter 02 exercise: a read-only root with a writable tmpfs /tmp.

The learner writes `edit(spec)`, a function that changes a default
`labkit.runtime.Spec`. The check creates a real container from the edited
spec (its init has then made every mount and pivoted into the rootfs, and
waits for `start`) and judges it from the host, by kernel state only:

- /proc/PID/mountinfo of the container's process: is `/` mounted ro, is
  there a tmpfs of its own on /tmp (not one the host has mounted too), and
  is that one rw?
- writes through /proc/PID/root (the container's root as its mounts make
  it): one to `/` must fail with EROFS, one to /tmp must succeed;
- the mode of the container's /tmp (1777, like every /tmp).
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
import uuid
from typing import Callable, Iterator

from .. import mountinfo, rootfs as lrootfs, runtime
from ..errors import LabkitError
from ..runtime.spec import Spec
from . import Verdict, failed, passed

SpecEdit = Callable[[Spec], "Spec | None"]
TMPFS_HINT = ("append a tmpfs mount to spec.mounts, e.g. "
              "Mount(destination='/tmp', type='tmpfs', source='tmpfs', options=['nosuid', 'nodev', 'mode=1777'])")


def _edited_spec(edit: SpecEdit, root: str) -> Spec | Verdict:
    spec = runtime.default_spec(["sleep", "60"], rootfs=root)
    try:
        result = edit(spec)
    except Exception as err:  # the learner's code: report, don't crash the notebook
        return failed(f"your function raised {type(err).__name__}: {err}",
                      "it receives a labkit.runtime.Spec: set fields on spec.root and spec.mounts, "
                      "then return the spec (or return nothing)")
    if result is None:
        return spec
    if not isinstance(result, Spec):
        return failed(f"your function returned a {type(result).__name__}, not a Spec",
                      "change the spec it receives and `return spec` (or return nothing)")
    return result


@contextlib.contextmanager
def _container(spec: Spec, root: str | None) -> Iterator[int]:
    """Create a container from `spec`; yield its init's pid; always delete it.

    `create` is enough: by then the init has made every mount and pivoted,
    and waits before exec for `start` (so process.args do not matter here).
    """
    work = tempfile.mkdtemp(prefix="labkit-check-ch02-")
    container_id = f"ch02-{uuid.uuid4().hex[:12]}"
    created = False
    try:
        if root is None:
            spec.root.path = lrootfs.build_busybox_rootfs(os.path.join(work, "rootfs"))
        bundle = os.path.join(work, "bundle")
        os.mkdir(bundle)
        spec.save(bundle)
        runtime.create(container_id, bundle, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        created = True
        yield runtime.state(container_id).pid
    finally:
        if created:
            runtime.delete(container_id, force=True)
        shutil.rmtree(work, ignore_errors=True)


def _write_fails_with(path: str) -> int | None:
    """Create and remove a file at `path`; the errno if that fails, else None."""
    try:
        with open(path, "w") as f:
            f.write("probe\n")
    except OSError as err:
        return err.errno
    os.unlink(path)
    return None


def readonly_root_with_tmp(edit: SpecEdit, rootfs: str | None = None) -> Verdict:
    """Check `edit`: its container's `/` must be read-only and /tmp a writable tmpfs.

    `rootfs` is the busybox tree to use (default: a fresh one, removed after).
    """
    spec = _edited_spec(edit, rootfs or "rootfs")
    if isinstance(spec, Verdict):
        return spec
    try:
        with _container(spec, rootfs) as pid:
            return _judge(pid)
    except LabkitError as err:
        return failed(f"the container could not be created: {err.what}",
                      err.hint + "; a mount destination must be absolute, e.g. '/tmp'"
                      if "destination" in err.what else err.hint)


def _judge(pid: int) -> Verdict:
    mounts = mountinfo.read(pid)
    root = mountinfo.at(mounts, "/")
    if root is None or not root.readonly:
        return failed("the container's / is mounted read-write",
                      "set spec.root.readonly = True: after pivot_root the init remounts / "
                      "read-only (see labkit.show(labkit.rootfs.remount_readonly_root))")
    inside = f"/proc/{pid}/root"  # the container's root, through its own mounts
    probe = f".labkit-probe-{uuid.uuid4().hex[:8]}"
    err = _write_fails_with(os.path.join(inside, probe))
    if err != errno.EROFS:
        return failed("/ is listed as ro, but a write to it did not fail with EROFS",
                      "make the root itself read-only with spec.root.readonly = True, "
                      "not by a mount of your own on /")
    tmp = mountinfo.at(mounts, "/tmp")
    if tmp is None:
        return failed("nothing is mounted on /tmp, so it is part of the read-only root: "
                      "programs that need scratch space fail", TMPFS_HINT)
    host_devs = {m.dev for m in mountinfo.read("self")}
    if tmp.fstype != "tmpfs" or tmp.dev in host_devs:
        what = f"it is {tmp.fstype}" if tmp.fstype != "tmpfs" else "it is the host's tmpfs, bind-mounted"
        return failed(f"/tmp is not a tmpfs of its own ({what})",
                      "use type='tmpfs' (and source='tmpfs'): memory-backed, empty at start, "
                      "gone with the container, unlike a bind mount of a host directory")
    if tmp.readonly:
        return failed("/tmp is a tmpfs, but mounted read-only",
                      "drop 'ro' from the /tmp mount's options: spec.root.readonly only concerns /")
    if _write_fails_with(os.path.join(inside, "tmp", probe)) is not None:
        return failed("/tmp is a rw tmpfs, but a write to it failed",
                      "check the /tmp mount's options (mode=1777 lets every user write)")
    mode = os.stat(os.path.join(inside, "tmp")).st_mode & 0o7777
    if mode != 0o1777:
        return failed(f"/tmp has mode {mode:04o}: other users cannot use it safely",
                      "add 'mode=1777' to the tmpfs options: everyone may create files, "
                      "the sticky bit stops them deleting each other's")
    return passed("/ is read-only (a write fails with EROFS) and /tmp is a writable tmpfs (mode 1777)")
