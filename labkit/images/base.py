"""Images without a network: from the host's busybox, a rootfs tarball, or another tool's OCI layout.

- `busybox_image`: the tiny rootfs of labkit.rootfs as a one-layer image. Owners,
  mtimes and the config's timestamps are fixed, so the same busybox binary
  always gives the same image digest (a student's digest matches the book's
  when their busybox does).
- `import_rootfs`: a tarball of a root filesystem becomes a one-layer image,
  like `docker import`.
- `import_layout` / `export_layout`: copy an image between an OCI image layout
  (made by umoci, skopeo, buildah, …) and the store. Every blob is checked
  against its descriptor's digest and size on the way in.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tempfile
from typing import Any, Iterator

from .. import rootfs
from ..errors import LabkitError
from ..runtime.spec import DEFAULT_PATH
from . import containerfile as cf
from . import layers as lay
from . import platform as plat
from .image import Image, history_entry, open_image, write_image
from .model import Descriptor, ImageConfig, Index, RunConfig, parse_document
from .store import REF_NAME, DigestError, Store, check_digest, digest_bytes

EPOCH = "1970-01-01T00:00:00Z"  # the default `created` of reproducible images


def new_config(run: RunConfig | None = None, created: str = EPOCH,
               platform: plat.Platform | None = None) -> ImageConfig:
    p = platform or plat.host_platform()
    variant = "" if p.architecture != "arm" else p.variant  # arm64's v8 is implied, as Docker writes it
    return ImageConfig(architecture=p.architecture, os=p.os, variant=variant, created=created,
                       config=run or RunConfig(env=[DEFAULT_PATH]), history=[])


def busybox_image(store: Store, tag: str = "busybox", busybox: str | None = None,
                  created: str = EPOCH) -> Image:
    """A one-layer image of labkit's busybox rootfs, reproducible (needs root to set owners)."""
    binary = busybox or rootfs.find_busybox()
    with open(binary, "rb") as f:
        binary_digest = hashlib.sha256(f.read()).hexdigest()[:12]
    with tempfile.TemporaryDirectory(prefix="labkit-busybox-") as tmp:
        tree = rootfs.build_busybox_rootfs(os.path.join(tmp, "rootfs"), binary)
        layer = lay.diff_layer(store, None, tree, mtime=rootfs.FIXED_MTIME, owner=(0, 0))
    config = new_config(RunConfig(env=[DEFAULT_PATH], cmd=["sh"]), created)
    config.rootfs["diff_ids"] = [layer.diff_id]
    config.history = [history_entry(f"labkit busybox rootfs (busybox sha256 {binary_digest})", created)]
    return write_image(store, config, [layer.descriptor()], tag)


def import_rootfs(store: Store, tarball: str, tag: str | None, run: RunConfig | None = None,
                  created: str = EPOCH) -> Image:
    """A rootfs tarball (plain or gzip) as a one-layer image, like `docker import`."""
    layer = lay.import_tar(store, tarball)
    config = new_config(run or RunConfig(env=[DEFAULT_PATH], cmd=["sh"]), created)
    config.rootfs["diff_ids"] = [layer.diff_id]
    config.history = [history_entry(f"imported from {os.path.basename(tarball)}", created)]
    return write_image(store, config, [layer.descriptor()], tag)


CHANGES = ("CMD", "ENTRYPOINT", "ENV", "WORKDIR", "USER", "LABEL", "EXPOSE", "VOLUME")


def apply_changes(run: RunConfig, changes: list[str]) -> RunConfig:
    """`docker import --change 'CMD ["sh"]'`: Dockerfile instructions that edit the run config,
    applied in order (an ENTRYPOINT drops the CMD unless a CMD change came before it)."""
    out = RunConfig.from_dict(run.to_dict())
    cmd_set = False
    for change in changes:
        word = change.strip().split(None, 1)[0].upper() if change.strip() else ""
        if word not in CHANGES:
            raise LabkitError(f"--change {change!r}: {word or 'an empty change'} is not supported here",
                              f"import accepts {', '.join(CHANGES)} (e.g. --change 'CMD [\"sh\"]')")
        instr = cf.parse(f"FROM scratch\n{change.strip()}")[1]
        env = dict(e.split("=", 1) for e in (out.env or []) if "=" in e)
        if instr.cmd == "CMD":
            out.cmd, cmd_set = instr.argv(), True
        elif instr.cmd == "ENTRYPOINT":
            out.entrypoint = instr.argv()
            if not cmd_set:
                out.cmd = None
        elif instr.cmd == "ENV":
            for key, value in cf.key_values(instr.args, "ENV"):
                env[key] = cf.expand(value, env)
            out.env = [f"{k}={v}" for k, v in env.items()]
        elif instr.cmd == "WORKDIR":
            out.working_dir = posixpath.normpath(posixpath.join(out.working_dir or "/", cf.expand(instr.args, env)))
        elif instr.cmd == "USER":
            out.user = cf.expand(instr.args, env).strip()
        elif instr.cmd == "LABEL":
            out.labels = {**(out.labels or {}), **dict(cf.key_values(instr.args, "LABEL"))}
        elif instr.cmd == "VOLUME":
            out.volumes = {**(out.volumes or {}), **{p: {} for p in cf.volumes(instr, env)}}
        else:  # EXPOSE
            out.exposed_ports = {**(out.exposed_ports or {}), **{p: {} for p in cf.exposed(instr.args)}}
    return out


