"""Unpacked layers: one directory per diff_id, unpacked once, shared by every container.

    <root>/sha256/<diff_id hex>/diff/         the layer's files, ready as an overlayfs lowerdir
    <root>/sha256/<diff_id hex>/layer.json    where it came from (blob digest, notes)

A layer is unpacked into a temp directory, its content checked against the
diff_id, then renamed into place: a half-unpacked or tampered layer never
appears under its name, and two containers unpacking the same layer at
once end up sharing one copy. Whiteouts are stored in overlayfs' format
(see labkit.images.unpack, OVERLAY), which needs root.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from typing import Any

from ..errors import LabkitError
from .layers import apply_layer
from .model import Descriptor
from .store import Store, check_digest
from .unpack import OVERLAY


class LayerDirs:
    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(os.path.join(root, "sha256"), exist_ok=True)

    def __repr__(self) -> str:
        return f"LayerDirs({self.root!r})"

    def _dir(self, diff_id: str) -> str:
        return os.path.join(self.root, "sha256", check_digest(diff_id).split(":", 1)[1])

    def path(self, diff_id: str) -> str:
        """The lowerdir of an unpacked layer (it may not exist yet: see `ensure`)."""
        return os.path.join(self._dir(diff_id), "diff")

    def has(self, diff_id: str) -> bool:
        return os.path.isdir(self.path(diff_id))

    def ensure(self, store: Store, descriptor: Descriptor | dict[str, Any], diff_id: str) -> str:
        """Unpack the layer unless it already is; its lowerdir."""
        final = self._dir(diff_id)
        if os.path.isdir(os.path.join(final, "diff")):
            return os.path.join(final, "diff")
        desc = descriptor if isinstance(descriptor, Descriptor) else Descriptor.from_dict(descriptor)
        tmp = tempfile.mkdtemp(dir=os.path.join(self.root, "sha256"), prefix=".unpack-")
        try:
            diff = os.path.join(tmp, "diff")
            os.mkdir(diff)
            os.chmod(tmp, 0o755)  # containers with a user namespace must reach it
            report = apply_layer(store, desc, diff, OVERLAY, diff_id)
            with open(os.path.join(tmp, "layer.json"), "w") as f:
                json.dump({"diff_id": diff_id, "digest": desc.digest, "media_type": desc.media_type,
                           "size": desc.size, "notes": report.notes}, f, indent=2)
            try:
                os.rename(tmp, final)
            except OSError:  # another process unpacked it first: use theirs
                if not os.path.isdir(os.path.join(final, "diff")):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return os.path.join(final, "diff")

    def ensure_all(self, store: Store, layers: list[Descriptor], diff_ids: list[str]) -> list[str]:
        """Every layer of an image, bottom first."""
        if len(layers) != len(diff_ids):
            raise LabkitError(f"the manifest lists {len(layers)} layers but the config {len(diff_ids)} diff_ids",
                              "the image is inconsistent; pull or build it again")
        return [self.ensure(store, layer, diff_id) for layer, diff_id in zip(layers, diff_ids)]

    def list(self) -> list[str]:
        directory = os.path.join(self.root, "sha256")
        return sorted("sha256:" + n for n in os.listdir(directory) if not n.startswith("."))

    def remove(self, diff_id: str) -> None:
        shutil.rmtree(self._dir(diff_id), ignore_errors=True)

    def disk_usage(self, diff_id: str) -> int:
        return disk_usage(self.path(diff_id))


def disk_usage(path: str) -> int:
    """Bytes allocated below `path` (like `du -s`), each inode counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames, ""]:
            st = os.lstat(os.path.join(dirpath, name) if name else dirpath)
            key = (st.st_dev, st.st_ino)
            if key not in seen:
                seen.add(key)
                total += st.st_blocks * 512
    return total


def lookup(lowers_top_first: list[str], rel: str) -> str | None:
    """Where the merged view's `rel` comes from, without mounting anything.

    Walks the layers from the top like overlayfs: the first layer holding the
    path wins; a whiteout, an opaque directory or a non-directory on the way
    there hides everything below it.
    """
    parts = [p for p in rel.split("/") if p]
    if not parts:
        return lowers_top_first[0] if lowers_top_first else None
    for layer in lowers_top_first:
        path, hidden_below = layer, False
        for i, part in enumerate(parts):
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                break  # not in this layer: look lower, unless an opaque dir on the way hides it
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                return None  # deleted in this layer
            if i == len(parts) - 1:
                return path
            if not stat.S_ISDIR(st.st_mode):
                return None  # a file (or symlink) covers the rest of the path
            hidden_below = hidden_below or is_opaque(path)
        if hidden_below:
            return None
    return None


def is_opaque(directory: str) -> bool:
    try:
        return os.getxattr(directory, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False
