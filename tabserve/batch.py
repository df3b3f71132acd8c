"""Score a CSV file offline with one model: the online path's schema and model code, no server.

    python -m tabserve.batch --model churn --input in.csv --output out.csv

The columns named like the model's features are read (others are copied through untouched); each
cell is parsed by its feature's kind and checked by the model's request schema, as the
query-string route does (an empty cell is "not given"). Valid rows are scored in chunks by
`LoadedModel`, the runner's own model code, loaded from the BentoML model store. Every input row
gives exactly one output row: the input columns, then `predicted_label` and `probability_<class>`
for each class, or an `error` naming the row's line, each bad field and why (a line that is not
valid UTF-8 is such a row too). The output appears only when the run finishes: it is written to
`<output>.partial`, synced to disk, then renamed. Text cells a spreadsheet would run as a formula
(starting with = + - @, tab or carriage return, and not a number) are written with a leading `'`
unless --no-escape-formulas is given.

Exit codes:
  0  every row was scored, or no more than --max-invalid rows failed validation
  1  more than --max-invalid rows failed validation (they are still written, with their errors)
  2  nothing usable was written: bad arguments, unreadable or malformed CSV, a required feature
     column missing, or the model not in the store
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

import bentoml
import numpy as np
from bentoml.exceptions import NotFound
from tqdm import tqdm

from tabserve.catalog import MODELS, ModelSpec
from tabserve.errors import InvalidInput
from tabserve.inference import LoadedModel
from tabserve.instances import instance_from_text, validate_instances
from tabserve.schemas import Row
from tabserve.settings import get_settings

EXIT_OK = 0
EXIT_INVALID_ROWS = 1
EXIT_UNUSABLE = 2
ERRORS_SHOWN = 10  # invalid rows listed on stderr; all of them are in the output file
# What makes Excel, LibreOffice and Google Sheets read a cell as a formula (OWASP's CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_INSTANCE_PREFIX = "instances[0]."


class Unusable(Exception):
    """The run cannot produce a trustworthy output file (exit code 2)."""


@dataclass
class Record:
    line: int  # where the record starts in the input file (the header is line 1)
    cells: list[str]
    parsed: Row | str  # a valid row, or why it is not one


@dataclass
class Summary:
    scored: int = 0
    invalid: int = 0


def _output_columns(spec: ModelSpec, header: list[str]) -> list[str]:
    added = ["predicted_label", *(f"probability_{name}" for name in spec.class_names), "error"]
    clashing = sorted(set(header) & set(added))
    if clashing:
        raise Unusable(f"the input already has the output columns {clashing}; rename them")
    return header + added


def _check_header(spec: ModelSpec, header: list[str]) -> None:
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise Unusable(f"columns named more than once: {', '.join(duplicated)}")
    missing = [f.name for f in spec.features if f.required and f.name not in header]
    if missing:
        raise Unusable(f"the input lacks the feature columns {', '.join(missing)}")
    unused = [name for name in header if name not in spec.feature_names]
    absent = [f.name for f in spec.features if not f.required and f.name not in header]
    if unused:
        tqdm.write(f"copied through, not used by {spec.name}: {', '.join(unused)}", file=sys.stderr)
    if absent:
        tqdm.write(
            f"optional features not in the input (imputed): {', '.join(absent)}", file=sys.stderr
        )


def _is_utf8(cells: list[str]) -> bool:
    """The input is read with errors="surrogateescape": a byte that is not UTF-8 becomes a lone
    surrogate, which cannot be encoded back."""
    try:
        "".join(cells).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse(spec: ModelSpec, header: list[str], cells: list[str]) -> Row | str:
    if not _is_utf8(cells):
        return "the line is not valid UTF-8 text"
    if len(cells) != len(header):
        return f"the row has {len(cells)} values; the header has {len(header)}"
    features = set(spec.feature_names)
    named = {name: cell for name, cell in zip(header, cells, strict=True) if name in features}
    try:
        return validate_instances(spec.name, [instance_from_text(spec.name, named)])[0]
    except InvalidInput as error:
        return "; ".join(
            f"{detail.field.removeprefix(_INSTANCE_PREFIX)}: {detail.reason}"
            for detail in error.details
        )


def _records(reader: Iterator[list[str]], spec: ModelSpec, header: list[str]) -> Iterator[Record]:
    start = 2
    for cells in reader:
        yield Record(start, cells, _parse(spec, header, cells))
        start = reader.line_num + 1  # type: ignore[attr-defined]


def _chunks(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _score(model: LoadedModel, chunk: list[Record], width: int) -> Iterator[list[Any]]:
    """One output row per record, in input order."""
    valid = [record.parsed for record in chunk if not isinstance(record.parsed, str)]
    probabilities = iter(model.predict_proba(valid) if valid else [])
    classes = model.spec.class_names
    for record in chunk:
        cells = (record.cells + [""] * width)[:width]  # short or long rows keep the header's shape
        if isinstance(record.parsed, str):
            yield [*cells, "", *([""] * len(classes)), f"line {record.line}: {record.parsed}"]
        else:
            row = np.asarray(next(probabilities), dtype=np.float64)
            yield [*cells, classes[int(row.argmax())], *row.tolist(), ""]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def defuse_formula(cell: Any) -> Any:
    """A text cell a spreadsheet would run (`=HYPERLINK(...)`, `@SUM(...)`, `-2+3`) gets a
    leading `'`, which spreadsheets show as text; numbers such as -5 stay numbers."""
    if isinstance(cell, str) and cell.startswith(FORMULA_STARTS) and not _is_number(cell):
        return f"'{cell}"
    return cell


def score_file(
    model: LoadedModel,
    source: TextIO,
    sink: TextIO,
    chunk_size: int,
    progress: tqdm,
    escape_formulas: bool = True,
) -> Summary:
    reader = csv.reader(source)
    header = next(reader, None)
    if header is None:
        raise Unusable("the input is empty: a header row naming the columns is needed")
    if not _is_utf8(header):
        raise Unusable("the header (line 1) is not valid UTF-8 text")
    spec = model.spec
    _check_header(spec, header)
    csv_writer = csv.writer(sink)

    def write(cells: list[Any]) -> None:
        csv_writer.writerow([defuse_formula(cell) for cell in cells] if escape_formulas else cells)

    write(_output_columns(spec, header))
    summary = Summary()
    for chunk in _chunks(_records(reader, spec, header), chunk_size):
        for record, out in zip(chunk, _score(model, chunk, len(header)), strict=True):
            write(out)
            if isinstance(record.parsed, str):
                summary.invalid += 1
                if summary.invalid <= ERRORS_SHOWN:
                    tqdm.write(f"invalid: line {record.line}: {record.parsed}", file=sys.stderr)
            else:
                summary.scored += 1
        progress.update(source.buffer.tell() - progress.n)  # type: ignore[attr-defined]
    return summary


def load_model(spec: ModelSpec, tag: str, threads: int) -> LoadedModel:
    try:
        stored = bentoml.models.get(tag)
    except NotFound:
        raise Unusable(
            f"model {tag!r} is not in the model store; train it: python train.py"
        ) from None
    return LoadedModel(spec, stored, threads)


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tabserve.batch",
        description=__doc__.splitlines()[0],
        epilog=__doc__[__doc__.index("Exit codes:") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, choices=sorted(MODELS))
    parser.add_argument("--input", required=True, type=Path, help="CSV with a header row")
    parser.add_argument("--output", required=True, type=Path, help="CSV to write")
    parser.add_argument("--tag", help="model store tag (default: the served one, <model>:latest)")
    parser.add_argument("--chunk-size", type=int, default=1000, help="rows per model call")
    parser.add_argument(
        "--max-invalid",
        type=int,
        default=0,
        help="invalid rows tolerated before the exit code is 1 (default 0)",
    )
    parser.add_argument(
        "--threads", type=int, default=get_settings().model_threads, help="XGBoost threads"
    )
    parser.add_argument(
        "--escape-formulas",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="prefix text cells starting with = + - @ (not numbers) with ' so spreadsheets "
        "show them instead of running them (default: on)",
    )
    args = parser.parse_args(argv)
    if args.chunk_size < 1 or args.max_invalid < 0 or args.threads < 1:
        parser.error("--chunk-size and --threads must be >= 1, --max-invalid >= 0")
    return args


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    spec = MODELS[args.model]
    partial = args.output.with_name(args.output.name + ".partial")
    try:
        model = load_model(spec, args.tag or get_settings().tag_for(spec.name), args.threads)
        size = args.input.stat().st_size
        with (
            # A line that is not UTF-8 is a bad row, not the end of the run (see _is_utf8); its
            # undecodable bytes are written back as "?".
            args.input.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as source,
            partial.open("w", newline="", encoding="utf-8", errors="replace") as sink,
            tqdm(total=size, unit="B", unit_scale=True, desc=spec.name, file=sys.stderr) as bar,
        ):
            summary = score_file(
                model, source, sink, args.chunk_size, bar, escape_formulas=args.escape_formulas
            )
            sink.flush()
            os.fsync(sink.fileno())  # on disk before the rename makes it the output
        partial.replace(args.output)
        _sync_directory(args.output.parent)  # and the rename itself
    except (Unusable, OSError, csv.Error) as error:
        partial.unlink(missing_ok=True)
        print(f"error: {error}", file=sys.stderr)
        return EXIT_UNUSABLE
    print(
        f"{summary.scored} rows scored, {summary.invalid} invalid (see the error column) "
        f"-> {args.output} [{model.info.tag}]",
        file=sys.stderr,
    )
    return EXIT_INVALID_ROWS if summary.invalid > args.max_invalid else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
