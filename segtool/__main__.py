"""`python -m segtool ...` runs the CLI."""

from segtool.cli import entry

entry()
