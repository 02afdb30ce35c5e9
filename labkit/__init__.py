"""labkit: a container runtime and engine, built chapter by chapter."""
from .errors import LabkitError
from .show import show

__version__ = "0.1.0"
__all__ = ["LabkitError", "__version__", "show"]
