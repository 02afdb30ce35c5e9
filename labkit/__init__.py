"""labkit: a container runtime and engine, built chapter by chapter."""
from typing import Any

from .errors import LabkitError

__version__ = "0.1.0"
__all__ = ["LabkitError", "__version__", "show"]


def __getattr__(name: str) -> Any:
    """`labkit.show` on first use: it imports inspect and ast, which every container
    start (the monitor, labkit-runc) would otherwise pay for in time and memory."""
    if name == "show":
        from .show import show

        globals()["show"] = show  # importing the submodule bound labkit.show to the module: the function wins
        return show
    raise AttributeError(f"module 'labkit' has no attribute {name!r}")
