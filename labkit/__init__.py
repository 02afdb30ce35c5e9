"""labkit: a container runtime and engine, built chapter by chapter."""
from .errors import LabkitError

__version__ = "0.1.0"
__all__ = ["LabkitError", "__version__"]
