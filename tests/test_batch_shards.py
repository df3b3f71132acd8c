"""Sharded batch scoring: N shards, run as separate invocations, write exactly the rows of one
run; each shard owns its part and manifest; the chart runs the shards as an Indexed Job.

Rows are identified by an `id` column the inputs carry (copied through like any other column):
with one input file the parts, concatenated in shard order, are the single run's output as is;
with several files they are the same rows in another order, compared after sorting by `id`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tabserve import batch
from tabserve.batch import cli, shards
from tabserve.batch.shards import InputFile, Shard
from tabserve.inference import LoadedModel
from tests.chart.manifests import only, render
from tests.test_batch import churn_csv, read_csv, write_csv
from tests.test_chart import SUPPORTED_KUBERNETES

SHARDS = 3
FILES = 5  # dealt to 3 shards: 2, 2 and 1 files
CHUNK = 400


# --- the plan: every row exactly once ---------------------------------------------------------


@pytest.mark.parametrize("rows", [0, 1, 2, 3, 10, 3151])
@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_row_ranges_cover_every_row_once_in_order(rows: int, count: int) -> None:
    ranges = [shards.row_range(rows, Shard(index, count)) for index in range(count)]
    assert [row for start, stop in ranges for row in range(start, stop)] == list(range(rows))
    sizes = [stop - start for start, stop in ranges]
    assert max(sizes) - min(sizes) <= 1  # balanced


def test_several_files_are_dealt_round_robin_by_sorted_path(tmp_path: Path) -> None:
    for name in ["b.csv", "a.csv", "d.csv", "c.csv", "_part.manifest.json", ".hidden.csv"]:
        (tmp_path / name).write_text("x\n")
    files = shards.list_inputs(str(tmp_path), None)
    assert [Path(file.path).name for file in files] == ["a.csv", "b.csv", "c.csv", "d.csv"]
    assert shards.list_inputs(str(tmp_path / "*.csv"), None) == files  # a glob, the same
    dealt = [
        [Path(piece.file.path).name for piece in shards.plan(files, Shard(index, 3), len)]
        for index in range(3)
    ]
    assert dealt == [["a.csv", "d.csv"], ["b.csv"], ["c.csv"]]


def test_inputs_that_cannot_be_planned_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x\n")
    (tmp_path / "b.parquet").write_text("x\n")
    with pytest.raises(shards.Unusable, match="mixes CSV and Parquet"):
        shards.list_inputs(str(tmp_path), None)
    assert {f.format for f in shards.list_inputs(str(tmp_path), "parquet")} == {"parquet"}
    with pytest.raises(shards.Unusable, match="no file matches"):
        shards.list_inputs(str(tmp_path / "*.txt"), None)


# --- sharded runs equal one run ---------------------------------------------------------------


def _input_rows(tmp_path: Path) -> list[list[str]]:
    """The churn data with an id column and a few invalid rows (kept, with their errors)."""
    rows = read_csv(churn_csv(tmp_path))
    rows = [["id", *rows[0]]] + [[str(number), *row] for number, row in enumerate(rows[1:])]
    age = rows[0].index("age")
    for bad in (7, 1600, 3001):
        rows[bad][age] = "700"
    return rows


def _write_input(rows: list[list[str]], path: Path, format: str) -> None:
    if format == "csv":
        write_csv(path, rows)
        return
    # Typed columns, as a Parquet writer makes them: ints, floats, the 0/1 flags as integers.
    columns = {name: [row[i] for row in rows[1:]] for i, name in enumerate(rows[0])}
    typed = {}
    for name, values in columns.items():
        try:
            typed[name] = [int(value) for value in values]
        except ValueError:
            typed[name] = [float(value) for value in values]
    pq.write_table(pa.table(typed), path, row_group_size=500)


def make_inputs(tmp_path: Path, format: str, files: int) -> str:
    """One file, or `files` files of uneven sizes in a directory; returns the --input."""
    rows = _input_rows(tmp_path)
    if files == 1:
        path = tmp_path / f"in.{format}"
        _write_input(rows, path, format)
        return str(path)
    directory = tmp_path / "in"
    directory.mkdir()
    bounds = [0, 100, 900, 1000, 2500, len(rows) - 1]
    for number in range(files):
        chunk = rows[1 + bounds[number] : 1 + bounds[number + 1]]
        _write_input([rows[0], *chunk], directory / f"{number:02d}.{format}", format)
    return str(directory)


def score(source: str, output: Path, *extra: str) -> int:
    return batch.main(
        ["--model", "churn", "--input", source, "--output", str(output), "--max-invalid", "3",
         "--chunk-size", str(CHUNK), *extra]
    )  # fmt: skip


def read_table(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def run_shards(source: str, output: Path, *extra: str) -> list[Path]:
    for index in range(SHARDS):
        assert score(source, output, "--shard-index", str(index), "--shard-count", str(SHARDS),
                     *extra) == batch.EXIT_OK  # fmt: skip
    return sorted(output.glob("part-*"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("files", [1, FILES], ids=["one-file", "several-files"])
@pytest.mark.parametrize("format", ["csv", "parquet"])
def test_shards_together_write_exactly_the_rows_of_one_run(
    trained_store, tmp_path: Path, format: str, files: int
) -> None:
    source = make_inputs(tmp_path, format, files)
    single = tmp_path / f"single.{format}"
    assert score(source, single, "--chunk-size", "1000") == batch.EXIT_OK
    parts = run_shards(source, tmp_path / "scored")
    assert [part.name for part in parts] == [
        f"part-{index:05d}-of-{SHARDS:05d}.{format}" for index in range(SHARDS)
    ]
    expected = read_table(single)
    assert len(expected) == 3150
    assert sum(1 for row in expected if row["error"]) == 3
    together = [row for part in parts for row in read_table(part)]
    if files == 1:
        assert together == expected  # contiguous ranges: input order, parts in shard order
    else:
        assert sorted(together, key=lambda row: int(row["id"])) == sorted(
            expected, key=lambda row: int(row["id"])
        )

    for index, part in enumerate(parts):
        manifest = json.loads((part.parent / f"_{part.name}.manifest.json").read_text())
        rows = len(read_table(part))
        assert manifest["shard"] == {"index": index, "count": SHARDS}
        assert manifest["output"]["sha256"] == sha256(part)
        assert manifest["output"]["bytes"] == part.stat().st_size
        assert manifest["rows"]["in"] == manifest["rows"]["out"] == rows
        assert sum(entry["rows"] for entry in manifest["inputs"]) == rows
        assert manifest["model"]["tag"].startswith("churn:")
        assert manifest["started"] <= manifest["finished"]
    assert not list((tmp_path / "scored").glob(".*"))  # no temporary file left


def test_csv_and_parquet_inputs_score_alike(trained_store, tmp_path: Path) -> None:
    """Parquet's typed values (ints, floats, 0/1 flags) give the predictions CSV text gives."""
    outputs = {}
    for format in ("csv", "parquet"):
        (tmp_path / format).mkdir()
        source = make_inputs(tmp_path / format, format, 1)
        assert score(source, tmp_path / f"out-{format}.csv") == batch.EXIT_OK
        outputs[format] = read_table(tmp_path / f"out-{format}.csv")
    predictions = [
        [
            {k: v for k, v in row.items() if k.startswith(("predicted", "probability"))}
            for row in rows
        ]
        for rows in outputs.values()
    ]
    assert predictions[0] == predictions[1]
    errors = [[row["error"] for row in rows if row["error"]] for rows in outputs.values()]
    assert errors == [
        [f"line {n + 1}: age: Input should be less than or equal to 120" for n in (7, 1600, 3001)],
        [f"row {n}: age: Input should be less than or equal to 120" for n in (7, 1600, 3001)],
    ]


