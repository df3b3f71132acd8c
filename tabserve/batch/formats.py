"""CSV and Parquet: a slice of an input file as rows of cells, and scored rows written out.

CSV is streamed record by record (the stdlib parser), Parquet batch by batch (pyarrow): memory
stays bounded by the chunk size whatever the file's size.
"""

from __future__ import annotations

import csv
import io
import itertools
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, TextIO

import pyarrow as pa
import pyarrow.parquet as pq

from tabserve.batch.scoring import Unusable, defuse_formula, is_utf8
from tabserve.batch.shards import STDIN, InputFile, Slice

# Scored rows are buffered up to this many before a Parquet row group is written: a group per
# model chunk (1000 rows) would make files that are slow to read.
PARQUET_ROW_GROUP_ROWS = 64 * 1024

Rows = Iterator[tuple[str, list[Any]]]  # (where the row is, for errors; its cells)
Write = Callable[[list[list[Any]]], None]


@dataclass
class Columns:
    names: list[str]
    # Parquet: each column's type, kept in a Parquet output. CSV: None, every cell is text.
    types: list[pa.DataType] | None = None


@dataclass
class Table:
    columns: Columns
    rows: Rows


@contextmanager
def _csv_text(path: str) -> Iterator[TextIO]:
    # A line that is not UTF-8 is a bad row, not the end of the run (see scoring.is_utf8).
    if path != STDIN:
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as text:
            yield text
        return
    text = io.TextIOWrapper(
        sys.stdin.buffer, encoding="utf-8-sig", errors="surrogateescape", newline=""
    )
    try:
        yield text
    finally:
        text.detach()  # leave sys.stdin open


def _csv_header(reader: Iterator[list[str]]) -> list[str]:
    header = next(reader, None)
    if header is None:
        raise Unusable("the input is empty: a header row naming the columns is needed")
    if not is_utf8(header):
        raise Unusable("the header (line 1) is not valid UTF-8 text")
    return header


def columns_of(files: list[InputFile]) -> Columns:
    """The columns every part gets, read from headers and footers only: the first CSV file's
    header (each file's is checked as it is read), or every Parquet file's schema, the column
    types reconciled (a column of integers in one file and floats in another is float64)."""
    if files[0].format == "csv":
        with _csv_text(files[0].path) as text:
            return Columns(_csv_header(csv.reader(text)))
    schemas = [pq.read_schema(file.path) for file in files]
    for file, schema in zip(files, schemas, strict=True):
        if schema.names != schemas[0].names:
            raise different_columns(file, files[0])
    try:
        schema = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise Unusable(f"the Parquet files' column types do not agree: {error}") from None
    return Columns(schema.names, list(schema.types))


def different_columns(file: InputFile, first: InputFile) -> Unusable:
    return Unusable(
        f"{file.path} has other columns than {first.path}; every input file needs the same ones"
    )


def count_rows(file: InputFile) -> int:
    """Data rows in the file. Parquet: from its footer. CSV: one pass of the C parser over the
    records (no validation, constant memory; a few percent of the scoring time)."""
    if file.format == "parquet":
        return pq.ParquetFile(file.path).metadata.num_rows
    with _csv_text(file.path) as text:
        return max(sum(1 for _ in csv.reader(text)) - 1, 0)


def _csv_rows(reader: Any, start: int, stop: int | None) -> Rows:
    for _ in itertools.islice(reader, start):  # parsed, not validated: cheap
        pass
    line = reader.line_num + 1
    for cells in itertools.islice(reader, None if stop is None else stop - start):
        yield f"line {line}", cells
        line = reader.line_num + 1


def _parquet_rows(file: pq.ParquetFile, start: int, stop: int | None, batch_rows: int) -> Rows:
    """Only the row groups that overlap [start, stop) are read."""
    stop = file.metadata.num_rows if stop is None else stop
    groups, first, offset = [], None, 0
    for group in range(file.metadata.num_row_groups):
        size = file.metadata.row_group(group).num_rows
        if offset < stop and offset + size > start:
            groups.append(group)
            first = offset if first is None else first
        offset += size
    if not groups:
        return
    row = first
    for batch in file.iter_batches(batch_size=batch_rows, row_groups=groups):
        low, high = max(start - row, 0), min(stop - row, batch.num_rows)
        if high > low:
            columns = [column.to_pylist() for column in batch.slice(low, high - low).columns]
            for number, cells in enumerate(zip(*columns, strict=True), row + low + 1):
                yield f"row {number}", list(cells)
        row += batch.num_rows


@contextmanager
def open_slice(piece: Slice, batch_rows: int, label: str = "") -> Iterator[Table]:
    """The slice's rows; `label` (the file's path, when there are several) prefixes their
    positions in errors."""

    def labelled(rows: Rows) -> Rows:
        return ((f"{label} {where}" if label else where, cells) for where, cells in rows)

    if piece.file.format == "parquet":
        with pq.ParquetFile(piece.file.path) as file:
            schema = file.schema_arrow
            rows = _parquet_rows(file, piece.start, piece.stop, batch_rows)
            yield Table(Columns(schema.names, list(schema.types)), labelled(rows))
        return
    with _csv_text(piece.file.path) as text:
        reader = csv.reader(text)
        header = _csv_header(reader)
        yield Table(Columns(header), labelled(_csv_rows(reader, piece.start, piece.stop)))


@contextmanager
def _csv_sink(sink: BinaryIO, columns: list[str], escape_formulas: bool) -> Iterator[Write]:
    # Undecodable input bytes were replaced already; "replace" is a last guard, not a path.
    text = io.TextIOWrapper(sink, encoding="utf-8", errors="replace", newline="")
    writer = csv.writer(text)

    def write(rows: list[list[Any]]) -> None:
        if escape_formulas:
            rows = [[defuse_formula(cell) for cell in row] for row in rows]
        writer.writerows(rows)

    try:
        write([columns])
        yield write
    finally:
        text.flush()
        text.detach()  # the caller syncs and closes the file


@contextmanager
def _parquet_sink(sink: BinaryIO, schema: pa.Schema) -> Iterator[Write]:
    batches: list[pa.RecordBatch] = []

    def flush() -> None:
        writer.write_table(pa.Table.from_batches(batches, schema), PARQUET_ROW_GROUP_ROWS)
        batches.clear()

    def write(rows: list[list[Any]]) -> None:
        arrays = [
            pa.array(values, type=field.type)
            for values, field in zip(zip(*rows, strict=True), schema, strict=True)
        ]
        batches.append(pa.RecordBatch.from_arrays(arrays, schema=schema))
        if sum(batch.num_rows for batch in batches) >= PARQUET_ROW_GROUP_ROWS:
            flush()

    with pq.ParquetWriter(sink, schema) as writer:
        yield write
        if batches:
            flush()


def open_sink(
    format: str, sink: BinaryIO, columns: Columns, names: list[str], escape_formulas: bool
) -> AbstractContextManager[Write]:
    """Writes scored rows under `names` (the input's columns, the label, a probability per class,
    any contributions, the error). Parquet keeps the input's column types (text from a CSV
    input); the label and error are text, the probabilities and contributions float64.
    Spreadsheets open CSV, so only CSV cells are defused (see scoring.defuse_formula); Parquet
    keeps the values as they came."""
    if format == "csv":
        return _csv_sink(sink, names, escape_formulas)
    given = columns.types or [pa.string()] * len(columns.names)
    numbers = len(names) - len(given) - 2
    types = [*given, pa.string(), *([pa.float64()] * numbers), pa.string()]
    return _parquet_sink(sink, pa.schema(list(zip(names, types, strict=True))))
