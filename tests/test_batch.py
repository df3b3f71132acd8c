"""`python -m tabserve.batch` on the vendored CSV files: every output row equals the real
server's online answer for that row; bad rows are reported with their line numbers."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from scipy.special import expit

from tabserve import batch, datasets
from tabserve.catalog import MODELS

CHUNK = 1000  # instances per online request (the server's default max_instances)


def run_batch(model: str, source: Path, output: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            *(sys.executable, "-m", "tabserve.batch", "--model", model),
            *("--input", str(source), "--output", str(output), *extra),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return path


def churn_csv(tmp_path: Path) -> Path:
    """The vendored churn file with its UCI header renamed to feature names; values untouched,
    the label column kept (it is copied through)."""
    rows = read_csv(datasets.DATA_DIR / "iranian_churn.csv")
    rows[0] = [datasets.CHURN_COLUMNS.get(name, name) for name in rows[0]]
    return write_csv(tmp_path / "churn.csv", rows)


def drug_csv(tmp_path: Path) -> Path:
    rows = read_csv(datasets.DATA_DIR / "drug200.csv")
    rows[0] = ["age", "sex", "bp", "cholesterol", "na_to_k", "Drug"]
    return write_csv(tmp_path / "drug.csv", rows)


def online(server, model: str) -> list[dict[str, Any]]:
    """The server's answers for every row of the model's data set, loaded by the training code's
    own loader (independently of the batch command's CSV parsing)."""
    spec = MODELS[model]
    features, _ = spec.load_dataset(datasets.DATA_DIR / spec.dataset_file)
    instances = [
        {name: value.item() if hasattr(value, "item") else value for name, value in row.items()}
        for row in features.to_dict(orient="records")
    ]
    for feature in spec.features:
        if feature.kind == "boolean":
            for instance in instances:
                instance[feature.name] = bool(instance[feature.name])
    predictions = []
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for start in range(0, len(instances), CHUNK):
            answer = client.post(
                f"/v1/models/{model}:predict", json={"instances": instances[start : start + CHUNK]}
            )
            assert answer.status_code == 200, answer.text
            predictions += answer.json()["predictions"]
    return predictions


@pytest.mark.parametrize(
    ("model", "make_input"),
    [
        ("churn", churn_csv),
        ("drug", drug_csv),
        ("spam", lambda _: datasets.DATA_DIR / "sms_spam.csv"),  # already named by feature
    ],
)
def test_every_row_equals_the_online_prediction(
    server, tmp_path: Path, model: str, make_input: Any
) -> None:
    source, output = make_input(tmp_path), tmp_path / "out.csv"
    done = run_batch(model, source, output, "--chunk-size", "700")
    assert done.returncode == 0, done.stderr
    inputs, outputs = read_csv(source), read_csv(output)
    classes = MODELS[model].class_names
    assert outputs[0] == inputs[0] + [
        "predicted_label",
        *(f"probability_{name}" for name in classes),
        "error",
    ]
    expected = online(server, model)
    assert len(outputs) - 1 == len(inputs) - 1 == len(expected)
    width = len(inputs[0])
    for given, out, answer in zip(inputs[1:], outputs[1:], expected, strict=True):
        # Input columns copied through, formula-like text escaped (a real SMS starts with "-").
        assert out[:width] == [batch.defuse_formula(cell) for cell in given]
        assert out[width] == answer["label"]
        probabilities = [float(value) for value in out[width + 1 : width + 1 + len(classes)]]
        assert probabilities == pytest.approx(
            [answer["probabilities"][name] for name in classes], abs=1e-9
        )
        assert out[-1] == ""
    assert f"{len(expected)} rows scored, 0 invalid" in done.stderr


def test_bad_rows_are_reported_with_line_numbers(trained_store, tmp_path: Path) -> None:
    rows = read_csv(churn_csv(tmp_path))
    header = rows[0]
    age, complains = header.index("age"), header.index("complains")
    rows[5][complains] = "maybe"  # line 6
    rows[9][age] = "700"  # line 10
    rows[12] = rows[12][:5]  # line 13: a short row
    rows[20][age] = ""  # line 21: a required value left empty
    source, output = write_csv(tmp_path / "bad.csv", rows), tmp_path / "out.csv"

    done = run_batch("churn", source, output)
    assert done.returncode == 1, done.stderr
    outputs = read_csv(output)
    assert len(outputs) == len(rows)  # nothing dropped
    errors = {line: out[-1] for line, out in enumerate(outputs, 1) if line > 1 and out[-1]}
    assert errors == {
        6: "line 6: complains: Input should be a valid boolean",
        10: "line 10: age: Input should be less than or equal to 120",
        13: "line 13: the row has 5 values; the header has 14",
        21: "line 21: age: required field is missing",
    }
    assert outputs[5][len(header)] == ""  # line 6: no label for an invalid row
    assert outputs[6][len(header)] in MODELS["churn"].class_names  # line 7 is scored
    for message in errors.values():
        assert message in done.stderr
    assert f"{len(rows) - 5} rows scored, 4 invalid" in done.stderr

    assert run_batch("churn", source, output, "--max-invalid", "4").returncode == 0


def test_line_numbers_count_multiline_records(trained_store, tmp_path: Path) -> None:
    rows = [["text"], ["first line\nsecond line of the same message"], [""], ["Call me"]]
    source, output = write_csv(tmp_path / "messages.csv", rows), tmp_path / "out.csv"
    done = run_batch("spam", source, output)
    assert done.returncode == 1
    assert read_csv(output)[2][-1] == "line 4: text: required field is missing"


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("sepal_length_cm,sepal_width_cm\n5.1,3.5\n", (), "lacks the feature columns"),
        ("", (), "the input is empty"),
        ("a,a\n1,2\n", (), "more than once"),
        ("sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm,error\n", (), "rename"),
        ("sepal_length_cm\n5.1\n", ("--tag", "iris:doesnotexist"), "not in the model store"),
        (b"\xff\xfe\x00bad".decode("latin-1"), (), "error:"),
    ],
    ids=["missing-columns", "empty", "duplicate-columns", "clashing-column", "no-model", "binary"],
)
def test_unusable_input_exits_2_without_output(
    trained_store, tmp_path: Path, capsys, content: str, extra: tuple[str, ...], message: str
) -> None:
    """In-process (the command's own main), as starting Python and BentoML costs seconds."""
    source, output = tmp_path / "in.csv", tmp_path / "out.csv"
    source.write_text(content, encoding="latin-1")
    arguments = ["--model", "iris", "--input", str(source), "--output", str(output), *extra]
    assert batch.main(arguments) == batch.EXIT_UNUSABLE
    assert message in capsys.readouterr().err
    assert [path.name for path in tmp_path.iterdir()] == ["in.csv"]  # no output, no partial file