def test_a_shard_given_no_file_writes_an_empty_part(trained_store, tmp_path: Path) -> None:
    rows = _input_rows(tmp_path)
    (tmp_path / "in").mkdir()
    for number in range(2):
        write_csv(tmp_path / "in" / f"{number}.csv", [rows[0], *rows[1 + number :: 2]])
    output = tmp_path / "scored"
    assert score(str(tmp_path / "in"), output, "--shard-index", "2", "--shard-count", "3") == 0
    (header,) = read_csv(output / "part-00002-of-00003.csv")
    assert header[: len(rows[0])] == rows[0]
    manifest = json.loads((output / "_part-00002-of-00003.csv.manifest.json").read_text())
    assert (manifest["inputs"], manifest["rows"]["in"]) == ([], 0)


# --- each shard owns its files ----------------------------------------------------------------


def _state(directory: Path) -> dict[str, tuple[str, int]]:
    return {path.name: (sha256(path), path.stat().st_mtime_ns) for path in directory.iterdir()}


def test_a_failed_or_rerun_shard_changes_nothing_else(
    trained_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    source = make_inputs(tmp_path, "parquet", 1)
    output = tmp_path / "scored"
    run_shards(source, output)
    before = _state(output)
    mine = {"part-00001-of-00003.parquet", "_part-00001-of-00003.parquet.manifest.json"}

    calls = 0
    predict = LoadedModel.predict_proba

    def fails_midway(self: LoadedModel, rows: list) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("the node went away")
        return predict(self, rows)

    with monkeypatch.context() as patch:
        patch.setattr(LoadedModel, "predict_proba", fails_midway)
        assert score(source, output, "--shard-index", "1", "--shard-count", "3") == 3
    assert "the node went away" in capsys.readouterr().err
    assert _state(output) == before  # no partial file, the old part and manifest kept

    assert score(source, output, "--shard-index", "1", "--shard-count", "3") == batch.EXIT_OK
    after = _state(output)
    assert after.keys() == before.keys()
    assert {name: after[name] for name in before.keys() - mine} == {
        name: before[name] for name in before.keys() - mine
    }
    part = "part-00001-of-00003.parquet"
    assert after[part][0] == before[part][0]  # the same bytes again
    assert after[part][1] > before[part][1]  # written again


def test_shards_default_from_the_indexed_job_environment(
    trained_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cli.INDEX_VARIABLE, "2")
    monkeypatch.setenv(cli.COUNT_VARIABLE, "4")
    source = make_inputs(tmp_path, "csv", 1)
    assert score(source, tmp_path / "scored") == batch.EXIT_OK
    assert [path.name for path in (tmp_path / "scored").glob("part-*")] == [
        "part-00002-of-00004.csv"
    ]
    assert len(read_csv(tmp_path / "scored" / "part-00002-of-00004.csv")) == 1 + 3150 // 4


# --- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "environment", "message"),
    [
        (["--shard-index", "3", "--shard-count", "3"], {}, "--shard-index must be from 0 to 2"),
        (["--shard-index", "-1"], {}, "--shard-index must be from 0 to 0"),
        (["--shard-count", "0"], {}, "--shard-count must be at least 1"),
        (["--shard-index", "one"], {}, "argument --shard-index: 'one' is not a whole number"),
        ([], {cli.INDEX_VARIABLE: "5", cli.COUNT_VARIABLE: "2"}, "--shard-index must be from 0"),
        ([], {cli.COUNT_VARIABLE: "many"}, "argument --shard-count: 'many' is not a whole"),
        (["--input", "-", "--shard-count", "2"], {}, "--input -: stdin cannot be sharded"),
        (["--output", "-", "--output-format", "parquet"], {}, "--output-format: stdout is CSV"),
        (["--input-format", "xml"], {}, "argument --input-format: invalid choice: 'xml'"),
        (["--chunk-size", "0"], {}, "--chunk-size must be at least 1"),
    ],
)
def test_bad_arguments_exit_2_naming_the_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, arguments, environment, message
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    given = ["--model", "iris", "--input", "in.csv", "--output", str(tmp_path / "out.csv")]
    assert batch.main(given + arguments) == batch.EXIT_UNUSABLE
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_help_shows_the_defaults(capsys) -> None:
    assert batch.main(["--help"]) == batch.EXIT_OK
    text = " ".join(capsys.readouterr().out.split())
    for default in ("rows per model call (default: 1000)", "(default: 0)", "(default: True)"):
        assert default in text


