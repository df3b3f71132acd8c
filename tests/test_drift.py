"""Feature drift: the reference saved at training, the monitor's PSI, the real server's gauges,
and the drift report command."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import bentoml
import httpx
import numpy as np
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tabserve.batch.scoring import chunks
from tabserve.catalog import MODELS
from tabserve.drift import report
from tabserve.drift.monitor import DriftMonitor, DriftWindow
from tabserve.drift.reference import REFERENCE_KEY, Binning, Reference, psi, score_values
from tabserve.inference import LoadedModel
from tabserve.instances import rows_from_instances
from tabserve.metrics import SCORE_DRIFT_PSI, version_of
from tabserve.model_input import from_rows
from tabserve.schemas import ModelInfo
from tabserve.settings import Settings
from tests.data import instances
from tests.declared_metrics import DRIFT
from tests.server import PROJECT, ServerProcess

ROWS = 3000
CHUNK = 1000  # Settings.max_instances
STABLE_PSI = 0.1
DRIFT_PSI = 0.2
# Each one shifts one feature of real rows; the feature's PSI must read drift, the others not.
SHIFTS = {
    "churn": ("seconds_of_use", lambda value: min(value * 3, 10_000_000)),
    "admission": ("age", lambda value: min(value + 25, 120)),
    "spam": ("text", lambda value: f"{value} {value} {value}"),
}


def _gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def _observe(monitor: DriftMonitor, name: str, chosen: list[dict[str, Any]]) -> str:
    """Real rows through the monitor as the data plane hands them, with the stored model's
    own predictions; returns the model's version."""
    spec = MODELS[name]
    model = LoadedModel(spec, bentoml.models.get(f"{name}:latest"), threads=1)
    for chunk in chunks(iter(chosen), CHUNK):
        rows = from_rows(spec, rows_from_instances(name, chunk))
        probabilities = model.predict_proba(rows)
        monitor.observe(spec, model.info, rows, probabilities, probabilities.argmax(axis=1))
    return version_of(model.info.tag)


def _published(name: str, chosen: list[dict[str, Any]]) -> dict[str, float]:
    """The gauges of a fresh monitor whose minimum is reached by the last chunk (it publishes
    at once then; earlier chunks publish nothing), by feature name and "score"."""
    monitor = DriftMonitor(Settings(drift_window_rows=2 * len(chosen), drift_min_rows=len(chosen)))
    version = _observe(monitor, name, chosen)
    values = {
        feature: _gauge("tabserve_feature_drift_psi", model=name, version=version, feature=feature)
        for feature in MODELS[name].feature_names
    }
    return values | {"score": _gauge("tabserve_score_drift_psi", model=name, version=version)}


@pytest.mark.parametrize("name", list(MODELS))
def test_rows_like_the_training_data_read_stable(trained_store: Path, name: str) -> None:
    values = _published(name, instances(name, ROWS, seed=1))
    assert all(value is not None and value < STABLE_PSI for value in values.values()), values


@pytest.mark.parametrize("name", list(SHIFTS))
def test_a_shifted_feature_reads_drift_and_the_others_stay_stable(
    trained_store: Path, name: str
) -> None:
    shifted, shift = SHIFTS[name]
    chosen = [
        {**instance, shifted: shift(instance[shifted])} for instance in instances(name, ROWS, 2)
    ]
    values = _published(name, chosen)
    assert values.pop(shifted) > DRIFT_PSI, values
    values.pop("score")  # the model's answers may well follow the shifted feature
    assert all(value < STABLE_PSI for value in values.values()), values


def test_no_psi_before_the_minimum_rows_and_the_window_stays_bounded(trained_store: Path) -> None:
    monitor = DriftMonitor(Settings(drift_window_rows=400, drift_min_rows=300))
    spec = MODELS["iris"]
    info = LoadedModel(spec, bentoml.models.get("iris:latest"), threads=1).info
    labels = {"model": "iris", "version": version_of(info.tag)}
    SCORE_DRIFT_PSI.labels(*labels.values()).set(-1)  # a value the monitor never writes
    for seed in range(2):  # 200 rows: under the minimum
        _observe(monitor, "iris", instances("iris", 100, seed=seed))
    assert _gauge("tabserve_score_drift_psi", **labels) == -1
    _observe(monitor, "iris", instances("iris", 100, seed=2))
    assert _gauge("tabserve_score_drift_psi", **labels) >= 0
    window = monitor._window(spec, info)
    assert window is not None
    for seed in range(10):  # the window moves by quarters of 100 rows
        _observe(monitor, "iris", instances("iris", 100, seed=10 + seed))
        assert 300 <= window.rows <= 400


