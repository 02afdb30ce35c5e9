"""Chapter 04 exercises: a layer that deletes, and a Containerfile in cache-friendly order.

1. `without_vi(store)`: the learner makes an image tagged `no-vi` — busybox
   minus /bin/vi — as one layer on top of busybox's. The check opens the
   image in the store: its lower layers must be busybox's, by digest (shared,
   not copied); its top layer, read as the tarball it is, must hold the
   whiteout `bin/.wh.vi` and nothing else but directories. Then a real
   container runs from the image (layers unpacked for overlayfs, a fresh
   upper dir): /bin/vi must be gone and the rest of busybox still there.

2. `cache_friendly(containerfile)`: the learner reorders a Containerfile so
   that editing the app's source does not re-run the slow RUN step. The
   check builds it with labkit (a fresh store, the busybox base, the build
   cache), runs the image, edits app.txt, builds again, and reads which
   steps came from the cache; then runs the rebuilt image, which must print
   the new app.txt.
"""
from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tarfile
import tempfile
import uuid
from typing import Iterator

from .. import runtime
from ..errors import LabkitError
from ..images import base as ibase
from ..images import build as ibuild
from ..images import bundle as ibundle
from ..images import containerfile as cf
from ..images.image import Image, open_image
from ..images.layerdirs import LayerDirs
from ..images.layers import list_layer
from ..images.store import Store
from ..images.unpack import OPAQUE_MARKER, WHITEOUT
from . import Verdict, failed, passed

VI = "bin/vi"
VI_WHITEOUT = "bin/" + WHITEOUT + "vi"
APP_V1, APP_V2 = "version 1\n", "version 2\n"
DEPS_TEXT = "slow dependency install"
GIVEN = """\
FROM busybox
WORKDIR /app
COPY app.txt ./
RUN mkdir deps && echo "slow dependency install" > deps/installed
CMD ["cat", "app.txt", "deps/installed"]
"""


# --- helpers ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _scratch() -> Iterator[str]:
    work = tempfile.mkdtemp(prefix="labkit-check-ch04-")
    os.chmod(work, 0o755)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(image: Image, work: str, args: list[str] | None = None) -> runtime.Result:
    """Run `image` in a real container (layers unpacked below `work`); the bundle is removed after."""
    path = os.path.join(work, "bundle-" + uuid.uuid4().hex[:8])
    bundle = ibundle.create_bundle(image, path, args=args, layers=LayerDirs(os.path.join(work, "layers")))
    try:
        return runtime.run(bundle.path, container_id=f"ch04-{uuid.uuid4().hex[:12]}", timeout=60)
    finally:
        ibundle.delete_bundle(path)


def _names(store: Store, descriptor) -> list[tuple[str, tarfile.TarInfo]]:
    """A layer's entries as clean relative names ('./bin/vi' -> 'bin/vi')."""
    found = []
    for member in list_layer(store, descriptor):
        name = "/".join(p for p in member.name.split("/") if p not in ("", "."))
        if name:
            found.append((name, member))
    return found