# --- OCI image layouts ------------------------------------------------------------------------------
def _layout_index(layout: str) -> dict[str, Any]:
    try:
        with open(os.path.join(layout, "oci-layout")) as f:
            version = json.load(f).get("imageLayoutVersion")
        with open(os.path.join(layout, "index.json")) as f:
            index = json.load(f)
    except (OSError, ValueError) as err:
        raise LabkitError(f"{layout} is not an OCI image layout: {err}",
                          "it needs oci-layout, index.json and blobs/ (e.g. from `skopeo copy … oci:DIR:TAG`)") from None
    if version != "1.0.0":
        raise LabkitError(f"unsupported OCI layout version {version!r}", "labkit reads imageLayoutVersion 1.0.0")
    return index


def layout_refs(layout: str) -> list[str]:
    """The names (ref.name annotations) an OCI layout holds."""
    return [m.get("annotations", {}).get(REF_NAME, "") for m in _layout_index(layout).get("manifests", [])]


def _layout_blob(layout: str, digest: str) -> str:
    algo, hexpart = check_digest(digest).split(":", 1)
    return os.path.join(layout, "blobs", algo, hexpart)


def _chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(1 << 20), b"")


def _read_verified(layout: str, desc: Descriptor) -> bytes:
    """A small blob (manifest, index) of a layout, only if it matches its descriptor."""
    path = _layout_blob(layout, desc.digest)
    if not os.path.exists(path):
        raise LabkitError(f"the layout {layout} lacks blob {desc.digest}", "the layout is incomplete; copy it again")
    with open(path, "rb") as f:
        data = f.read()
    if digest_bytes(data) != desc.digest or (desc.size and len(data) != desc.size):
        raise DigestError(f"blob {desc.digest} of {layout} does not match its digest or size",
                          "the layout was corrupted or tampered with; nothing was imported")
    return data


def copy_blob(layout: str, store: Store, desc: Descriptor) -> None:
    """Copy one blob into the store; its digest and size must match the descriptor."""
    if store.has_blob(desc.digest):
        return
    path = _layout_blob(layout, desc.digest)
    if not os.path.exists(path):
        raise LabkitError(f"the layout {layout} lacks blob {desc.digest}", "the layout is incomplete; copy it again")
    store.put_stream(_chunks(path), desc.digest, desc.size)


def import_layout(store: Store, layout: str, ref: str | None = None, tag: str | None = None,
                  platform: plat.Platform | str | None = None) -> Image:
    """Import one image of an OCI layout (for an index: the `platform` one) and tag it."""
    entries = _layout_index(layout).get("manifests", [])
    if ref is not None:
        entries = [m for m in entries if m.get("annotations", {}).get(REF_NAME) == ref]
    if len(entries) != 1:
        raise LabkitError(f"{len(entries)} images in {layout} match {ref!r}",
                          f"name one of: {', '.join(filter(None, layout_refs(layout))) or '(unnamed)'}")
    desc = Descriptor.from_dict(entries[0])
    doc = parse_document(_read_verified(layout, desc), desc.media_type or None)
    if isinstance(doc, Index):
        desc = Descriptor.from_dict(plat.select([d.to_dict() for d in doc.manifests], platform))
        doc = parse_document(_read_verified(layout, desc), desc.media_type or None)
        if isinstance(doc, Index):
            raise LabkitError("nested image indexes are not supported", "import a single-level index")
    for blob in [doc.config, *doc.layers]:  # content first, the manifest last: no dangling manifest
        copy_blob(layout, store, blob)
    copy_blob(layout, store, Descriptor(desc.media_type, desc.digest, desc.size))
    name = tag or ref or desc.digest
    if tag or ref:
        store.tag(name, Descriptor(desc.media_type, desc.digest, desc.size).to_dict())
    return open_image(store, name if (tag or ref) else desc.digest)


def export_layout(image: Image, layout: str, name: str | None = None) -> str:
    """Write `image` as a new OCI layout at `layout` (what `docker save` does, in OCI form)."""
    dest = Store(layout)
    for blob in [image.manifest.config, *image.layers, image.descriptor]:
        if not dest.has_blob(blob.digest):  # copies, not hard links: the layout may be edited or sent
            dest.put_stream(_chunks(image.store.blob_path(blob.digest)), blob.digest, blob.size)
    desc = Descriptor(image.descriptor.media_type, image.digest, image.descriptor.size)
    dest.tag(name or image.ref.split("@")[0], desc.to_dict())
    return layout
