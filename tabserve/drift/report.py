"""`python -m tabserve.drift`: feature rows (CSV, or JSON Lines payload logs) against a stored
model's training reference: the PSI of every feature and of the score, as a table on stdout,
`drift.md` and `drift.csv`, and a PNG per drifted feature (reference vs observed, per bin).

Rows are validated as the V1 route validates them, scored by the stored model in this process,
and counted in the reference's bins chunk by chunk (memory bounded by a chunk, not the file).
Exit status: 0 no drift, 1 drift (a PSI over --threshold), 2 a bad file or argument.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tabserve.batch.scoring import chunks
from tabserve.catalog import MODELS, ModelSpec
from tabserve.cli import program_name
from tabserve.drift.monitor import DriftWindow
from tabserve.drift.reference import Binning, Reference
from tabserve.errors import ServingError
from tabserve.instances import instance_from_text, rows_from_instances
from tabserve.model_input import from_rows
from tabserve.settings import get_settings

# The usual PSI reading, as the alert rules use it: < 0.1 stable, 0.1-0.2 shifting, > 0.2 drift.
DRIFT_PSI = 0.2
SHIFTING_PSI = 0.1
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")
_INSTANCE_FIELD = re.compile(r"^instances\[(\d+)\]\.?")


class BadInput(Exception):
    """A file or record that cannot be compared: the message names where and why."""


@dataclass(frozen=True)
class Record:
    where: str  # "file:line", for errors
    instance: dict[str, Any]


def _csv_records(path: Path, model: str) -> Iterator[Record]:
    """A CSV with a header of feature names; an empty cell is a value not given."""
    with open(path, newline="", encoding="utf-8-sig") as text:
        reader = csv.DictReader(text)
        if not reader.fieldnames:
            raise BadInput(f"{path}: empty, expected a header line of feature names")
        for record in reader:
            if None in record:  # more cells than the header has names
                raise BadInput(f"{path}:{reader.line_num}: more cells than header names")
            cells = {name: text or "" for name, text in record.items()}
            yield Record(f"{path}:{reader.line_num}", instance_from_text(model, cells))


def _json_lines_records(path: Path, model: str) -> Iterator[Record]:
    """Payload log records ({"model", "version", "request_id", "inputs", "outputs"}, one per
    row) of `model`; records of other models are skipped."""
    with open(path, encoding="utf-8") as text:
        for number, line in enumerate(text, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise BadInput(f"{where}: not JSON ({error.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("inputs"), dict):
                raise BadInput(f'{where}: expected an object with an "inputs" object')
            if record.get("model", model) == model:
                yield Record(where, record["inputs"])


def records(path: Path, model: str) -> Iterator[Record]:
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    if path.suffix in JSON_LINES_SUFFIXES:
        return _json_lines_records(path, model)
    return _csv_records(path, model)


def _validated(model: str, chunk: list[Record]) -> list[tuple[Any, ...]]:
    """Rows of a chunk, checked as the V1 route checks them; the first problem names its line."""
    try:
        return rows_from_instances(model, [record.instance for record in chunk])
    except ServingError as error:
        if not error.details:
            raise BadInput(f"{chunk[0].where}..: {error.message}") from None
        detail = error.details[0]
        found = _INSTANCE_FIELD.match(detail.field)
        where = chunk[int(found.group(1))].where if found else chunk[0].where
        field = detail.field[found.end() :] if found else detail.field
        raise BadInput(f"{where}: {field or 'row'}: {detail.reason}") from None


def compare(spec: ModelSpec, tag: str, path: Path) -> DriftWindow:
    """Every row of the file of `spec`'s model, counted in the reference's bins of `tag`."""
    import bentoml  # here: `--help` and argument errors need no model store

    from tabserve.inference import LoadedModel

    try:
        stored = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        raise BadInput(f"{tag}: no such model in the store (bentoml models list)") from None
    reference = Reference.of_model(stored.info.metadata)
    if reference is None:
        raise BadInput(f"{tag}: trained before drift references existed; retrain it")
    model = LoadedModel(spec, stored, threads=1)
    # A window that never moves: the whole file is the sample.
    window = DriftWindow(spec, reference, window_rows=sys.maxsize)
    for chunk in chunks(records(path, spec.name), get_settings().max_instances):
        rows = from_rows(spec, _validated(spec.name, chunk))
        probabilities = model.predict_proba(rows)
        window.add(rows, probabilities, probabilities.argmax(axis=1))
    if not window.rows:
        raise BadInput(f"{path}: no rows of model {spec.name}")
    return window


# --- the report ---------------------------------------------------------------------------------
def status(value: float, threshold: float) -> str:
    if value > threshold:
        return "drift"
    return "shifting" if value > SHIFTING_PSI else "stable"


def _plot(name: str, binning: Binning, counts: np.ndarray, value: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot

    bins = np.arange(binning.bins)
    figure, axes = pyplot.subplots(figsize=(max(6, binning.bins * 0.7), 4))
    axes.bar(bins - 0.2, binning.fractions, width=0.4, label="training")
    axes.bar(bins + 0.2, counts / counts.sum(), width=0.4, label="observed")
    axes.set_xticks(bins, binning.labels(), rotation=30, ha="right", fontsize=8)
    axes.set_ylabel("share of rows")
    axes.set_title(f"{name}: PSI {value:.3f}")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    pyplot.close(figure)


def write_report(window: DriftWindow, tag: str, out: Path, threshold: float) -> list[str]:
    """The table on stdout, drift.md, drift.csv and the plots; returns the drifted names."""
    out.mkdir(parents=True, exist_ok=True)
    values = window.psi()
    counts = window.counts()
    binnings = window.binnings()
    table = [(name, value, status(value, threshold)) for name, value in values.items()]
    width = max(len(name) for name in values)
    print(f"{tag}: {window.rows} rows")
    print(f"{'feature':<{width}}  {'PSI':>7}  status")
    for name, value, state in table:
        print(f"{name:<{width}}  {value:7.4f}  {state}")
    with open(out / "drift.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["feature", "psi", "status"])
        writer.writerows([name, f"{value:.6f}", state] for name, value, state in table)
    lines = [f"# Drift of {tag}", "", f"{window.rows} rows; PSI over {threshold:g} = drift.", ""]
    lines += ["| feature | PSI | status |", "|---|---:|---|"]
    lines += [f"| {name} | {value:.4f} | {state} |" for name, value, state in table]
    drifted = [name for name, _, state in table if state == "drift"]
    for name in drifted:
        _plot(name, binnings[name], counts[name], values[name], out / f"{name}.png")
        lines += ["", f"![{name}]({name}.png)"]
    (out / "drift.md").write_text("\n".join(lines) + "\n")
    return drifted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=program_name("tabserve.drift"),
        description="Compare feature rows with a stored model's training distribution: the "
        "Population Stability Index of every feature and of the model's score. Exit status: "
        "0 no drift, 1 drift, 2 a bad file or argument.",
    )
    parser.add_argument("model", choices=MODELS, help="the model the rows are for")
    parser.add_argument(
        "file",
        type=Path,
        help="a CSV with a header of feature names, or JSON Lines payload logs "
        f'({", ".join(JSON_LINES_SUFFIXES)}; one {{"model", "inputs", ...}} per row)',
    )
    parser.add_argument("--tag", help="the stored model (default: as the service resolves it)")
    parser.add_argument("--out", type=Path, default=Path("drift-report"), help="report folder")
    parser.add_argument(
        "--threshold", type=float, default=DRIFT_PSI, help="PSI above which a feature drifted"
    )
    args = parser.parse_args(argv)
    spec = MODELS[args.model]
    tag = args.tag or get_settings().tag_for(spec.name)
    try:
        window = compare(spec, tag, args.file)
    except (BadInput, OSError, UnicodeDecodeError, csv.Error) as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return 2
    try:
        drifted = write_report(window, tag, args.out, args.threshold)
    except ModuleNotFoundError as error:  # matplotlib: a dev dependency, not the service's
        print(
            f"{parser.prog}: the plots need {error.name}: pip install {error.name}", file=sys.stderr
        )
        return 2
    print(f"report: {args.out / 'drift.md'}" + (f"; drifted: {', '.join(drifted)}" * bool(drifted)))
    return 1 if drifted else 0
