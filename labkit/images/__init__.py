"""labkit.images: OCI images — content-addressed blobs, layers, overlay assembly, build.

    store       Store: the OCI image layout every image's blobs live in
    model       manifests, indexes, configs (OCI and Docker schema2), media types
    platform    os/arch/variant and choosing a manifest from an index
    image       open_image(store, ref) / write_image(...): tags and digests
    changes     what differs between two trees, or what an overlay upper dir holds
    layers      layer tars: create (deterministic), apply, diff_id vs blob digest
    unpack      applying a tar safely, whiteouts flat or in overlayfs' format
    layerdirs   each layer unpacked once, by diff_id, shared by all containers
    overlay     a container's overlay dirs and mount options (short lowerdir names)
    runspec     image config -> OCI runtime spec
    bundle      image -> OCI bundle whose rootfs is an overlay (mounted by the runtime)
    base        busybox image, rootfs tarballs, OCI layouts of other tools
    builtin     `busybox` offline: open_image_or_builtin(store, ref) builds it on first use
    archive     `docker save`/`load` tarballs: docker-archive and oci-archive, verified on the way in
    inventory   images by tag, id or digest; `docker rmi` and the garbage collection after it
    containerfile, build   the Containerfile subset and the builder with its cache
"""
from .base import busybox_image, export_layout, import_layout, import_rootfs
from .build import BuildError, BuildResult  # build.build(): the module keeps its name
from .bundle import Bundle, create_bundle, delete_bundle
from .image import Image, open_image, write_image
from .layerdirs import LayerDirs
from .layers import Layer, apply_layer, create_layer, diff_layer, list_layer
from .store import DigestError, Store
from .unpack import LayerSecurityError

__all__ = ["Bundle", "BuildError", "BuildResult", "DigestError", "Image", "Layer", "LayerDirs", "LayerSecurityError",
           "Store", "apply_layer", "busybox_image", "create_bundle", "create_layer", "delete_bundle",
           "diff_layer", "export_layout", "import_layout", "import_rootfs", "list_layer", "open_image",
           "write_image"]