def _show(names: list[str], limit: int = 3) -> str:
    shown = ", ".join("/" + n for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# --- exercise 1: a layer that deletes /bin/vi ----------------------------------------------------
def without_vi(store: Store, tag: str = "no-vi", base: str = "busybox") -> Verdict:
    """Check the image `tag` in `store`: busybox's layers + one layer that only deletes /bin/vi."""
    try:
        img = open_image(store, tag)
    except LabkitError:
        return failed(f"there is no image tagged {tag!r} in {store.root}",
                      f"tag your image {tag!r}: build(context, store, tag={tag!r}), or "
                      f"write_image(store, config, layers, tag={tag!r})")
    try:
        base_img = open_image(store, base)
    except LabkitError:
        return failed(f"the base image {base!r} is not in the store",
                      "run the chapter's first cells again: they create it with base.busybox_image(store)")
    below = [d.digest for d in img.layers[:len(base_img.layers)]]
    if below != [d.digest for d in base_img.layers]:
        return failed(f"{tag}'s lower layers are not {base}'s layers",
                      f"start from {base} (FROM {base}, or {base}'s layers + your new one): an image reuses "
                      "its base's layers by digest; a flattened copy of the files shares nothing")
    extra = img.layers[len(base_img.layers):]
    if not extra:
        return failed(f"{tag} has no layer of its own: it is {base} itself",
                      "add one layer on top that deletes /bin/vi (e.g. RUN rm /bin/vi)")
    if len(extra) > 1:
        return failed(f"{tag} has {len(extra)} layers on top of {base}; one is enough",
                      "make the deletion one step: a single RUN, or one layers.diff_layer(store, OLD, NEW)")
    entries = _names(store, extra[0])
    names = [n for n, _ in entries]
    files = [n for n, m in entries if not m.isdir() and posixpath.basename(n) != OPAQUE_MARKER
             and not posixpath.basename(n).startswith(WHITEOUT)]
    if VI in files:
        return failed("the layer writes a new /bin/vi instead of deleting it",
                      "remove the file (rm /bin/vi, or os.unlink in the new tree): only a deletion becomes "
                      "the whiteout entry bin/.wh.vi")
    if VI_WHITEOUT not in names:
        if len(files) > 10:
            return failed(f"the layer holds {len(files)} files but no whiteout: it is a copy of the whole tree",
                          "a layer is the difference between two trees: layers.diff_layer(store, OLD, NEW) with "
                          "the tree before and after the deletion (not diff_layer(store, None, NEW)), or RUN rm /bin/vi")
        return failed("the layer has no whiteout for /bin/vi (an entry named bin/.wh.vi)",
                      "delete /bin/vi in the step that makes the layer (RUN rm /bin/vi)")
    other_whiteouts = [n for n in names if posixpath.basename(n).startswith(WHITEOUT) and n != VI_WHITEOUT]
    if other_whiteouts:
        deleted = [posixpath.join(posixpath.dirname(n), posixpath.basename(n)[len(WHITEOUT):])
                   if posixpath.basename(n) != OPAQUE_MARKER else posixpath.dirname(n) + "/*"
                   for n in other_whiteouts]
        return failed(f"the layer also deletes {_show(deleted)}", "delete /bin/vi only: keep the rest of busybox")
    if files:
        return failed(f"the layer also adds or changes {_show(files)}",
                      "keep the layer to the deletion: nothing but the whiteout (and its directory)")
    with _scratch() as work:
        try:
            result = _run(img, work, ["sh", "-c", "test -e /bin/vi && echo vi-present; "
                                                  "test -x /bin/sh && test -e /etc/passwd && echo rest-ok"])
        except LabkitError as err:
            return failed(f"a container from {tag} could not run: {err.what}", err.hint)
    out = result.stdout.split()
    if "vi-present" in out:
        return failed(f"a container from {tag} still sees /bin/vi",
                      "the whiteout must sit in the directory of the deleted file: bin/.wh.vi")
    if "rest-ok" not in out:
        return failed(f"a container from {tag} lacks /bin/sh or /etc/passwd", "delete /bin/vi only")
    return passed(f"{tag} = {base}'s layer (shared by digest) + one layer holding just the whiteout "
                  f"{VI_WHITEOUT}; a container from it has no /bin/vi and the rest of busybox")


# --- exercise 2: layer order and the build cache ------------------------------------------------
def cache_friendly(containerfile: str) -> Verdict:
    """Build `containerfile` twice around an edit of app.txt; the RUN step must come from the cache."""
    try:
        instructions = cf.parse(containerfile)
    except LabkitError as err:
        return failed(f"the Containerfile does not parse: {err.what}", err.hint)
    if not any(i.cmd == "RUN" for i in instructions):
        return failed("there is no RUN step any more",
                      "keep the RUN step: it stands for the slow dependency install; only move it")
    with _scratch() as work:
        store = Store(os.path.join(work, "images"))
        ibase.busybox_image(store)
        context = os.path.join(work, "context")
        os.mkdir(context)
        with open(os.path.join(context, "Containerfile"), "w") as f:
            f.write(containerfile)
        app = os.path.join(context, "app.txt")

        def build_and_run(text: str) -> tuple[ibuild.BuildResult, runtime.Result] | Verdict:
            with open(app, "w") as f:
                f.write(text)
            try:
                result = ibuild.build(context, store, tag="exercise", timeout=60)
                return result, _run(result.image, work)
            except LabkitError as err:
                return failed(f"the build failed: {err.what}", err.hint)

        first = build_and_run(APP_V1)
        if isinstance(first, Verdict):
            return first
        _, ran = first
        if APP_V1.strip() not in ran.stdout:
            return failed("the image does not print app.txt", "COPY app.txt into /app, and keep the CMD "
                          'that prints it: CMD ["cat", "app.txt", "deps/installed"] with WORKDIR /app')
        if DEPS_TEXT not in ran.stdout:
            return failed("the image does not print deps/installed",
                          "keep the RUN step that writes /app/deps/installed, and the CMD that prints it")
        second = build_and_run(APP_V2)
        if isinstance(second, Verdict):
            return second
        rebuilt, ran = second
        runs = [s for s in rebuilt.steps if s.instruction.startswith("RUN")]
        missed = [s for s in runs if not s.cached]
        if missed:
            return failed(f"after an edit of app.txt, the RUN step ran again: {missed[0].instruction}",
                          "a step's cache key chains on every step above it, so a change to app.txt misses "
                          "the cache for all steps after COPY app.txt: move COPY app.txt below the RUN")
        if APP_V2.strip() not in ran.stdout:
            return failed("the rebuilt image does not print the edited app.txt",
                          "COPY app.txt must come after the RUN (and before the image's end), so the edit lands in it")
        layer_steps = [s for s in rebuilt.steps if s.layer]
        again = sum(not s.cached for s in layer_steps)
    return passed(f"after an edit of app.txt the RUN layer came from the cache "
                  f"({again} of {len(layer_steps)} layer steps rebuilt) and the image prints the new app.txt")
