"""Model versions side by side (issue 15): two versions of churn served together, each reachable
on the versioned routes of every protocol, aliases, and the repository API changing them live.

The store is the test's own: the session's fast-trained models copied, then churn trained again
in full (300 trees instead of a handful), so the two versions disagree on some rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from bentoml._internal.models.model import ModelStore
from tabpy.tabpy_tools.client import Client
from tritonclient.utils import InferenceServerException

from tabserve.catalog import MODELS
from tabserve.loaded_models import LoadedModels
from tabserve.model_input import from_rows, versioned
from tests.data import instances
from tests.model_versions import VersionStore
from tests.oip_tensors import infer_inputs
from tests.server import PROJECT, ServerProcess
from tests.test_metrics import scrape, total

TOKEN = "versions-test-token-0123456789"
# tritonclient.http adds its own headers to the dict it is given: each call gets a copy.
AUTH = {"authorization": f"Bearer {TOKEN}"}
ROWS = instances("churn", 200, seed=3)


@pytest.fixture(scope="module")
def two_versions(
    version_store: VersionStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """churn's first version as champion, the second loaded beside it as challenger."""
    log = tmp_path_factory.mktemp("versions-server") / "bentoml-serve.log"
    env = {
        **version_store.settings(),
        "TABSERVE_API_TOKEN": TOKEN,
        "TABSERVE_UNLOAD_GRACE_S": "1",
    }
    with ServerProcess.start(log, env, store=version_store.path) as server:
        yield server


def v1_predict(server: ServerProcess, path: str, rows: list[dict[str, Any]]) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/models/{path}:predict", json={"instances": rows}, headers=AUTH
    )


def probabilities(answer: httpx.Response) -> np.ndarray:
    assert answer.status_code == 200, answer.text
    classes = MODELS["churn"].class_names
    return np.array(
        [[p["probabilities"][c] for c in classes] for p in answer.json()["predictions"]]
    )


def test_the_two_versions_disagree_on_some_rows(version_store: VersionStore) -> None:
    """Else every later test could pass with one version serving both routes."""
    first = version_store.expected(version_store.first, ROWS).argmax(axis=1)
    second = version_store.expected(version_store.second, ROWS).argmax(axis=1)
    assert (first != second).any()
    assert not np.allclose(
        version_store.expected(version_store.first, ROWS),
        version_store.expected(version_store.second, ROWS),
    )


def test_a_batch_mixing_versions_scores_each_row_with_its_own(version_store: VersionStore) -> None:
    """The runner's batches merge requests for any version of a model; a version gone scores
    NaN for its rows only (the data plane turns that into a retry)."""
    first, second = version_store.first, version_store.second
    models = LoadedModels(
        {"churn": MODELS["churn"]},
        lambda name: [f"churn:{first}", f"churn:{second}"],
        {},
        threads=1,
        unload_grace_s=0,
        fetch=ModelStore(version_store.path).get,
    )
    spec = MODELS["churn"]
    rows = [tuple(row.get(f) for f in spec.feature_names) for row in ROWS[:40]]
    versions = [first, second, "gone", second] * 10
    batch = np.concatenate(
        [versioned(v, from_rows(spec, [row])) for v, row in zip(versions, rows, strict=True)]
    )
    answer = models.predict_proba("churn", batch)
    for version in (first, second):
        mine = [i for i, v in enumerate(versions) if v == version]
        expected = version_store.expected(version, [ROWS[i] for i in mine])
        np.testing.assert_allclose(answer[mine], expected, atol=1e-6)
    assert np.isnan(answer[[i for i, v in enumerate(versions) if v == "gone"]]).all()


def test_v1_routes_reach_the_version_they_name(
    two_versions: ServerProcess, version_store: VersionStore
) -> None:
    first, second = version_store.first, version_store.second
    for path, version in (
        ("churn", first),
        (f"churn/versions/{first}", first),
        ("churn/versions/champion", first),
        (f"churn/versions/{second}", second),
        ("churn/versions/challenger", second),
    ):
        answer = v1_predict(two_versions, path, ROWS)
        assert answer.json()["model"] == f"churn:{version}", path
        np.testing.assert_allclose(
            probabilities(answer), version_store.expected(version, ROWS), atol=1e-6
        )