def test_stdin_to_stdout(trained_store, tmp_path: Path) -> None:
    """A real process: CSV in on stdin, CSV out on stdout, the summary on stderr, no progress bar
    (stderr is not a terminal), no file written."""
    rows = _input_rows(tmp_path)[:50]
    source = write_csv(tmp_path / "in.csv", rows)
    assert score(str(source), tmp_path / "out.csv") == batch.EXIT_OK  # --max-invalid 3
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tabserve.batch",
            "--model",
            "churn",
            "--input",
            "-",
            "--output",
            "-",
        ],
        input=source.read_bytes(),
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == batch.EXIT_INVALID_ROWS, done.stderr
    assert done.stdout == (tmp_path / "out.csv").read_bytes()
    stderr = done.stderr.decode()
    assert "48 rows scored, 1 invalid" in stderr and "-> stdout" in stderr
    assert "\r" not in stderr  # no progress bar redrawn
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["in.csv", "out.csv", "_out.csv.manifest.json", "churn.csv"]
    )


# --- the chart: an Indexed Job -----------------------------------------------------------------

SHARDED = {"enabled": True, "existingClaim": "data", "shards": 4, "input": "/data/in/*.parquet",
           "output": "/data/scored", "extraArgs": ["--max-invalid", "10"]}  # fmt: skip


