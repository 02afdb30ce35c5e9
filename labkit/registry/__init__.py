"""labkit.registry: an OCI distribution-spec client (pull, push, auth) and a loopback registry.

    from labkit.registry import LocalRegistry, pull, push, parse_reference
    with LocalRegistry() as reg:
        push(store, "hello:1.0", reg.reference("demo/hello:1.0"))
        result = pull(reg.reference("demo/hello:1.0"), other_store, progress=TextProgress())

Modules: reference (names), transport (HTTP, insecure policy), auth (challenges,
tokens, docker config), client (one method per API endpoint), platform (index
selection), pull, push, progress, errors, local (docker-registry + token server),
service (`labkit registry start|stop|status`: one detached docker-registry on loopback).
"""
from .auth import Challenge, Credentials, credentials_from_docker_config, parse_www_authenticate
from .client import (ACCEPT, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, Manifest, PingResult,
                     RegistryClient)
from .errors import (BlobUnknownError, DeniedError, DigestInvalidError, DigestMismatchError,
                     InsecureRegistryError, ManifestError, ManifestUnknownError, NameUnknownError,
                     PlatformNotFoundError, ReferenceError_, RegistryError, RegistryUnreachableError,
                     TooManyRequestsError, UnauthorizedError)
from .local import LocalRegistry, TokenServer
from .platform import Platform, host_platform, select_manifest
from .progress import Collect, ProgressEvent, TextProgress, WidgetProgress, progress_bar
from .pull import BlobResult, PullResult, pull
from .push import PushResult, push
from .reference import Reference, parse_reference

__all__ = [
    "ACCEPT", "BlobResult", "BlobUnknownError", "Challenge", "Collect", "Credentials", "DOCKER_LIST",
    "DOCKER_MANIFEST", "DeniedError", "DigestInvalidError", "DigestMismatchError", "InsecureRegistryError",
    "LocalRegistry", "Manifest", "ManifestError", "ManifestUnknownError", "NameUnknownError", "OCI_INDEX",
    "OCI_MANIFEST", "PingResult", "Platform", "PlatformNotFoundError", "ProgressEvent", "PullResult",
    "PushResult", "Reference", "ReferenceError_", "RegistryClient", "RegistryError", "RegistryUnreachableError",
    "TextProgress", "TokenServer", "TooManyRequestsError", "UnauthorizedError", "WidgetProgress",
    "credentials_from_docker_config", "host_platform", "parse_reference", "parse_www_authenticate",
    "progress_bar", "pull", "push", "select_manifest",
]