def test_models_listing_carries_versions_and_aliases(
    two_versions: ServerProcess, version_store: VersionStore
) -> None:
    listed = httpx.get(f"{two_versions.url}/v1/models/churn", headers=AUTH).json()
    assert listed["tag"] == f"churn:{version_store.first}"
    assert listed["aliases"] == {
        "champion": version_store.first,
        "challenger": version_store.second,
    }
    assert {v["version"]: v["aliases"] for v in listed["versions"]} == {
        version_store.first: ["champion"],
        version_store.second: ["challenger"],
    }
    one = httpx.get(f"{two_versions.url}/v1/models/churn/versions/challenger", headers=AUTH).json()
    assert one["version"] == version_store.second


@pytest.mark.parametrize(
    "path", ["churn/versions/nope", "churn/versions/0"], ids=["unknown", "number"]
)
def test_an_unknown_version_is_a_404_naming_the_loaded_ones(
    two_versions: ServerProcess, version_store: VersionStore, path: str
) -> None:
    answer = v1_predict(two_versions, path, ROWS[:1])
    assert answer.status_code == 404
    message = answer.json()["error"]
    assert version_store.first in message and "challenger" in message


def _response(answer: Any) -> dict[str, Any]:
    """A tritonclient InferResult's response as JSON, whichever transport made it."""
    if isinstance(answer, triton_grpc.InferResult):
        return answer.get_response(as_json=True)
    return answer.get_response()


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_open_inference_model_version_reaches_that_version(
    two_versions: ServerProcess, version_store: VersionStore, transport: str
) -> None:
    client: Any
    if transport == "http":
        module: Any = triton_http
        client = triton_http.InferenceServerClient(two_versions.url.removeprefix("http://"))
    else:
        module = triton_grpc
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{two_versions.grpc_port}")
    rows = ROWS[:50]
    first, second = version_store.first, version_store.second
    for asked, answered in ((first, first), (second, second), ("challenger", second), ("", first)):
        answer = client.infer(
            "churn",
            infer_inputs(module, "churn", rows, binary=True),
            model_version=asked,
            headers=dict(AUTH),
        )
        assert _response(answer)["model_version"] == answered
        np.testing.assert_allclose(
            answer.as_numpy("probabilities"), version_store.expected(answered, rows), atol=1e-6
        )
    with pytest.raises(InferenceServerException, match="no version or alias"):
        client.infer(
            "churn",
            infer_inputs(module, "churn", rows, binary=True),
            model_version="nope",
            headers=dict(AUTH),
        )
    assert client.is_model_ready("churn", second, headers=dict(AUTH))
    if transport == "grpc":  # the protocol's NOT_FOUND, which tritonclient raises
        with pytest.raises(InferenceServerException, match="no version or alias"):
            client.is_model_ready("churn", "nope", headers=dict(AUTH))
    else:  # a 404, which tritonclient reads as "not ready"
        assert not client.is_model_ready("churn", "nope", headers=dict(AUTH))
    metadata = client.get_model_metadata("churn", second, headers=dict(AUTH))
    if transport == "grpc":
        metadata = json.loads(
            json.dumps(client.get_model_metadata("churn", second, headers=dict(AUTH), as_json=True))
        )
    assert set(metadata["versions"]) == {first, second}


def test_tabpy_stays_on_the_champion(
    two_versions: ServerProcess, version_store: VersionStore
) -> None:
    client = Client(f"{two_versions.url}/")
    client.set_credentials("tableau", TOKEN)
    spec = MODELS["churn"]
    rows = ROWS[:20]
    answer = client.query("churn", *[[row[f] for row in rows] for f in spec.feature_names])
    assert answer["tag"] == f"churn:{version_store.first}"
    expected = version_store.expected(version_store.first, rows).argmax(axis=1)
    assert answer["response"] == [spec.class_names[i] for i in expected]


# --- shadow scoring -------------------------------------------------------------------------------
def _shadowed_rows(server: ServerProcess) -> float:
    return total(scrape(server), "tabserve_shadow_comparisons_total", model="churn")


