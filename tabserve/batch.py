"""Score a CSV file offline with one model: the online path's schema and model code, no server.

    python -m tabserve.batch --model churn --input in.csv --output out.csv

The columns named like the model's features are read (others are copied through untouched); each
cell is parsed by its feature's kind and checked by the model's request schema, as the
query-string route does (an empty cell is "not given"). Valid rows are scored in chunks by
`LoadedModel`, the runner's own model code, loaded from the BentoML model store. Every input row
gives exactly one output row: the input columns, then `predicted_label` and `probability_<class>`
for each class, or an `error` naming the row's line, each bad field and why. The output appears
only when the run finishes (it is written to `<output>.partial` first).

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


def _parse(spec: ModelSpec, header: list[str], cells: list[str]) -> Row | str:
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


def score_file(
    model: LoadedModel, source: TextIO, sink: TextIO, chunk_size: int, progress: tqdm
) -> Summary:
    reader = csv.reader(source)
    header = next(reader, None)
    if header is None:
        raise Unusable("the input is empty: a header row naming the columns is needed")
    spec = model.spec
    _check_header(spec, header)
    writer = csv.writer(sink)
    writer.writerow(_output_columns(spec, header))
    summary = Summary()
    for chunk in _chunks(_records(reader, spec, header), chunk_size):
        for record, out in zip(chunk, _score(model, chunk, len(header)), strict=True):
            writer.writerow(out)
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
    args = parser.parse_args(argv)
    if args.chunk_size < 1 or args.max_invalid < 0 or args.threads < 1:
        parser.error("--chunk-size and --threads must be >= 1, --max-invalid >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    spec = MODELS[args.model]
    partial = args.output.with_name(args.output.name + ".partial")
    try:
        model = load_model(spec, args.tag or get_settings().tag_for(spec.name), args.threads)
        size = args.input.stat().st_size
        with (
            args.input.open(newline="", encoding="utf-8-sig") as source,
            partial.open("w", newline="", encoding="utf-8") as sink,
            tqdm(total=size, unit="B", unit_scale=True, desc=spec.name, file=sys.stderr) as bar,
        ):
            summary = score_file(model, source, sink, args.chunk_size, bar)
    except (Unusable, OSError, UnicodeDecodeError, csv.Error) as error:
        partial.unlink(missing_ok=True)
        print(f"error: {error}", file=sys.stderr)
        return EXIT_UNUSABLE
    partial.replace(args.output)
    print(
        f"{summary.scored} rows scored, {summary.invalid} invalid (see the error column) "
        f"-> {args.output} [{model.info.tag}]",
        file=sys.stderr,
    )
    return EXIT_INVALID_ROWS if summary.invalid > args.max_invalid else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
