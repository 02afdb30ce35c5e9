"""labkit's side of pull_unpack.py: pull an image, then unpack its layers onto one rootfs.

    python benchmarks/pull_unpack_labkit.py REFERENCE STORE_DIR ROOTFS

Flat, like `umoci unpack`: every layer applied in order onto ROOTFS, whiteouts
and opaque directories applied, each layer's content checked against its
diff_id. The benchmark imports these functions for its in-process rows and
runs this file as a new process for the like-for-like row; it imports only
labkit, so a new process pays for the interpreter and labkit's imports and
nothing of the benchmark's own.
"""
from __future__ import annotations

import os
import sys

from labkit.images.image import open_image
from labkit.images.layers import apply_layer
from labkit.images.store import Store
from labkit.registry import pull


def unpack(store: Store, ref: str, rootfs: str) -> int:
    """Apply every layer of the image `ref` onto the new directory `rootfs`; the number of entries."""
    img = open_image(store, ref)
    os.makedirs(rootfs)
    entries = 0
    for descriptor, diff_id in zip(img.layers, img.diff_ids, strict=True):
        entries += apply_layer(store, descriptor, rootfs, diff_id=diff_id).entries
    return entries


def pull_unpack(reference: str, store_dir: str, rootfs: str, jobs: int = 4) -> int:
    store = Store(store_dir)
    result = pull(reference, store, jobs=jobs)
    return unpack(store, result.tag, rootfs)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__.split("\n\n")[1])
    pull_unpack(*sys.argv[1:4])
