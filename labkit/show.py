"""`labkit.show(fn)`: the source of a labkit function, so a chapter can show
exactly what the wrapper it just used does."""
from __future__ import annotations

import inspect


def show(obj) -> object:
    """Syntax-highlighted source in a notebook; plain text elsewhere."""
    source = inspect.getsource(obj)
    try:
        from IPython.display import Code
    except ImportError:
        return source
    return Code(source, language="python")
