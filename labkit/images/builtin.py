"""`busybox` without a network: the one image labkit can make from the host alone.

A new user's first `labkit run busybox …` or `FROM busybox` finds no such
image in the store, and the lab has no internet to pull it from. So the
names Docker would resolve to Docker Hub's busybox —

    busybox  busybox:latest  library/busybox  docker.io/library/busybox[:latest]

— resolve, when the store has none of them, to the reproducible one-layer
image `base.busybox_image` makes from the host's busybox-static. It is built
once, on first use, and tagged `busybox` (the name chapter 04 and
`labkit images` use). An image the store already has under any of these
spellings (e.g. one pulled from a registry) is used instead.

Spellings: the store keeps tags verbatim ("busybox" and "busybox:latest" are
two tags), so a lookup tries the literal name first and then the spellings
Docker treats as the same image (`app` is `app:latest` is
`docker.io/library/app:latest`).

    image = open_image_or_builtin(store, "busybox")      # what the engine calls
    name = local_ref(store, "busybox:latest")            # the store tag to use, e.g. for push
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sys
from typing import Callable, Iterator

from ..errors import LabkitError
from . import platform as plat
from .image import Image, open_image
from .store import DIGEST_RE, Store

BUILTIN_TAG = "busybox"   # the name the built image gets in the store
_HUB_REPOSITORY = "library/busybox"
LOCK_NAME = ".busybox.lock"

Notify = Callable[[str], None]


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _parsed(ref: str):
    """The normalized reference, or None for a store name that is no valid reference."""
    from ..registry.errors import ReferenceError_  # images must not need the registry to load
    from ..registry.reference import parse_reference

    try:
        return parse_reference(ref)
    except ReferenceError_:
        return None


def spellings(ref: str) -> list[str]:
    """`ref` first, then the other names Docker treats as the same image (no digests)."""
    names = [ref]
    parsed = _parsed(ref) if "@" not in ref and not DIGEST_RE.match(ref) else None
    if parsed is None:
        return names
    repos = [parsed.familiar.rsplit(":", 1)[0], f"{parsed.registry}/{parsed.repository}"]
    if parsed.registry == "docker.io":
        repos.insert(1, parsed.repository)  # library/busybox
    tags = [f":{parsed.tag}"] + ([""] if parsed.tag == "latest" else [])
    for repo in repos:
        for tag in tags:
            if repo + tag not in names:
                names.append(repo + tag)
    return names


def is_builtin(ref: str) -> bool:
    """Whether `ref` names Docker Hub's busybox:latest, which labkit can build offline."""
    parsed = _parsed(ref) if "@" not in ref else None
    return (parsed is not None and parsed.registry == "docker.io" and parsed.repository == _HUB_REPOSITORY
            and parsed.tag == "latest")


def stored_name(store: Store, ref: str) -> str | None:
    """The tag under which the store holds the image `ref` names, or None."""
    tags = store.tags()
    return next((name for name in spellings(ref) if name in tags), None)


@contextlib.contextmanager
def _locked(store: Store) -> Iterator[None]:
    """One builder per store at a time, across processes (the second waits, then finds it)."""
    fd = os.open(os.path.join(store.root, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def ensure(store: Store, ref: str, notify: Notify | None = _to_stderr) -> bool:
    """Build the offline busybox image if `ref` names it and the store lacks it; whether it did.

    `notify` gets one line saying what was built (default: stderr; None: silent).
    """
    if not is_builtin(ref) or stored_name(store, ref):
        return False
    from .. import rootfs
    from .base import busybox_image

    with _locked(store):
        if stored_name(store, ref):  # another process built it while we waited
            return False
        try:
            binary = rootfs.find_busybox()
        except LabkitError:
            raise LabkitError(f"{ref}: not in the store, and no static busybox on this host to build it from",
                              "apt-get install busybox-static (or pull the image from a registry)") from None
        if os.geteuid() != 0:  # the image's files are owned by root: lchown needs it
            raise LabkitError(f"{ref}: not in the store, and building it from {binary} needs root",
                              "run as root (sudo), or inside the lab VM")
        busybox_image(store, BUILTIN_TAG, binary)
    if notify:
        notify(f"busybox: not in the store; built it from the host's busybox-static "
               f"({binary}, sha256 {_file_sha256(binary)[:12]})")
    return True


def local_ref(store: Store, ref: str, notify: Notify | None = _to_stderr) -> str:
    """The name to open `ref` by in the store: its stored spelling, after building busybox if
    needed; `ref` itself when the store has nothing under it (open_image then says so)."""
    ensure(store, ref, notify)
    return stored_name(store, ref) or ref


def open_image_or_builtin(store: Store, ref: str, platform: plat.Platform | str | None = None,
                          notify: Notify | None = _to_stderr) -> Image:
    """open_image(store, ref, platform), where `busybox` is built offline when missing and
    Docker's equivalent spellings of a name (`app` = `app:latest`) find the stored tag."""
    if platform is not None and is_builtin(ref) and not stored_name(store, ref) and not _is_host(platform):
        return open_image(store, ref, platform)  # the host's busybox is no image for another platform
    return open_image(store, local_ref(store, ref, notify), platform)


def _is_host(platform: plat.Platform | str) -> bool:
    wanted = plat.Platform.parse(platform) if isinstance(platform, str) else plat.normalize(platform)
    return plat.matches(wanted, plat.host_platform())
