"""labkit.runtime: turns one OCI runtime spec (a bundle) into a running process."""
from .spec import Spec, default_spec

__all__ = ["ExecError", "Result", "Spec", "cgroup", "pause", "resume", "create", "default_spec", "delete", "kill", "list_containers",
           "run", "start", "state", "wait"]


def __getattr__(name: str):
    # The operations (create, start, run, ...) live in .container, which imports subprocess
    # and more. The container init, `python -m labkit.runtime.init`, imports this package on
    # every container start and needs none of it: so they load on first use, not here.
    if name in __all__:
        from . import container
        return getattr(container, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
