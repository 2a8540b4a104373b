"""Subcommands of the ``stbench`` CLI, one module each (see stbench/cli.py)."""
