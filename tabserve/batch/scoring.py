"""Rows of cells -> validated rows -> one output row each: the prediction, or why there is none.

Cells are text (a CSV record) or typed values (a Parquet row). Text follows the query string's
rules (an empty cell is "not given"); a typed value is loosened as TabPy's are (8.0 -> 8, 0/1 ->
a boolean) and a null is "not given". Either way the model's request schema checks the row, as
the online routes do.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from tabserve.catalog import ModelSpec
from tabserve.errors import InvalidInput
from tabserve.explanations import explained_classes
from tabserve.inference import LoadedModel
from tabserve.instances import as_feature_type, instance_from_text, rows_from_instances
from tabserve.schemas import Row

# What makes Excel, LibreOffice and Google Sheets read a cell as a formula (OWASP's CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_INSTANCE_PREFIX = "instances[0]."


class Unusable(Exception):
    """The run cannot produce a trustworthy output: the same input would fail again (exit 2)."""


@dataclass
class Record:
    where: str  # how an error names the row: "line 10" (CSV, header = line 1), "row 9" (Parquet)
    cells: list[Any]
    parsed: Row | str  # a valid row, or why it is not one


def explanation_columns(spec: ModelSpec) -> list[str]:
    """Per explained class, each feature's contribution then the base value (explanations.py's
    layout): `contribution_<feature>`, `base_value` for a binary model's one explained class;
    `contribution_<class>_<feature>`, `base_value_<class>` for each class of a multi-class one."""
    classes = explained_classes(spec)
    suffixes = [""] if len(classes) == 1 else [f"_{name}" for name in classes]
    return [
        name
        for suffix in suffixes
        for name in (
            *(f"contribution{suffix}_{feature}" for feature in spec.feature_names),
            f"base_value{suffix}",
        )
    ]


def output_columns(spec: ModelSpec, header: list[str], explain: bool) -> list[str]:
    added = [
        "predicted_label",
        *(f"probability_{name}" for name in spec.class_names),
        *(explanation_columns(spec) if explain else []),
        "error",
    ]
    clashing = sorted(set(header) & set(added))
    if clashing:
        raise Unusable(f"the input already has the output columns {clashing}; rename them")
    return header + added


def check_header(spec: ModelSpec, header: list[str]) -> None:
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


def is_utf8(cells: list[Any]) -> bool:
    """CSV is read with errors="surrogateescape": a byte that is not UTF-8 becomes a lone
    surrogate, which cannot be encoded back."""
    try:
        "".join(cell for cell in cells if isinstance(cell, str)).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _readable(cells: list[Any]) -> list[Any]:
    """Undecodable bytes -> "?", so every output format can hold the row."""
    return [
        cell.encode("utf-8", "replace").decode("utf-8") if isinstance(cell, str) else cell
        for cell in cells
    ]


def _instance(spec: ModelSpec, named: dict[str, Any]) -> dict[str, Any]:
    instance = instance_from_text(
        spec.name, {name: value for name, value in named.items() if isinstance(value, str)}
    )
    features = {feature.name: feature for feature in spec.features}
    for name, value in named.items():
        if value is not None and not isinstance(value, str):
            instance[name] = as_feature_type(features[name], value)
    return instance


def _parse(spec: ModelSpec, header: list[str], cells: list[Any]) -> Row | str:
    if len(cells) != len(header):
        return f"the row has {len(cells)} values; the header has {len(header)}"
    features = set(spec.feature_names)
    named = {name: cell for name, cell in zip(header, cells, strict=True) if name in features}
    try:
        return rows_from_instances(spec.name, [_instance(spec, named)])[0]
    except InvalidInput as error:
        return "; ".join(
            f"{detail.field.removeprefix(_INSTANCE_PREFIX)}: {detail.reason}"
            for detail in error.details
        )


def records(
    spec: ModelSpec, header: list[str], rows: Iterable[tuple[str, list[Any]]]
) -> Iterator[Record]:
    for where, cells in rows:
        if is_utf8(cells):
            yield Record(where, cells, _parse(spec, header, cells))
        else:
            yield Record(where, _readable(cells), "the line is not valid UTF-8 text")


def chunks(items: Iterator[Record], size: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def score(model: LoadedModel, chunk: list[Record], width: int, explain: bool) -> list[list[Any]]:
    """One output row per record, in input order: the input's cells, then the label, each
    class's probability and, if `explain`, the contributions, or None for those and the error
    (None is an empty CSV cell, a Parquet null)."""
    valid = [record.parsed for record in chunk if not isinstance(record.parsed, str)]
    probabilities = iter(model.predict_proba(valid) if valid else [])
    # Each valid row's contributions, flattened in explanation_columns' order (none unasked).
    explained = np.empty((len(valid), 0))
    if explain and valid:
        explained = model.explain(valid).contributions.reshape(len(valid), -1)
    contributions = iter(explained.astype(np.float64).tolist())
    classes = model.spec.class_names
    blank = [None] * (len(classes) + (len(explanation_columns(model.spec)) if explain else 0))
    out = []
    for record in chunk:
        cells = (record.cells + [None] * width)[
            :width
        ]  # short or long rows keep the header's shape
        if isinstance(record.parsed, str):
            out.append([*cells, None, *blank, f"{record.where}: {record.parsed}"])
        else:
            row = np.asarray(next(probabilities), dtype=np.float64)
            out.append(
                [*cells, classes[int(row.argmax())], *row.tolist(), *next(contributions), None]
            )
    return out


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
