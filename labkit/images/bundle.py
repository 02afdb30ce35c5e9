"""An OCI bundle from an image: what `docker create` prepares before calling runc.

    <bundle>/config.json   the runtime spec, from the image config (labkit.images.runspec)
    <bundle>/rootfs/       empty: the overlay is mounted here inside the container
    <bundle>/overlay/      l/ (short names of the shared layers), upper/, work/

Nothing is mounted on the host: the spec carries the overlay's description
as an annotation and the runtime mounts it in the container's own mount
namespace. Deleting the bundle directory removes the container's layer.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Callable

from ..errors import LabkitError
from ..runtime.spec import Spec
from . import overlay, runspec
from .image import Image
from .layerdirs import LayerDirs, lookup


@dataclasses.dataclass
class Bundle:
    path: str
    image: Image
    overlay: overlay.Overlay
    spec: Spec

    @property
    def upper(self) -> str:
        """The container's writable layer: everything it changed, and only that."""
        return self.overlay.upper

    def __repr__(self) -> str:
        return f"Bundle({self.path!r}, image={self.image.ref!r}, {len(self.overlay.lowers)} shared layers)"


def default_layer_dirs(image: Image) -> LayerDirs:
    """Unpacked layers live beside the store: <data root>/images -> <data root>/layers."""
    return LayerDirs(os.path.join(os.path.dirname(os.path.abspath(image.store.root)), "layers"))


def image_file_reader(lowers_top_first: list[str]) -> Callable[[str], str | None]:
    """Read a text file of the image's merged tree without mounting it."""
    def read(path: str) -> str | None:
        found = lookup(lowers_top_first, path)
        if found is None or not os.path.isfile(found) or os.path.islink(found):
            return None
        with open(found, errors="replace") as f:
            return f.read()
    return read


def create_bundle(image: Image, path: str, args: list[str] | None = None, layers: LayerDirs | None = None,
                  entrypoint: list[str] | None = None, env: list[str] | None = None,
                  hostname: str = "labkit", edit: Callable[[Spec], None] | None = None,
                  init_files: list[str] = ()) -> Bundle:
    """Unpack the image's layers (once, shared) and write a bundle at `path` (must not exist)."""
    if os.path.lexists(path):
        raise LabkitError(f"{path} already exists", "pick a new directory for the bundle, or delete the old one")
    layer_dirs = layers or default_layer_dirs(image)
    overlay.check_depth(len(image.layers))
    lowers = layer_dirs.ensure_all(image.store, image.layers, image.diff_ids)
    os.makedirs(path)
    try:
        os.chmod(path, 0o755)
        ov = overlay.prepare(os.path.join(path, "overlay"), lowers, init_files)
        os.mkdir(os.path.join(path, "rootfs"), 0o755)
        spec = runspec.to_spec(image.config, image_file_reader(list(reversed(lowers))), args=args,
                               entrypoint=entrypoint, env=env, hostname=hostname)
        spec.annotations = {**(spec.annotations or {}), **ov.annotation()}
        if edit:
            edit(spec)
        _refuse_user_namespace(spec)
        spec.save(path)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return Bundle(os.path.abspath(path), image, ov, spec)


def _refuse_user_namespace(spec: Spec) -> None:
    """A new user namespace cannot mount this overlay (checked here: the kernel only says EPERM).

    Unprivileged overlayfs needs the `userxattr` option (user.overlay.* instead
    of trusted.overlay.* whiteout marks) and layers owned by the mapped ids
    (idmapped mounts or shifted copies) — not implemented yet.
    """
    ns = spec.linux.namespace("user") if spec.linux else None
    if ns is not None and ns.path is None:
        raise LabkitError("an image's overlay rootfs cannot be mounted inside a new user namespace (yet)",
                          "drop the user namespace for image containers, or run the image's flat unpack "
                          "(labkit.images.layers.apply_layer) as a plain rootfs directory")


def delete_bundle(path: str) -> None:
    """Remove a bundle and with it the container's upper dir (stop the container first)."""
    shutil.rmtree(path, ignore_errors=True)
