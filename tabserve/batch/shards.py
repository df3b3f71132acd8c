"""Which files, and which of their rows, each shard scores.

Every shard computes the same plan from the same input, without talking to the others, so the
shards together score every row exactly once:

- several input files (a directory, a glob): sorted by path and dealt round-robin, file i to
  shard i % count; each file is scored whole by one shard;
- one file: its data rows are split into `count` contiguous ranges by row number, shard i taking
  rows [n*i // count, n*(i+1) // count). Rows are records, not lines: a quoted CSV field may
  hold line breaks. Concatenated in shard order, the parts hold the rows in input order.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tabserve.batch.scoring import Unusable

STDIN = "-"  # also stdout, for --output
FORMATS = ("csv", "parquet")
_EXTENSIONS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
# Files a directory input skips: hidden ones, and the `_` files (manifests, `_SUCCESS`) that
# Spark, pyarrow and this command write next to their parts.
_SKIPPED_PREFIXES = (".", "_")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @property
    def part_name(self) -> str:
        """Names sort in shard order; the count in the name keeps runs with different counts
        from overwriting each other's parts."""
        return f"part-{self.index:05d}-of-{self.count:05d}"


@dataclass(frozen=True)
class InputFile:
    path: str  # STDIN for the standard input
    format: str


@dataclass(frozen=True)
class Slice:
    """Data rows [start, stop) of a file, counted from 0; stop None: to the end."""

    file: InputFile
    start: int = 0
    stop: int | None = None


def format_from_name(path: str) -> str | None:
    return _EXTENSIONS.get(Path(path).suffix.lower())


def list_inputs(spec: str, forced_format: str | None) -> list[InputFile]:
    """A file, a directory of files or a glob -> the input files, sorted by path. A file's
    format is forced_format, else its extension's; anything else is read as CSV."""
    if spec == STDIN:
        return [InputFile(STDIN, "csv")]
    if glob.escape(spec) != spec:  # it holds * ? or [
        paths = sorted(path for path in glob.glob(spec) if os.path.isfile(path))
        if not paths:
            raise Unusable(f"no file matches --input {spec!r}")
    elif os.path.isdir(spec):
        paths = sorted(
            entry.path
            for entry in os.scandir(spec)
            if entry.is_file() and not entry.name.startswith(_SKIPPED_PREFIXES)
        )
        if not paths:
            raise Unusable(f"the --input directory {spec} holds no files")
    else:
        paths = [spec]  # a missing file fails when it is opened, naming it
    files = [InputFile(path, forced_format or format_from_name(path) or "csv") for path in paths]
    if len({file.format for file in files}) > 1:
        raise Unusable(
            f"--input {spec} mixes CSV and Parquet files; score each format in its own run"
        )
    return files


def row_range(rows: int, shard: Shard) -> tuple[int, int]:
    return rows * shard.index // shard.count, rows * (shard.index + 1) // shard.count


def plan(
    files: list[InputFile], shard: Shard, count_rows: Callable[[InputFile], int]
) -> list[Slice]:
    """This shard's slices. count_rows is called only to split one file between shards."""
    if len(files) > 1:
        return [Slice(file) for file in files[shard.index :: shard.count]]
    if shard.count == 1:
        return [Slice(files[0])]
    return [Slice(files[0], *row_range(count_rows(files[0]), shard))]