def batch_job(values: dict[str, Any]) -> dict[str, Any]:
    return only(render({"batch": values}), "Job")


@pytest.mark.parametrize("kube_version", SUPPORTED_KUBERNETES)
def test_the_batch_job_is_an_indexed_job_valid_for_kubernetes(kube_version: str) -> None:
    job = batch_job({**SHARDED, "maxFailedIndexes": 1})
    kubernetes_validate.validate(job, kube_version, strict=True)
    spec = job["spec"]
    assert job["metadata"]["name"] == "tabserve-batch-r1"  # still one Job per release revision
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 4)
    assert (spec["backoffLimitPerIndex"], spec["maxFailedIndexes"]) == (2, 1)
    (container,) = spec["template"]["spec"]["containers"]
    assert {"name": cli.COUNT_VARIABLE, "value": "4"} in container["env"]
    # The rendered arguments are the command's own: its parser takes them.
    args = cli._parser().parse_args(container["args"])
    assert (args.input, args.output, args.max_invalid) == ("/data/in/*.parquet", "/data/scored", 10)
    # Exit codes that would repeat are not retried.
    (no_retry, _) = spec["podFailurePolicy"]["rules"]
    assert no_retry["action"] == "FailIndex"
    assert no_retry["onExitCodes"]["values"] == [batch.EXIT_INVALID_ROWS, batch.EXIT_UNUSABLE]


def test_the_cron_job_runs_the_same_indexed_job() -> None:
    objects = render({"batch": {**SHARDED, "schedule": "@daily", "parallelism": 2}})
    spec = only(objects, "CronJob")["spec"]["jobTemplate"]["spec"]
    kubernetes_validate.validate(only(objects, "CronJob"), SUPPORTED_KUBERNETES[0], strict=True)
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 2)
    assert "maxFailedIndexes" not in spec  # null: every shard runs whatever the others do


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"shards": 0}, "/batch/shards"),
        ({"shards": 100001}, "/batch/shards"),
        ({"inputFormat": "xml"}, "/batch/inputFormat"),
        ({"parallelism": 0}, "/batch/parallelism"),
        ({"backoffLimit": 2}, "backoffLimit"),  # renamed: backoffLimitPerIndex
        ({"maxFailedIndexes": 5}, "batch.maxFailedIndexes (5) cannot be more than batch.shards"),
    ],
)
def test_bad_batch_values_fail_the_render(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmError, match=re.escape(message)):
        batch_job({**SHARDED, **values})


def test_the_plan_reads_files_only_when_it_must(tmp_path: Path) -> None:
    """Several files: no row counting; one file and one shard: none either."""

    def refuse(_: InputFile) -> int:
        raise AssertionError("counted")

    files = [InputFile(str(tmp_path / f"{n}.csv"), "csv") for n in range(3)]
    assert len(shards.plan(files, Shard(0, 2), refuse)) == 2
    assert shards.plan(files[:1], Shard(0, 1), refuse) == [shards.Slice(files[0])]