def test_shadow_scoring_compares_the_challenger_row_by_row(
    two_versions: ServerProcess, version_store: VersionStore
) -> None:
    first, second = version_store.first, version_store.second
    before = scrape(two_versions)
    answer = v1_predict(two_versions, "churn", ROWS)
    assert answer.json()["model"] == f"churn:{first}"  # the primary answered, as always
    deadline = time.monotonic() + 30
    while _shadowed_rows(two_versions) < total(
        before, "tabserve_shadow_comparisons_total", model="churn"
    ) + len(ROWS):
        assert time.monotonic() < deadline, "the shadow comparison never came"
        time.sleep(0.2)
    after = scrape(two_versions)

    def grown(name: str, **labels: str) -> float:
        return total(after, name, model="churn", **labels) - total(
            before, name, model="churn", **labels
        )

    primary = version_store.expected(first, ROWS)
    shadow = version_store.expected(second, ROWS)
    disagreeing = int((primary.argmax(axis=1) != shadow.argmax(axis=1)).sum())
    pair = {"version": first, "shadow_version": second}
    assert grown("tabserve_shadow_comparisons_total", outcome="disagree", **pair) == disagreeing
    assert grown("tabserve_shadow_comparisons_total", outcome="agree", **pair) == (
        len(ROWS) - disagreeing
    )
    churned = MODELS["churn"].class_names.index("churned")
    difference = np.abs(primary[:, churned] - shadow[:, churned]).sum()
    assert grown("tabserve_shadow_score_difference_count") == len(ROWS)
    assert grown("tabserve_shadow_score_difference_sum") == pytest.approx(difference, abs=1e-4)
    assert grown("tabserve_shadow_duration_seconds_count") == 1
    assert grown("tabserve_shadow_dropped_total") == 0


# --- the repository API ---------------------------------------------------------------------------
def repository(server: ServerProcess, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v2/repository/{path}",
        json=body,
        headers=kwargs.pop("headers", AUTH),
        timeout=60,
        **kwargs,
    )


def test_the_index_lists_every_loaded_version(
    two_versions: ServerProcess, version_store: VersionStore
) -> None:
    answer = repository(two_versions, "index", {})
    assert answer.status_code == 200, answer.text
    churn = {item["version"]: item for item in answer.json() if item["name"] == "churn"}
    assert churn == {
        version_store.first: {
            "name": "churn", "version": version_store.first, "state": "READY",
            "aliases": ["champion"],
        },
        version_store.second: {
            "name": "churn", "version": version_store.second, "state": "READY",
            "aliases": ["challenger"],
        },
    }  # fmt: skip
    assert {item["name"] for item in answer.json()} == set(MODELS)


def test_changes_need_the_token(two_versions: ServerProcess, server: ServerProcess) -> None:
    body = {"alias": "champion", "version": "x"}
    assert repository(two_versions, "models/churn/aliases", body, headers={}).status_code == 401
    # A service without a token takes no changes at all, and says how to allow them.
    for path, body in (
        ("models/churn/load", {}),
        ("models/churn/unload", {"parameters": {"version": "x"}}),
        ("models/churn/aliases", {"alias": "champion", "version": "x"}),
    ):
        answer = repository(server, path, body, headers={})
        assert answer.status_code == 403, answer.text
        assert "TABSERVE_API_TOKEN" in answer.json()["error"]
    assert repository(server, "index", headers={}).status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        ("models/churn/unload", {}, 422, "parameters"),
        ("models/churn/unload", {"parameters": {}}, 422, "parameters.version"),
        ("models/churn/unload", {"parameters": {"version": 7}}, 422, "parameters.version"),
        ("models/churn/load", {"parameters": {"versoin": "x"}}, 422, "parameters.versoin"),
        ("models/churn/aliases", {"alias": "champion"}, 422, "version"),
        ("models/churn/aliases", {"alias": "no spaces", "version": "x"}, 422, "alias"),
        ("models/churn/aliases", {"alias": "", "version": "x"}, 422, "alias"),
        ("models/churn/aliases", {"alias": "a" * 200, "version": "x"}, 422, "alias"),
        ("models/churn/aliases", {"alias": "champion", "version": None}, 409, "cannot be removed"),
        (
            "models/churn/aliases",
            {"alias": "champion", "version": "nope"},
            404,
            "no loaded version",
        ),
        ("models/churn/load", {"parameters": {"version": "nope"}}, 404, "not in the model store"),
        ("models/churn/load", {"parameters": {"version": "iris:latest"}}, 422, "not of churn"),
        ("models/nope/load", {}, 404, "unknown model"),
        ("models/churn/unload", {"parameters": {"version": "nope"}}, 404, "no loaded version"),
    ],
)
def test_bad_repository_calls_are_refused_clearly(
    two_versions: ServerProcess, path: str, body: Any, status: int, says: str
) -> None:
    answer = repository(two_versions, path, body)
    assert answer.status_code == status, answer.text
    assert says in answer.json()["error"]


