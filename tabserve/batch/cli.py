"""Score CSV or Parquet files offline with one model: the online path's schema and models.

    python -m tabserve.batch --model churn --input in.csv --output out.csv
    python -m tabserve.batch --model churn --input 'in/*.parquet' --output scored/ \\
        --shard-index 0 --shard-count 4            # one of four processes or pods

The columns named like the model's features are read (others are copied through untouched); each
value is checked by the model's request schema, as the online routes do (an empty CSV cell or a
Parquet null is "not given"). Valid rows are scored in chunks by `LoadedModel`, the runner's own
model code, loaded from the BentoML model store. Every input row gives exactly one output row, in
input order: the input columns, then `predicted_label` and `probability_<class>` for each class
(with --explain, each feature's contribution to the margin and the base value: see
scoring.explanation_columns), or an `error` naming the row (its line in a CSV, its row in a
Parquet file), each bad field and why (a CSV line that is not valid UTF-8 is such a row too).
CSV text cells a spreadsheet would run as a formula (starting with = + - @, tab or carriage
return, and not a number) are written with a leading `'` unless --no-escape-formulas is given.

Sharding: --shard-count processes (or the pods of a Kubernetes Indexed Job) each score their own
share: the files of a directory or glob dealt round-robin by sorted path, or contiguous row ranges
of a single file. With one shard --output is the output file; with several it is a directory
holding one part per shard, part-<index>-of-<count>.<csv|parquet>. Each part appears only when its
shard finishes (written to a temporary name, synced, renamed), with a manifest next to it,
_<part>.manifest.json: rows in and out, invalid rows, the model tag, the input files and row
ranges, the part's SHA-256. A re-run of a shard replaces only its own part and manifest.

Formats: --input-format, else the file extension (.parquet or .pq: Parquet, anything else: CSV);
--output-format, else the output's extension, else the input's format. `-` reads CSV from stdin or
writes CSV to stdout (one shard only; no manifest).

Exit codes:
  0  every row was scored, or no more than --max-invalid rows of this shard failed validation
  1  more than --max-invalid rows failed validation (they are still written, with their errors)
  2  nothing written, and a retry would fail the same way: bad arguments, unreadable or malformed
     input, a required feature column missing, or the model not in the store
  3  nothing written, for a reason a retry may not meet again: an I/O error, a crash
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

import bentoml
import pyarrow as pa
from bentoml.exceptions import NotFound
from tqdm import tqdm

from tabserve.batch import formats, output, scoring, shards
from tabserve.batch.formats import Table
from tabserve.batch.scoring import Unusable
from tabserve.batch.shards import STDIN, InputFile, Shard, Slice
from tabserve.catalog import MODELS, ModelSpec
from tabserve.cli import program_name
from tabserve.inference import LoadedModel
from tabserve.settings import get_settings

EXIT_OK = 0
EXIT_INVALID_ROWS = 1
EXIT_UNUSABLE = 2
EXIT_FAILED = 3
ERRORS_SHOWN = 10  # invalid rows listed on stderr; all of them are in the output
# Kubernetes sets the index in each pod of an Indexed Job; it does not tell the pod the count,
# so the chart passes it (helm/tabserve/templates/batch.yaml).
INDEX_VARIABLE = "JOB_COMPLETION_INDEX"
COUNT_VARIABLE = "TABSERVE_BATCH_SHARD_COUNT"
# Errors that would repeat on a retry (exit 2); any other OSError may be the volume's (exit 3).
_LASTING_OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
                      FileExistsError)  # fmt: skip
_BAD_DATA = (Unusable, csv.Error, pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)


@dataclass
class Summary:
    scored: int = 0
    invalid: int = 0
    inputs: list[dict[str, Any]] = field(default_factory=list)  # per slice, for the manifest

    @property
    def rows(self) -> int:
        return self.scored + self.invalid


def load_model(spec: ModelSpec, tag: str, threads: int) -> LoadedModel:
    try:
        stored = bentoml.models.get(tag)
    except NotFound:
        raise Unusable(
            f"model {tag!r} is not in the model store; train it: python train.py"
        ) from None
    return LoadedModel(spec, stored, threads)


def _tables(slices: list[Slice], batch_rows: int, labelled: bool) -> Iterator[Table]:
    """Each slice opened in turn, and closed before the next one opens."""
    for piece in slices:
        label = piece.file.path if labelled else ""
        with formats.open_slice(piece, batch_rows, label) as table:
            yield table


def _score_table(
    model: LoadedModel, table: Table, write: formats.Write, args: argparse.Namespace,
    summary: Summary, progress: tqdm,
) -> int:  # fmt: skip
    """Predictions and writes the table's rows; returns how many there were."""
    rows, spec, width = 0, model.spec, len(table.columns.names)
    records = scoring.records(spec, table.columns.names, table.rows)
    for chunk in scoring.chunks(records, args.chunk_size):
        write(scoring.score(model, chunk, width, args.explain))
        for record in chunk:
            if not isinstance(record.parsed, str):
                summary.scored += 1
                continue
            summary.invalid += 1
            if summary.invalid <= ERRORS_SHOWN:
                tqdm.write(f"invalid: {record.where}: {record.parsed}", file=sys.stderr)
        rows += len(chunk)
        progress.update(len(chunk))
    return rows


