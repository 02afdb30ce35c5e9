"""Where labkit keeps its state. Settings, so tests and notebooks use temp roots.

- LABKIT_RUN_ROOT  (default /run/labkit): runtime state, gone on reboot
- LABKIT_DATA_ROOT (default /var/lib/labkit): images, containers, volumes,
  the storage of `labkit registry start`
Every path contains "labkit", which is how `labkit doctor --leaks` finds them.
"""
from __future__ import annotations

import os


def run_root() -> str:
    return os.environ.get("LABKIT_RUN_ROOT", "/run/labkit")


DEFAULT_DATA_ROOT = "/var/lib/labkit"


def data_root() -> str:
    return os.environ.get("LABKIT_DATA_ROOT", DEFAULT_DATA_ROOT)


def runtime_root() -> str:
    """State of the OCI runtime: one directory per container id."""
    return os.path.join(run_root(), "runtime")


def registry_storage() -> str:
    """The blobs and manifests of `labkit registry start`: they persist across stop and start."""
    return os.path.join(data_root(), "registry")


def registry_state() -> str:
    """Config, pid file and log of the registry `labkit registry start` runs."""
    return os.path.join(run_root(), "registry")
