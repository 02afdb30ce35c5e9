"""labkit.runtime: turns one OCI runtime spec (a bundle) into a running process."""
from .container import (Result, cgroup, create, delete, kill, list_containers, pause, resume, run, start,
                        state, wait)
from .spec import Spec, default_spec

__all__ = ["Result", "Spec", "cgroup", "pause", "resume", "create", "default_spec", "delete", "kill", "list_containers",
           "run", "start", "state", "wait"]
