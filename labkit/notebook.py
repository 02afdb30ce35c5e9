"""Small helpers the chapters share: a workspace that cleanup removes."""
from __future__ import annotations

import os
import shutil
import tempfile

from . import doctor, rootfs, runtime


class Workspace:
    """A temp directory named labkit-<chapter>-*, for bundles and rootfs trees.

    `cleanup()` deletes the chapter's containers and the directory, and
    returns the leak census so the last cell can prove nothing is left.
    """

    def __init__(self, chapter: str, engine: bool = False) -> None:
        self.path = tempfile.mkdtemp(prefix=f"labkit-{chapter}-")
        os.chmod(self.path, 0o755)  # reachable by mapped uids in user namespaces
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

    def cleanup(self) -> list[doctor.Leak]:
        """Remove this chapter's containers and files; what of this chapter's is still left."""
        if self.data_root:
            from .engine.containers import Engine

            engine = Engine(self.data_root)
            for record in engine.list(all=True):
                engine.remove(record.id, force=True, remove_volumes=True)
            for volume in engine.volumes.list():
                engine.volumes.remove(volume.name, force=True)
        for state in runtime.list_containers():
            runtime.delete(state.id, force=True)
        shutil.rmtree(self.path, ignore_errors=True)
        return [leak for leak in doctor.leaks() if str(leak) not in self._before and self._ours(leak)]

    def _ours(self, leak: doctor.Leak) -> bool:
        """Could this chapter have made it? Another open chapter's objects are not its leaks."""
        if leak.kind in ("container", "mount") and leak.name.startswith("/tmp/labkit"):
            return leak.name.startswith(self.path)
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
