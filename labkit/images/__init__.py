"""labkit.images: OCI images — content-addressed blobs, layers, overlay assembly, build."""