def test_bad_repository_bodies_are_refused_clearly(two_versions: ServerProcess) -> None:
    url = f"{two_versions.url}/v2/repository/models/churn/load"
    not_json = httpx.post(
        url, content=b"{nope", headers={**AUTH, "content-type": "application/json"}
    )
    assert not_json.status_code == 400, not_json.text
    text = httpx.post(url, content=b"x", headers={**AUTH, "content-type": "text/plain"})
    assert text.status_code == 415, text.text
    huge = httpx.post(
        url, content=b" " * (64 * 1024 * 1024), headers={**AUTH, "content-type": "application/json"}
    )
    assert huge.status_code == 413, huge.text


def test_an_aliased_version_is_not_unloaded(
    two_versions: ServerProcess, version_store: VersionStore
) -> None:
    answer = repository(
        two_versions, "models/churn/unload", {"parameters": {"version": version_store.second}}
    )
    assert answer.status_code == 409
    assert "challenger" in answer.json()["error"]
    assert v1_predict(two_versions, "churn/versions/challenger", ROWS[:1]).status_code == 200


def _runner_memory_mb(server: ServerProcess) -> float:
    return server.worker("model_runner").memory_full_info().uss / 2**20


def test_unload_frees_the_version_and_load_brings_it_back(
    two_versions: ServerProcess, version_store: VersionStore
) -> None:
    second = version_store.second
    memory = []
    for _ in range(3):
        removed = repository(
            two_versions, "models/churn/aliases", {"alias": "challenger", "version": None}
        )
        assert removed.status_code == 200, removed.text
        unloaded = repository(
            two_versions, "models/churn/unload", {"parameters": {"version": second}}
        )
        assert unloaded.status_code == 200, unloaded.text
        assert [v["version"] for v in unloaded.json()["versions"]] == [version_store.first]
        assert v1_predict(two_versions, f"churn/versions/{second}", ROWS[:1]).status_code == 404
        memory.append(("unloaded", _runner_memory_mb(two_versions)))
        loaded = repository(
            two_versions,
            "models/churn/load",
            {"parameters": {"version": f"churn:{second}", "alias": "challenger"}},
        )
        assert loaded.status_code == 200, loaded.text
        assert loaded.json()["aliases"]["challenger"] == second
        memory.append(("loaded", _runner_memory_mb(two_versions)))
        answer = v1_predict(two_versions, "churn/versions/challenger", ROWS)
        np.testing.assert_allclose(
            probabilities(answer), version_store.expected(second, ROWS), atol=1e-6
        )
    print("runner USS (MB) over unload/load cycles:", [f"{s} {m:.1f}" for s, m in memory])
    unloaded = [m for s, m in memory if s == "unloaded"]
    loaded = [m for s, m in memory if s == "loaded"]
    # Each unload gives the version's memory back (the full churn model is ~2 MB), and the
    # cycles leak none of it: two leaked copies would show as 4 MB.
    assert all(after < before for before, after in zip(loaded, unloaded[1:], strict=False)), memory
    assert unloaded[-1] - unloaded[0] < 3, memory


