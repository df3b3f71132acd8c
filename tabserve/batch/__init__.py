"""Batch scoring: `python -m tabserve.batch` (see cli.py for what it does and its options)."""

from tabserve.batch.cli import EXIT_FAILED, EXIT_INVALID_ROWS, EXIT_OK, EXIT_UNUSABLE, main
from tabserve.batch.scoring import defuse_formula

__all__ = ["EXIT_FAILED", "EXIT_INVALID_ROWS", "EXIT_OK", "EXIT_UNUSABLE", "defuse_formula", "main"]
