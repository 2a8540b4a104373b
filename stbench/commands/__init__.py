"""Subcommands of the ``stbench`` CLI, one module each (see stbench/cli.py)."""


def csv_list(text: str) -> list[str]:
    """A comma-separated command-line value as a list (empty items dropped)."""
    return [t for t in text.split(",") if t]