@pytest.mark.parametrize("name", list(MODELS))
def test_the_windows_counts_are_each_binnings_own(trained_store: Path, name: str) -> None:
    """The window counts all features at once (BinCounter); training and the report count one
    binning at a time (Binning.counts): the two must agree bin for bin."""
    spec = MODELS[name]
    model = LoadedModel(spec, bentoml.models.get(f"{name}:latest"), threads=1)
    reference = Reference.of_model(model.info.metadata)
    assert reference is not None
    rows = from_rows(spec, rows_from_instances(name, instances(name, 500, seed=9)))
    probabilities = model.predict_proba(rows)
    best = probabilities.argmax(axis=1)
    window = DriftWindow(spec, reference, window_rows=10_000)
    window.add(rows, probabilities, best)
    counts = window.counts()
    for position, feature in enumerate(spec.features):
        column = [row[position] for row in rows]
        assert counts[feature.name].tolist() == (
            reference.features[feature.name].counts(column).tolist()
        ), feature.name
    scores = score_values(spec, probabilities, best)
    assert counts["score"].tolist() == reference.score.counts(scores).tolist()
    assert sum(counts["score"]) == window.rows == 500


def test_binning_counts_other_and_missing_and_psi_uses_epsilon_for_empty_bins() -> None:
    categories = Binning("category", categories=("a", "b"), fractions=(0.5, 0.5, 0.0, 0.0))
    assert categories.counts(["a", "b", "b", "z", None]).tolist() == [1, 2, 1, 1]
    numbers = Binning("numeric", edges=(1.0, 2.0), fractions=(0.5, 0.25, 0.25, 0.0))
    assert numbers.counts([0, 1, 1.5, 2, 7, None, True]).tolist() == [3, 2, 1, 1]
    assert Binning("tokens", edges=(2.0,)).counts(["a b", "a b c", None]).tolist() == [1, 1, 1]
    assert psi((0.5, 0.5, 0.0), np.array([5, 5, 0])) == 0
    # A bin empty in the reference but not in the traffic: EPSILON keeps it finite and large.
    assert 0.3 < psi((0.5, 0.5, 0.0), np.array([4, 4, 2])) < 2


def test_the_reference_is_compact_and_in_every_models_metadata(trained_store: Path) -> None:
    for name, spec in MODELS.items():
        reference = bentoml.models.get(f"{name}:latest").info.metadata[REFERENCE_KEY]
        assert list(reference["features"]) == spec.feature_names
        assert len(json.dumps(reference)) < 4000, name
        for binning in [*reference["features"].values(), reference["score"]]:
            assert sum(binning["fractions"]) == pytest.approx(1, abs=1e-3)


# --- the real server --------------------------------------------------------------------------
def test_the_server_exports_the_drift_gauges_after_enough_rows(server: ServerProcess) -> None:
    """Settings.drift_min_rows (1000) rows of real traffic in one request: the worker's window
    is full enough, and the gauges appear on /metrics with their declared labels."""
    response = httpx.post(
        f"{server.url}/v1/models/iris:predict",
        json={"instances": instances("iris", CHUNK, seed=5)},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    version = version_of(response.json()["model"])
    text = httpx.get(server.metrics_url, timeout=30).text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for name, (kind, labels) in DRIFT.items():
        samples = [s for s in families[name].samples if s.labels["model"] == "iris"]
        assert families[name].type == kind
        assert samples and all(set(sample.labels) == labels for sample in samples), name
        assert {sample.labels["version"] for sample in samples} == {version}
        assert all(0 <= sample.value < 10 for sample in samples), samples
    features = {s.labels["feature"] for s in families["tabserve_feature_drift_psi"].samples}
    assert set(MODELS["iris"].feature_names) <= features


# --- the report command ---------------------------------------------------------------------------
def _write_csv(path: Path, name: str, chosen: list[dict[str, Any]]) -> Path:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=MODELS[name].feature_names)
        writer.writeheader()
        writer.writerows(chosen)
    return path


def test_report_of_training_like_rows_finds_no_drift(
    trained_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _write_csv(tmp_path / "rows.csv", "admission", instances("admission", ROWS, seed=6))
    assert report.main(["admission", str(rows), "--out", str(tmp_path / "out")]) == 0
    table = capsys.readouterr().out
    for feature in [*MODELS["admission"].feature_names, "score"]:
        assert f"\n{feature} " in table
    assert "drift\n" not in table
    assert not list((tmp_path / "out").glob("*.png"))
    with open(tmp_path / "out" / "drift.csv") as file:
        written = list(csv.DictReader(file))
    assert [row["feature"] for row in written] == [*MODELS["admission"].feature_names, "score"]
    assert all(float(row["psi"]) < STABLE_PSI for row in written), written


def test_report_of_shifted_rows_names_the_feature_and_plots_it(
    trained_store: Path, tmp_path: Path
) -> None:
    """`python -m tabserve.drift` itself, on a CSV shifted on one feature."""
    shifted, shift = SHIFTS["admission"]
    chosen = [{**row, shifted: shift(row[shifted])} for row in instances("admission", ROWS, seed=7)]
    rows = _write_csv(tmp_path / "shifted.csv", "admission", chosen)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "tabserve.drift", "admission", str(rows), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=PROJECT)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"drifted: {shifted}" in result.stdout
    assert [path.name for path in out.glob("*.png")] == [f"{shifted}.png"]
    assert (out / f"{shifted}.png").read_bytes().startswith(b"\x89PNG")
    assert f"![{shifted}]({shifted}.png)" in (out / "drift.md").read_text()