def test_missing_input_file_exits_2(trained_store, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere.csv"
    arguments = ["--model", "iris", "--input", str(missing), "--output", str(tmp_path / "o.csv")]
    assert batch.main(arguments) == batch.EXIT_UNUSABLE
    assert "nowhere.csv" in capsys.readouterr().err


IRIS_HEADER = "sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm,note"
FORMULAS = {  # a copied-through cell -> how it is written
    '"=HYPERLINK(""http://evil"",""x"")"': '\'=HYPERLINK("http://evil","x")',
    "@SUM(A1)": "'@SUM(A1)",
    "+1+1": "'+1+1",
    "-2+3": "'-2+3",
    '"\tcmd"': "'\tcmd",
    "-5": "-5",  # a number, not a formula
    "plain": "plain",
}


@pytest.mark.parametrize("escape", [True, False])
def test_formula_cells_are_escaped_unless_asked_not_to(
    trained_store, tmp_path: Path, escape: bool
) -> None:
    lines = [IRIS_HEADER, *(f"5.1,3.5,1.4,0.2,{cell}" for cell in FORMULAS)]
    source, output = tmp_path / "in.csv", tmp_path / "out.csv"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    extra = [] if escape else ["--no-escape-formulas"]
    arguments = ["--model", "iris", "--input", str(source), "--output", str(output), *extra]
    assert batch.main(arguments) == batch.EXIT_OK
    notes = [row[4] for row in read_csv(output)[1:]]
    expected = list(FORMULAS.values())
    assert notes == (expected if escape else [value.lstrip("'") for value in expected])


def test_a_line_that_is_not_utf8_is_a_bad_row(trained_store, tmp_path: Path, capsys) -> None:
    source, output = tmp_path / "in.csv", tmp_path / "out.csv"
    source.write_bytes(
        f"{IRIS_HEADER}\n5.1,3.5,1.4,0.2,ok\n5.1,3.5,1.4,0.2,caf\xe9\n6.3,3.3,6.0,2.5,ok\n".encode(
            "latin-1"
        )
    )
    arguments = ["--model", "iris", "--input", str(source), "--output", str(output)]
    assert batch.main(arguments) == batch.EXIT_INVALID_ROWS
    rows = read_csv(output)
    assert len(rows) == 4
    assert rows[2][4] == "caf\N{REPLACEMENT CHARACTER}" or rows[2][4] == "caf?"
    assert rows[2][-1] == "line 3: the line is not valid UTF-8 text"
    assert rows[1][-1] == rows[3][-1] == ""  # the lines around it are scored
    assert "2 rows scored, 1 invalid" in capsys.readouterr().err


def test_a_header_that_is_not_utf8_exits_2(trained_store, tmp_path: Path, capsys) -> None:
    source, output = tmp_path / "in.csv", tmp_path / "out.csv"
    source.write_bytes(b"sepal_length_cm\xff,x\n1,2\n")
    arguments = ["--model", "iris", "--input", str(source), "--output", str(output)]
    assert batch.main(arguments) == batch.EXIT_UNUSABLE
    assert "the header (line 1) is not valid UTF-8" in capsys.readouterr().err
    assert [path.name for path in tmp_path.iterdir()] == ["in.csv"]


@pytest.mark.parametrize(
    ("model", "make_input", "out_format"),
    [("churn", churn_csv, "csv"), ("drug", drug_csv, "parquet")],
    ids=["binary-log-odds-csv", "multiclass-probability-parquet"],
)
def test_explain_adds_contributions_that_sum_to_the_margin(
    trained_store, tmp_path: Path, model: str, make_input: Any, out_format: str
) -> None:
    rows = read_csv(make_input(tmp_path))
    rows.insert(2, ["not a number", *rows[1][1:]])  # line 3: invalid, its cells stay empty
    source, output = write_csv(tmp_path / "in.csv", rows), tmp_path / f"out.{out_format}"
    done = run_batch(model, source, output, "--explain", "--max-invalid", "1")
    assert done.returncode == 0, done.stderr
    if out_format == "csv":
        with output.open(newline="", encoding="utf-8") as handle:
            scored = list(csv.DictReader(handle))
    else:
        scored = pq.read_table(output).to_pylist()

    spec = MODELS[model]
    # churn: the log-odds of its second class; drug (one decision tree): each class's probability.
    explained, to_probability = {
        "churn": ({"": "retained"}, expit),
        "drug": ({f"_{name}": name for name in spec.class_names}, lambda total: total),
    }[model]
    names = [
        name
        for suffix in explained
        for name in (
            *(f"contribution{suffix}_{feature}" for feature in spec.feature_names),
            f"base_value{suffix}",
        )
    ]
    assert list(scored[0]) == [
        *rows[0],
        "predicted_label",
        *(f"probability_{name}" for name in spec.class_names),
        *names,
        "error",
    ]
    assert len(scored) == len(rows) - 1
    for row in scored:
        if row["error"]:
            assert row["error"].startswith("line 3: ")
            assert all(row[name] in ("", None) for name in names)
            continue
        for suffix, name in explained.items():
            total = sum(float(row[f"contribution{suffix}_{f}"]) for f in spec.feature_names)
            total += float(row[f"base_value{suffix}"])
            assert to_probability(total) == pytest.approx(
                float(row[f"probability_{name}"]), abs=1e-5
            )
