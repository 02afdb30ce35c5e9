"""A container's root filesystem as an overlayfs: shared read-only layers + its own upper dir.

    lowerdir  the image's unpacked layers (LayerDirs), top first, read-only, shared
    upperdir  this container's changes: copied-up files, new files, whiteouts
    workdir   overlayfs' scratch space, on the same filesystem as upperdir

Deep images meet two kernel limits. The mount options are one string of at
most one page (4096 bytes): 500 layer paths of ~100 characters would not fit.
So the mount runs with its working directory in the container's overlay dir,
where `l/0`, `l/1`, … are symlinks to the layers, and the options name only
those short relative paths (Docker's overlay2 driver uses the same trick).
And overlayfs stacks at most 500 lower layers: more is refused up front.

Where the mount happens: never in the notebook kernel or on the host. The
runtime mounts it inside the container's own, private mount namespace (see
`mount_spec` and labkit.runtime.init), so it vanishes with the container and
cannot leak. `run_in_overlay` does the same for demos: a helper process
unshares a mount namespace, mounts, runs a command, and exits.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from typing import Any

from ..errors import LabkitError

MAX_LOWERS = 500  # OVL_MAX_STACK in fs/overlayfs
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# Builds turn the upper dir into a layer, which needs plain copy-ups: a metadata-only
# copy-up (metacopy) or a renamed directory (redirect_dir) would not be a complete diff.
FIXED_OPTIONS = ("redirect_dir=off", "metacopy=off")
ROOTFS_ANNOTATION = "org.labkit.rootfs.mount"  # the runtime mounts it: labkit.runtime.init.mount_rootfs


@dataclasses.dataclass
class Overlay:
    """The directories of one container's overlay (nothing is mounted by this object)."""

    base: str           # holds l/ (short names), upper/, work/
    lowers: list[str]   # layer directories, bottom first

    @property
    def upper(self) -> str:
        return os.path.join(self.base, "upper")

    @property
    def work(self) -> str:
        return os.path.join(self.base, "work")

    def short_names(self) -> list[str]:
        """The lowerdir names as the mount sees them (relative to base), top first."""
        return [f"l/{i}" for i in reversed(range(len(self.lowers)))]

    def options(self) -> str:
        return ",".join([f"lowerdir={':'.join(self.short_names())}", "upperdir=upper", "workdir=work",
                         *FIXED_OPTIONS])

    def mount_spec(self) -> dict[str, Any]:
        """What the runtime mounts onto the bundle's rootfs: type, source, options, cwd."""
        return {"type": "overlay", "source": "overlay", "options": self.options().split(","), "cwd": self.base}

    def annotation(self) -> dict[str, str]:
        return {ROOTFS_ANNOTATION: json.dumps(self.mount_spec(), sort_keys=True)}

    def __repr__(self) -> str:
        return f"Overlay({len(self.lowers)} lower layers, upper={self.upper!r})"


def check_depth(count: int) -> None:
    if count > MAX_LOWERS:
        raise LabkitError(f"the image has {count} layers; overlayfs stacks at most {MAX_LOWERS}",
                          "squash layers: combine RUN steps, or rebuild the image flatter")


def prepare(base: str, lowers: list[str], init_files: list[str] = ()) -> Overlay:
    """Create a container's overlay dir: upper/ and work/ (empty) and l/<i> -> lowers[i].

    `init_files` (e.g. /etc/hosts): empty files in a layer of the container's own on top of
    the image's, Docker's "-init" layer, so the mount points the engine binds files onto
    are not written into the container's upper dir (nor into a volume)."""
    check_depth(len(lowers) + bool(init_files))
    if os.path.lexists(base):
        raise LabkitError(f"{base} already exists", "each container needs its own, new overlay directory")
    os.makedirs(os.path.join(base, "l"))
    for name in ("upper", "work"):
        os.mkdir(os.path.join(base, name), 0o755)
    if not lowers:  # FROM scratch: overlayfs needs at least one lower layer
        os.mkdir(os.path.join(base, "empty"), 0o755)
        lowers = [os.path.join(base, "empty")]
    if init_files:
        init = os.path.join(base, "init")
        for path in init_files:
            target = os.path.join(init, path.lstrip("/"))
            os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
            open(target, "w").close()
        lowers = [*lowers, init]
    for i, layer in enumerate(lowers):
        os.symlink(os.path.abspath(layer), os.path.join(base, "l", str(i)))
    overlay = Overlay(os.path.abspath(base), [os.path.abspath(p) for p in lowers])
    if len(overlay.options()) + 1 > PAGE_SIZE:
        raise LabkitError(f"the overlay mount options need {len(overlay.options())} bytes, more than a page",
                          "this should not happen with short names; report it")
    return overlay


def load(base: str) -> Overlay:
    """The Overlay of an existing overlay dir (lowers read back from the l/ symlinks)."""
    links = os.path.join(base, "l")
    count = len(os.listdir(links))
    return Overlay(os.path.abspath(base), [os.readlink(os.path.join(links, str(i))) for i in range(count)])


def remove(base: str) -> None:
    """Delete a container's overlay dir (its mount died with its mount namespace)."""
    shutil.rmtree(base, ignore_errors=True)


def mount(spec: dict[str, Any], target: str) -> None:
    """Mount an overlay described by `mount_spec()` onto `target` — in a private mount namespace only."""
    from ..runtime.init import mount_rootfs  # the runtime's own rootfs mount: one implementation
    from ..runtime.spec import Spec

    mount_rootfs(Spec(annotations={ROOTFS_ANNOTATION: json.dumps(spec)}), target)


# --- demos: a helper process mounts in its own mount namespace, runs a command, exits -------------
def run_in_overlay(overlay: Overlay, argv: list[str], target: str | None = None,
                   timeout: float | None = 60) -> subprocess.CompletedProcess:
    """Run `argv` with its working directory in the mounted overlay; the mount is gone afterwards.

    The caller never mounts: `python -m labkit.images.overlay` unshares a mount
    namespace, makes it private, mounts `overlay` at `target` (default
    base/merged), runs argv there, and the namespace dies with it.
    """
    target = target or os.path.join(overlay.base, "merged")
    os.makedirs(target, exist_ok=True)
    cmd = [sys.executable, "-m", "labkit.images.overlay", "--spec", json.dumps(overlay.mount_spec()),
           "--target", target, "--", *argv]
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _helper(argv: list[str] | None = None) -> int:
    from .. import rootfs
    from .. import sys as lsys

    parser = argparse.ArgumentParser(prog="labkit.images.overlay")
    parser.add_argument("--spec", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        lsys.unshare(lsys.CLONE_NEWNS)
        rootfs.make_mounts_private()  # nothing of ours propagates back to the host
        mount(json.loads(args.spec), args.target)
    except LabkitError as err:
        print(f"labkit: {err}", file=sys.stderr)
        return 125
    return subprocess.run(command, cwd=args.target).returncode


if __name__ == "__main__":
    sys.exit(_helper())