def test_report_reads_payload_logs(
    trained_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """JSON Lines records as the payload logger writes them; other models' records skipped."""
    logs = tmp_path / "payloads.jsonl"
    records = [
        {"model": name, "version": "v", "request_id": str(i), "inputs": row, "outputs": {}}
        for i, (name, row) in enumerate(
            [("iris", row) for row in instances("iris", 1500, seed=8)]
            + [("drug", row) for row in instances("drug", 5)]
        )
    ]
    logs.write_text("".join(json.dumps(record) + "\n" for record in records))
    assert report.main(["iris", str(logs), "--out", str(tmp_path / "out")]) == 0
    assert "iris:latest: 1500 rows" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("", ".csv", "empty, expected a header line"),
        ("sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm\n1,2,3,4\n1,2,x,4\n",
         ".csv", "rows.csv:3: petal_length_cm: Input should be a valid number"),
        ("sepal_length_cm\n1,2\n", ".csv", "rows.csv:2: more cells than header names"),
        ('{"inputs": {}}\nnot json\n', ".jsonl", "rows.jsonl:2: not JSON"),
        ('{"model": "iris"}\n', ".jsonl", 'rows.jsonl:1: expected an object with an "inputs"'),
    ],
)  # fmt: skip
def test_report_of_a_bad_file_says_where_and_why(
    trained_store: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str,
    suffix: str,
    message: str,
) -> None:
    bad = tmp_path / f"rows{suffix}"
    bad.write_text(content)
    assert report.main(["iris", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_report_of_a_missing_file_or_model_version(
    trained_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report.main(["iris", str(tmp_path / "nowhere.csv")]) == 2
    assert "nowhere.csv: no such file" in capsys.readouterr().err
    rows = _write_csv(tmp_path / "rows.csv", "iris", instances("iris", 5))
    assert report.main(["iris", str(rows), "--tag", "iris:doesnotexist"]) == 2
    assert "iris:doesnotexist: no such model in the store" in capsys.readouterr().err


def test_a_minimum_over_three_quarters_of_the_window_is_refused_at_start_up() -> None:
    """The window holds 3/4 of its rows after it moves: a larger minimum would export a PSI and
    then stop refreshing it."""
    with pytest.raises(ValueError, match=r"TABSERVE_DRIFT_MIN_ROWS \(800\) is over 3/4"):
        Settings(drift_window_rows=1000, drift_min_rows=800)
    assert Settings(drift_window_rows=1000, drift_min_rows=750).drift_min_rows == 750
    assert Settings(drift_window_rows=0, drift_min_rows=5000).drift_window_rows == 0  # off


@pytest.mark.parametrize(
    "mangled",
    [
        {"kind": "numeric", "edges": [1.0], "fractions": [0.5, 0.5]},  # 3 bins
        {"kind": "numeric", "edges": [2.0, 1.0], "fractions": [0.3, 0.3, 0.4, 0]},
        {"kind": "histogram", "edges": [], "fractions": [1, 0]},
        {"kind": "category", "categories": ["a"], "fractions": "abc"},
    ],
)
def test_a_mangled_reference_turns_drift_off_for_the_model_not_its_requests(
    trained_store: Path, mangled: dict[str, Any]
) -> None:
    spec = MODELS["iris"]
    info = LoadedModel(spec, bentoml.models.get("iris:latest"), threads=1).info
    metadata = json.loads(json.dumps(info.metadata))
    metadata[REFERENCE_KEY]["features"]["petal_length_cm"] = mangled
    mangled_info = ModelInfo(info.name, info.tag, info.framework, metadata)
    monitor = DriftMonitor(Settings(drift_window_rows=40, drift_min_rows=1))
    assert monitor._window(spec, mangled_info) is None
    rows = from_rows(spec, rows_from_instances("iris", instances("iris", 20)))
    probabilities = np.full((20, 3), 1 / 3)
    monitor.observe(spec, mangled_info, rows, probabilities, probabilities.argmax(axis=1))