def score_slices(
    model: LoadedModel, files: list[InputFile], slices: list[Slice], sink: BinaryIO,
    out_format: str, args: argparse.Namespace,
) -> Summary:  # fmt: skip
    """Every slice's rows into one output. Every input file must have the same columns, so that
    every shard's part has the same columns, even a shard given no file."""
    summary = Summary()
    ranged = [piece.stop - piece.start for piece in slices if piece.stop is not None]
    total = sum(ranged) if len(ranged) == len(slices) and slices else None
    description = f"{model.spec.name} {args.shard_index + 1}/{args.shard_count}"
    with (
        closing(_tables(slices, args.chunk_size, labelled=len(files) > 1)) as tables,
        tqdm(total=total, unit="rows", desc=description, file=sys.stderr, disable=None) as bar,
    ):
        first = next(tables, None)
        # stdin cannot be read twice: its columns are those of the one table it is.
        reference = first.columns if first and files[0].path == STDIN else formats.columns_of(files)
        scoring.check_header(model.spec, reference.names)
        names = scoring.output_columns(model.spec, reference.names, args.explain)
        with formats.open_sink(out_format, sink, reference, names, args.escape_formulas) as write:
            opened = itertools.chain([first], tables) if first else iter(())
            for piece, table in zip(slices, opened, strict=True):
                if table.columns.names != reference.names:
                    raise formats.different_columns(piece.file, files[0])
                rows = _score_table(model, table, write, args, summary, bar)
                summary.inputs.append(
                    {"path": piece.file.path, "first_row": piece.start, "rows": rows}
                )
    return summary


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _exit_code(summary: Summary, max_invalid: int) -> int:
    return EXIT_INVALID_ROWS if summary.invalid > max_invalid else EXIT_OK


def run(args: argparse.Namespace) -> int:
    started = _now()
    shard = Shard(args.shard_index, args.shard_count)
    spec = MODELS[args.model]
    model = load_model(spec, args.tag or get_settings().tag_for(spec.name), args.threads)
    files = shards.list_inputs(args.input, args.input_format)
    slices = shards.plan(files, shard, formats.count_rows)
    if args.output == STDIN:
        summary = score_slices(model, files, slices, sys.stdout.buffer, "csv", args)
        sys.stdout.buffer.flush()
        target = "stdout"
    else:
        out_format = args.output_format or shards.format_from_name(args.output) or files[0].format
        part = output.part_path(args.output, shard, out_format)
        with output.partial_file(part) as sink:
            summary = score_slices(model, files, slices, sink, out_format, args)
        manifest = {
            "shard": {"index": shard.index, "count": shard.count},
            "model": {"name": spec.name, "tag": str(model.info.tag)},
            "inputs": summary.inputs,
            "output": {"file": part.name, "format": out_format},  # commit adds its checksum
            "rows": {"in": summary.rows, "out": summary.rows, "invalid": summary.invalid},
            "exit_code": _exit_code(summary, args.max_invalid),
            "started": started,
            "finished": _now(),
        }
        output.commit(part, manifest)
        target = str(part)
    print(
        f"{summary.scored} rows scored, {summary.invalid} invalid (see the error column) "
        f"-> {target} [{model.info.tag}]",
        file=sys.stderr,
    )
    return _exit_code(summary, args.max_invalid)


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, as ArgumentDefaultsHelpFormatter does, except "None"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, argparse.SUPPRESS) and "%(default)" not in text
        if action.option_strings and shown:
            text += " (default: %(default)s)"
        return text


