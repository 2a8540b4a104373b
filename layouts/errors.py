"""The layouts' exception types, at the bottom of the import graph (every layouts module may
raise them)."""


class LayoutError(ValueError):
    """A layout parameter is invalid; the message names the parameter and the fix."""


class LayoutSizeError(LayoutError):
    """A layout would exceed the size limit (``layouts.size``); the message gives the estimate
    and the fix."""
