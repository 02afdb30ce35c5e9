"""Small helpers the chapters share: a workspace that cleanup removes."""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile

from . import cgroups, doctor, rootfs, runtime
from .errors import LabkitError
from .runtime.store import proc_start_time

OWNER_FILE = ".owner"  # "PID START_TIME" of the process (a notebook kernel) that made the workspace


class Workspace:
    """A temp directory named labkit-<chapter>-*, for bundles and rootfs trees.

    `cleanup()` deletes the chapter's containers and the directory, and
    returns the leak census so the last cell can prove nothing is left.
    """

    def __init__(self, chapter: str, engine: bool = False) -> None:
        self.chapter = chapter
        self.path = tempfile.mkdtemp(prefix=f"labkit-{chapter}-")
        os.chmod(self.path, 0o755)  # reachable by mapped uids in user namespaces
        with open(os.path.join(self.path, OWNER_FILE), "w") as f:
            f.write(f"{os.getpid()} {proc_start_time(os.getpid())}\n")
        self.run_root = os.path.join(self.path, "run")
        os.environ["LABKIT_RUN_ROOT"] = self.run_root
        # engine chapters: containers, volumes and images of their own (`labkit` commands the
        # notebook runs inherit both roots through the environment)
        self.data_root = os.path.join(self.path, "data") if engine else None
        if self.data_root:
            os.environ["LABKIT_DATA_ROOT"] = self.data_root
        self._before = {str(leak) for leak in doctor.leaks()}  # e.g. another chapter still open

    def __repr__(self) -> str:
        return f"Workspace({self.path!r})"

    def sub(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def engine(self):
        """The engine over this workspace's data root (`Workspace(chapter, engine=True)`)."""
        from .engine.containers import Engine

        assert self.data_root, "make the workspace with engine=True"
        return Engine(self.data_root)

    def busybox_rootfs(self, name: str = "rootfs") -> str:
        path = self.sub(name)
        if not os.path.exists(path):
            rootfs.build_busybox_rootfs(path)
        return path

    def bundle(self, name: str, args: list[str], **spec_kwargs) -> str:
        """A bundle dir around the shared busybox rootfs, with a default spec."""
        bundle = self.sub(name)
        os.makedirs(bundle, exist_ok=True)
        runtime.default_spec(args, rootfs=self.busybox_rootfs(), **spec_kwargs).save(bundle)
        return bundle

    def clear_earlier_runs(self) -> list[str]:
        """Remove what interrupted earlier runs of this chapter left; the workspaces it removed.

        A kernel that died (or was restarted) mid-chapter never reached the cleanup cell: its
        containers may still run, under monitors of their own. Every other labkit-<chapter>-*
        workspace whose owner process is gone loses its engine containers and volumes, its
        runtime containers, then its files. Another open run of the same chapter (its owner
        still alive) is left alone.
        """
        cleared = []
        pattern = os.path.join(os.path.dirname(self.path), f"labkit-{self.chapter}-*")
        for path in sorted(glob.glob(pattern)):
            if path != self.path and os.path.isdir(path) and not _owner_alive(path):
                _clear_workspace(path)
                cleared.append(path)
        return cleared

    def cleanup(self) -> list[doctor.Leak]:
        """Remove this chapter's containers and files; what of this chapter's is still left."""
        if self.data_root:
            from .engine.containers import Engine

            Engine(self.data_root).clear()
        for state in runtime.list_containers():
            runtime.delete(state.id, force=True)
        shutil.rmtree(self.path, ignore_errors=True)
        found = doctor.leaks()
        # containers another open lab session runs now: the cgroup subtrees holding them are theirs
        foreign = {os.path.basename(leak.name) for leak in found if leak.kind == "container" and not self._ours(leak)}
        return [leak for leak in found if str(leak) not in self._before and self._ours(leak, foreign)]

    def _ours(self, leak: doctor.Leak, foreign: set[str] = frozenset()) -> bool:
        """Could this chapter have made it? Another open chapter's objects are not its leaks."""
        if leak.kind in ("container", "mount") and leak.name.startswith("/tmp/labkit"):
            return leak.name.startswith(self.path)
        if leak.kind == "cgroup":
            if os.path.basename(leak.name) != cgroups.PARENT:
                return False  # labkit's groups all live under its parent; labkit-* siblings are other tools'
            # the shared parent is not this chapter's leak while another session's container runs in it
            return not any(foreign.intersection(dirnames) for _, dirnames, _ in os.walk(leak.name))
        if leak.kind == "process":
            try:
                with open(f"/proc/{leak.pid}/cmdline", "rb") as f:
                    cmdline = f.read().decode(errors="replace")
                with open(f"/proc/{leak.pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                return False  # gone meanwhile: not left behind
            return self.path in cmdline or ppid == os.getpid()
        return True


def _owner_alive(path: str) -> bool:
    try:
        with open(os.path.join(path, OWNER_FILE)) as f:
            pid, start = f.read().split()
    except (OSError, ValueError):
        return False  # no owner recorded: a workspace older than the owner file
    return str(proc_start_time(int(pid))) == start


def _clear_workspace(path: str) -> None:
    """Another (dead) run's workspace: its containers through its own roots, then its files."""
    runtime_root = os.path.join(path, "run", "runtime")
    data_root = os.path.join(path, "data")
    if os.path.isdir(os.path.join(data_root, "containers")):
        from .engine.containers import Engine

        engine = Engine(data_root)
        engine.runtime_root = runtime_root  # that run's runtime state, not this process's
        engine.clear(tolerant=True)
    _restore_sysctls(os.path.join(path, "run", "net-sysctl.json"))
    if os.path.isdir(runtime_root):
        for state in runtime.list_containers(root=runtime_root):
            with contextlib.suppress(LabkitError):
                runtime.delete(state.id, force=True, root=runtime_root)
    for leak in doctor.leaks():  # whatever would not go the polite way (mounts, stray state)
        if leak.name.startswith(path + os.sep):
            doctor.remove(leak)
    shutil.rmtree(path, ignore_errors=True)


def _restore_sysctls(record: str) -> None:
    """The host sysctls a dead run changed (ip_forward), put back once no labkit bridge is left
    (another open session's containers may still need forwarding)."""
    if os.path.exists(record):
        from . import net as knet

        if not any(knet.is_bridge(link) for link in knet.lab_links()):
            knet.restore_host_sysctls(record=record)