def test_live_changes_under_load_fail_nothing_and_follow_the_alias(
    two_versions: ServerProcess, version_store: VersionStore, tmp_path: Path
) -> None:
    """A bounded locust run on the unversioned route while the champion moves to the second
    version, the first is unloaded, loaded again and made champion again: no answer is other
    than 200, and each names the version the alias named while its request was in flight."""
    first, second = version_store.first, version_store.second
    log = tmp_path / "answers.jsonl"
    locust = subprocess.Popen(
        [
            sys.executable, "-m", "locust", "-f", "tests/versions_locustfile.py", "--headless",
            "--host", two_versions.url, "--users", "4", "--spawn-rate", "4", "--run-time", "16s",
            "--csv", str(tmp_path / "locust"), "--only-summary",
        ],
        cwd=PROJECT,
        env={**os.environ, "VERSIONS_LOG": str(log), "VERSIONS_TOKEN": TOKEN},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    moves = []  # (started, finished, the champion after)

    def move(path: str, body: dict[str, Any], champion: str) -> None:
        started = time.time()
        answer = repository(two_versions, path, body)
        assert answer.status_code == 200, answer.text
        moves.append((started, time.time(), champion))
        time.sleep(2.5)

    try:
        time.sleep(3)
        move("models/churn/aliases", {"alias": "champion", "version": second}, second)
        move("models/churn/unload", {"parameters": {"version": first}}, second)
        move("models/churn/load", {"parameters": {"version": first, "alias": "champion"}}, first)
        output, _ = locust.communicate(timeout=120)
    finally:
        locust.kill()
    answers = [json.loads(line) for line in log.read_text().splitlines()]
    print(f"{len(answers)} answers during {len(moves)} repository changes")
    print("moves (started, took s):", [(start, round(end - start, 3)) for start, end, _ in moves])
    print("not 200:", [a for a in answers if a["status"] != 200])
    print("slowest:", sorted(answers, key=lambda a: a["sent"] - a["received"])[:3])
    assert len(answers) > 200, output[-3000:]
    assert {a["status"] for a in answers} == {200}, output[-3000:]
    for answer in answers:
        # Accepted before a move finished, a request may be answered by the champion from
        # before it; answered after a move started, by the one after it. Nothing else.
        oldest = _champion_at(answer["sent"], [(end, after) for _, end, after in moves], first)
        newest = _champion_at(answer["received"], [(start, a) for start, _, a in moves], first)
        assert answer["model"] in {f"churn:{oldest}", f"churn:{newest}"}, answer
    assert {a["model"] for a in answers} == {f"churn:{first}", f"churn:{second}"}


def _champion_at(moment: float, moves: list[tuple[float, str]], initial: str) -> str:
    """The champion after the last move (at, champion) at or before `moment`."""
    champion = initial
    for at, after in moves:
        if moment >= at:
            champion = after
    return champion


@pytest.mark.slow
def test_print_primary_latency_with_shadow_on_and_off(
    two_versions: ServerProcess, version_store: VersionStore, tmp_path: Path
) -> None:
    """Shadow scoring must not slow the primary answer: single-row churn requests paced at
    50/s on one connection, against a server without shadow scoring, one shadowing a quarter
    of the requests and this one (every request), alternated over three rounds. Printed for
    the record, not asserted: the machine is shared."""
    base = {k: v for k, v in version_store.settings().items() if k != "TABSERVE_SHADOW"}
    base |= {"TABSERVE_API_TOKEN": TOKEN}
    quarter = json.dumps({"churn": {"target": "challenger", "fraction": 0.25}})
    with (
        ServerProcess.start(tmp_path / "off.log", base, store=version_store.path) as off,
        ServerProcess.start(
            tmp_path / "quarter.log", base | {"TABSERVE_SHADOW": quarter}, store=version_store.path
        ) as some,
    ):
        servers = {"shadow off": off, "shadow 25%": some, "shadow 100%": two_versions}
        rounds: dict[str, list[tuple[float, float]]] = {label: [] for label in servers}
        for _ in range(3):
            for label, server in servers.items():
                rounds[label].append(_paced_latencies(server, requests=400, rate=50))
    off_p99 = np.median([p99 for _, p99 in rounds["shadow off"]])
    for label, measured in rounds.items():
        shown = ", ".join(f"p50 {p50:.2f} / p99 {p99:.2f} ms" for p50, p99 in measured)
        ratio = np.median([p99 for _, p99 in measured]) / off_p99
        print(f"{label}: {shown}; median p99 / shadow off's: {ratio:.2f} (target <= 1.10)")


def _paced_latencies(server: ServerProcess, requests: int, rate: float) -> tuple[float, float]:
    """p50 and p99 (ms) of `requests` single-row predictions sent at `rate` per second."""
    body = {"instances": ROWS[:1]}
    latencies = []
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
        started = time.perf_counter()
        for index in range(requests):
            time.sleep(max(0.0, started + index / rate - time.perf_counter()))
            sent = time.perf_counter()
            answer = client.post("/v1/models/churn:predict", json=body)
            latencies.append((time.perf_counter() - sent) * 1000)
            assert answer.status_code == 200, answer.text
    p50, p99 = np.percentile(latencies, [50, 99])
    return float(p50), float(p99)