def _parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        prog=program_name("tabserve.batch"),
        description=doc[: doc.index("Exit codes:")],
        epilog=doc[doc.index("Exit codes:") :],
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--model", required=True, choices=sorted(MODELS))
    parser.add_argument(
        "--input",
        required=True,
        help="a CSV or Parquet file, a directory of them, a glob (quote it), or - for CSV on stdin",
    )
    parser.add_argument(
        "--output",
        required=True,
        help="the output file, or with several shards the directory of parts; - for CSV on stdout",
    )
    parser.add_argument("--input-format", choices=shards.FORMATS, help="default: by extension")
    parser.add_argument(
        "--output-format",
        choices=shards.FORMATS,
        help="default: by the output's extension, else the input's format",
    )
    parser.add_argument(
        "--shard-index",
        type=_whole_number,
        default=os.environ.get(INDEX_VARIABLE, "0"),
        help=f"this shard, counted from 0; ${INDEX_VARIABLE} when set (Kubernetes sets it in "
        "each pod of an Indexed Job)",
    )
    parser.add_argument(
        "--shard-count",
        type=_whole_number,
        default=os.environ.get(COUNT_VARIABLE, "1"),
        help=f"shards scoring the input together; ${COUNT_VARIABLE} when set (the chart sets it)",
    )
    parser.add_argument("--tag", help="model store tag; default: the served one, <model>:latest")
    parser.add_argument(
        "--chunk-size", type=_whole_number, default=1000, help="rows per model call"
    )
    parser.add_argument(
        "--max-invalid",
        type=_whole_number,
        default=0,
        help="invalid rows (in this shard) tolerated before the exit code is 1",
    )
    parser.add_argument(
        "--threads", type=_whole_number, default=get_settings().model_threads,
        help="XGBoost threads",
    )  # fmt: skip
    parser.add_argument(
        "--explain",
        action="store_true",
        help="add each feature's contribution and the base value per explained class (binary: "
        "the second class): they sum to the model's log-odds, or to the probability for a model "
        "with no margin (a single decision tree)",
    )
    parser.add_argument(
        "--escape-formulas",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="prefix CSV text cells starting with = + - @ (not numbers) with ' so spreadsheets "
        "show them instead of running them",
    )
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What argparse cannot check alone; each message names the option."""
    if args.shard_count < 1:
        parser.error(f"--shard-count must be at least 1, not {args.shard_count}")
    if not 0 <= args.shard_index < args.shard_count:
        parser.error(
            f"--shard-index must be from 0 to {args.shard_count - 1} (--shard-count "
            f"{args.shard_count}), not {args.shard_index}"
        )
    for option in ("chunk_size", "threads"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    if args.max_invalid < 0:
        parser.error("--max-invalid must be 0 or more")
    for option, stream in (("input", "stdin"), ("output", "stdout")):
        if getattr(args, option) != STDIN:
            continue
        if args.shard_count > 1:
            parser.error(
                f"--{option} -: {stream} cannot be sharded (--shard-count is {args.shard_count})"
            )
        if getattr(args, f"{option}_format") not in (None, "csv"):
            parser.error(f"--{option}-format: {stream} is CSV only")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        _check(parser, args)
    except SystemExit as exit:  # --help (0), or a bad argument (2), already explained
        return exit.code if isinstance(exit.code, int) else EXIT_UNUSABLE
    try:
        return run(args)
    except _BAD_DATA + _LASTING_OS_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_UNUSABLE
    except Exception:
        traceback.print_exc()
        return EXIT_FAILED
