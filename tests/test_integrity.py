"""Model integrity: the SHA-256 of each model file is recorded at save and checked at load.

Tampering happens in a copy of the trained store (its own BentoML home), never in the store the
other tests' servers load from.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import bentoml
import httpx
import numpy as np
import pytest
from bentoml._internal.models.model import ModelStore

from tabserve.catalog import MODELS
from tabserve.datasets import sha256_of
from tabserve.inference import LoadedModel
from tabserve.integrity import DIGESTS_KEY, ModelIntegrityError
from tests.server import ServerProcess, run_training

# One pickled scikit-learn pipeline, one XGBoost UBJSON booster: the two ways models are stored.
MODEL_FILES = {"iris": "saved_model.pkl", "churn": "model.ubj"}


@pytest.fixture
def home(trained_store: Path, tmp_path: Path) -> Path:
    """A BentoML home of this test's own, holding a copy of every trained model."""
    copy = tmp_path / "bentoml-home"
    shutil.copytree(trained_store / "models", copy / "models")
    return copy


def stored(home: Path, name: str) -> bentoml.Model:
    return bentoml.models.get(f"{name}:latest", _model_store=ModelStore(home / "models"))


def load(home: Path, name: str) -> LoadedModel:
    return LoadedModel(MODELS[name], stored(home, name), threads=1)


def flip_a_byte(path: Path) -> None:
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0x01
    path.write_bytes(bytes(content))


@pytest.mark.parametrize(("name", "file"), MODEL_FILES.items())
def test_save_records_each_files_digest(home: Path, name: str, file: str) -> None:
    model = stored(home, name)
    assert model.info.metadata[DIGESTS_KEY] == {file: sha256_of(Path(model.path_of(file)))}


@pytest.mark.parametrize("name", MODEL_FILES)
def test_an_untampered_model_loads_and_predicts(home: Path, name: str) -> None:
    spec = MODELS[name]
    row = tuple(spec.example_instance().get(feature) for feature in spec.feature_names)
    probabilities = load(home, name).predict_proba([row])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize(("name", "file"), MODEL_FILES.items())
def test_a_changed_byte_is_refused_naming_the_model_and_file(
    home: Path, name: str, file: str
) -> None:
    model = stored(home, name)
    flip_a_byte(Path(model.path_of(file)))
    with pytest.raises(ModelIntegrityError) as refused:
        load(home, name)
    assert str(refused.value).startswith(f"model {model.tag}: file {file} has SHA-256 ")
    assert "refusing to load it" in str(refused.value)


def test_a_file_added_after_training_is_refused(home: Path) -> None:
    # BentoML unpickles custom_objects.pkl when a model has one.
    model = stored(home, "iris")
    Path(model.path_of("custom_objects.pkl")).write_bytes(b"not from training")
    with pytest.raises(ModelIntegrityError, match=r"file custom_objects\.pkl was not written by"):
        load(home, "iris")


def test_a_model_saved_without_digests_is_refused_with_the_retrain_command(home: Path) -> None:
    """Models saved before digests were recorded cannot be verified: refused, not served."""
    model = stored(home, "iris")
    del model.info.metadata[DIGESTS_KEY]
    model.flush()
    with pytest.raises(ModelIntegrityError) as refused:
        load(home, "iris")
    assert str(refused.value) == (
        f"model {model.tag}: no file digests in its metadata (saved before tabserve recorded "
        "them), so its files cannot be verified; refusing to load it; retrain it: "
        "python train.py --only iris"
    )


def test_train_if_missing_retrains_a_model_saved_without_digests(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So `make serve` heals a store from before this check instead of failing to start."""
    model = stored(home, "iris")
    del model.info.metadata[DIGESTS_KEY]
    model.flush()
    monkeypatch.setenv("BENTOML_HOME", str(home))  # run_training's store
    result = run_training("--fast", "--if-missing")
    assert [line.split(":")[0] for line in result.stdout.splitlines() if ":" in line] == ["iris"]
    load(home, "iris")  # the new version verifies


def test_a_server_with_a_tampered_model_never_becomes_ready(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = stored(home, "churn")
    flip_a_byte(Path(model.path_of("model.ubj")))
    monkeypatch.setenv("BENTOML_HOME", str(home))  # the store ServerProcess links in
    log = tmp_path / "bentoml-serve.log"
    refusal = f"ModelIntegrityError: model {model.tag}: file model.ubj has SHA-256 "
    with ServerProcess.start(log, wait_ready=False) as server:
        deadline = time.monotonic() + 60
        while refusal not in log.read_text() and time.monotonic() < deadline:
            assert _readyz_status(server.url) != 200
            time.sleep(0.5)
        assert refusal in log.read_text(), log.read_text()[-3000:]
        # Refused, and still not ready: BentoML keeps restarting the runner, which refuses again.
        assert _readyz_status(server.url) != 200


def _readyz_status(url: str) -> int | None:
    """None while the port is not open yet, or when BentoML gives up waiting for the runner."""
    try:
        return httpx.get(f"{url}/readyz", timeout=10).status_code
    except (httpx.ConnectError, httpx.TimeoutException):
        return None
