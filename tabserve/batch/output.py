"""A shard's output: its part and its manifest, each replaced whole or not at all.

The part is written to a hidden temporary name in the same directory (`.<part>.partial`, which
readers of the directory and `*.csv` globs skip), synced to disk, then renamed over the old
part. The manifest is written last, the same way: the previous one is removed before the rename,
so a part whose manifest names its checksum is complete. A re-run replaces its own two files and
touches nothing else; a failed run leaves the previous ones as they were.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from tabserve.batch.shards import Shard


def part_path(output: str, shard: Shard, format: str) -> Path:
    """One shard of one: the output file itself, unless it is a directory. Several shards: a
    directory of parts, named part-<index>-of-<count>.<format>."""
    path = Path(output)
    if shard.count == 1 and not path.is_dir():
        return path
    path.mkdir(parents=True, exist_ok=True)  # every shard may get here first
    return path / f"{shard.part_name}.{format}"


def manifest_path(part: Path) -> Path:
    # `_` first: pyarrow and Spark skip such files when they read the directory as a data set.
    return part.with_name(f"_{part.name}.manifest.json")


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def partial_file(path: Path) -> Iterator[BinaryIO]:
    """The temporary file `path` is written to, on disk when the block ends; removed if the
    block fails."""
    partial = _partial(path)
    try:
        with partial.open("wb") as sink:
            yield sink
            sink.flush()
            os.fsync(sink.fileno())
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def commit(part: Path, manifest: dict[str, Any]) -> None:
    """The part written by partial_file becomes `part`, then its manifest is written, with the
    part's size and SHA-256 added to manifest["output"]."""
    written = _partial(part)
    manifest["output"].update(bytes=written.stat().st_size, sha256=sha256(written))
    manifest_file = manifest_path(part)
    manifest_file.unlink(missing_ok=True)  # until the new one exists, the part is not complete
    written.replace(part)
    with partial_file(manifest_file) as sink:
        sink.write(json.dumps(manifest, indent=2).encode() + b"\n")
    _partial(manifest_file).replace(manifest_file)
    _sync_directory(part.parent)  # and the renames themselves
