"""`make bench`'s targets table and report, from made-up results of one run: every target of the
issue listed, each verdict decided by its numbers, ratios against the right peer, and the
report and the open-loop plot written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtests.bench.report import markdown, plot_open_loop, summarize
from loadtests.bench.targets import NOT_MEASURED, target_rows


def _run(peer: str, users: int, rps: float, p99_ms: float) -> dict[str, Any]:
    return {
        "repeat": 1, "peer": peer, "users": users, "requests": 1000, "failures": 0, "rps": rps,
        "p50_ms": p99_ms / 2, "p95_ms": p99_ms, "p99_ms": p99_ms, "cpu_s_per_1k": 1.0,
        "ready_s": 4.6, "peak_rss_mb": 480.0, "peak_pss_mb": 400.0,
    }  # fmt: skip


def _open(peer: str, rate: float, cpu_ms: float, phase: str = "sweep") -> dict[str, Any]:
    return {
        "peer": peer, "phase": phase, "offered_rps": rate, "requests": 100, "ok": 100,
        "errors": {}, "achieved_rps": rate, "p50_ms": 2.0, "p99_ms": 9.0, "max_ms": 12.0,
        "p99_from_send_ms": 8.0, "lag_p99_ms": 0.5, "client_cpu_share": 0.1,
        "client_cpu_ms_per_request": 0.2, "server_cpu_ms_per_request": cpu_ms,
        "holds": True, "client_limited": False, "undecided": False,
    }  # fmt: skip


def _lone(peer: str, when: str, p50_ms: float, p99_ms: float) -> dict[str, Any]:
    return {"peer": peer, "when": when, "requests": 500, "errors": 0, "rps": 400,
            "p50_ms": p50_ms, "p99_ms": p99_ms, "max_ms": 7.0}  # fmt: skip


def _search(peer: str, highest: float, undecided_at: float | None = None) -> dict[str, Any]:
    return {"peer": peer, "highest_holding": highest, "lowest_failing": highest * 1.04,
            "undecided_at": undecided_at, "runs": 4}  # fmt: skip


def _results(our_highest_rate: float = 1700) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    runs = [
        _run("tabserve", 32, 2500, 40), _run("tabserve", 1, 600, 4),
        _run("flask-gunicorn", 32, 1200, 42), _run("flask-dev", 32, 470, 120),
    ]  # fmt: skip
    extras = {
        "ceilings": [{"name": "xgboost inplace_predict", "single_row_per_s": 8600,
                      "batch_rows_per_s": 556_000}],
        "batches": {"tabserve": {"batch_rows_per_s": 300_000, "batch_rows_per_s_grpc": 250_000,
                                 "big_batch_rows_per_s_oip": 400_000}},
        "open_loop": [
            _open("tabserve", 10, 1.2), _open("tabserve", 50, 1.4), _open("tabserve", 100, 0.9),
            _open("flask-dev", 10, 3.0), _open("flask-dev", 50, 2.0),
        ],
        "lone": [_lone("tabserve", "fresh", 1.5, 4.0),
                 _lone("tabserve", "after 32 users", 3.0, 4.5)],
        "searches": [_search("tabserve", our_highest_rate), _search("flask-gunicorn", 800),
                     _search("flask-dev", 300)],
    }  # fmt: skip
    return runs, extras


_CONTEXT = {"started": "now", "load_before": (0, 0, 0), "load_after": (0, 0, 0), "cores": 2,
            "seconds": {1: 10, 32: 15}, "repeats": 1, "peers": {}, "open_seconds": 8,
            "lone_seconds": 5}  # fmt: skip


def _verdicts(runs: list[dict[str, Any]], extras: dict[str, Any]) -> dict[str, str]:
    return {row.target: row.verdict for row in target_rows(summarize(runs), "tabserve", extras)}


def test_a_target_the_run_did_not_measure_is_listed_as_not_measured() -> None:
    runs, extras = _results()
    del extras["batches"]["tabserve"]["batch_rows_per_s_grpc"]
    target = "1000-row requests over OIP gRPC: >= 50% of in-process rows/s"
    assert _verdicts(runs, extras)[target] == NOT_MEASURED


def test_every_target_is_listed_with_the_verdict_its_numbers_give() -> None:
    assert list(_verdicts(*_results()).items()) == [
        ("server CPU per request at 10-50 req/s <= 1.5 ms, all processes", "PASS"),
        ("... and <= 0.5x flask-dev's", "**FAIL**"),  # 1.4 / 2.0 at 50 req/s
        ("1 user, fresh: p50 <= 2 ms, p99 <= 5 ms", "PASS"),
        ("1 user, after 32 users: p50 <= 2 ms, p99 <= 5 ms", "**FAIL**"),
        ("32 users: >= 2x the best peer's req/s", "PASS"),
        ("32 users: p99 <= 50 ms, no failures", "PASS"),
        ("highest open-loop rate with p99 <= 50 ms: >= 2x the best peer's", "PASS"),
        ("1000-row requests over V1: >= 50% of in-process rows/s", "PASS"),
        ("1000-row requests over OIP gRPC: >= 50% of in-process rows/s", "**FAIL**"),  # 45%
        ("10,000-row requests over OIP binary: >= 70% of in-process rows/s", "PASS"),  # 72%
        ("memory: summed PSS <= 500 MB with all models", "PASS"),
        ("ready <= 5 s after start", "PASS"),
    ]


def test_ratio_targets_name_the_peer_and_the_ratio() -> None:
    runs, extras = _results()
    rows = {row.target: row for row in target_rows(summarize(runs), "tabserve", extras)}
    assert rows["... and <= 0.5x flask-dev's"].versus == (
        "3.00 ms (0.40x) at 10/s, 2.00 ms (0.70x) at 50/s"
    )
    assert rows["32 users: >= 2x the best peer's req/s"].versus == (
        "flask-gunicorn: 1200 req/s (2.08x)"
    )
    highest = rows["highest open-loop rate with p99 <= 50 ms: >= 2x the best peer's"]
    assert (highest.measured, highest.versus) == ("1700 req/s", "flask-gunicorn: 800 req/s (2.12x)")


def test_a_highest_rate_short_of_the_target_where_our_client_gave_out_is_undecided() -> None:
    runs, extras = _results(our_highest_rate=1500)
    target = "highest open-loop rate with p99 <= 50 ms: >= 2x the best peer's"
    assert _verdicts(runs, extras)[target] == "**FAIL**"
    extras["searches"][0]["undecided_at"] = 1600
    assert _verdicts(runs, extras)[target] == "undecided: the client was late or busy"


def test_the_report_holds_every_table_and_the_open_loop_plot_is_written(tmp_path: Path) -> None:
    runs, extras = _results()
    report = markdown(runs, ["tabserve"], extras, _CONTEXT)
    assert "| tabserve | after 32 users | 500 | 400 | 3.00 | 4.50 | 7.0 | 0 |" in report
    assert "| tabserve | 100 | 100 | 2.0 | 9.0 | 12 | 0 | 0.90 | 0.20 (10%) | 0.5 | yes |" in report
    searched = "- flask-gunicorn: highest rate with p99 <= 50 ms 800 req/s; 832 req/s did not"
    assert f"{searched} (search runs: 4)" in report
    assert "| ready <= 5 s after start | 4.6 s (slowest start) | - | PASS |" in report
    plot_open_loop(extras["open_loop"], tmp_path / "openloop.png")
    assert (tmp_path / "openloop.png").read_bytes().startswith(b"\x89PNG")


def test_our_other_variant_is_not_a_peer_and_gets_its_own_targets_table() -> None:
    """Split and inline modes run side by side: neither is the other's "best peer"."""
    runs, extras = _results()
    runs.append(_run("tabserve-inline", 32, 9000, 30))  # faster than anything else
    extras["searches"].append(_search("tabserve-inline", 5000))
    extras["batches"]["tabserve-inline"] = {"batch_rows_per_s": 100_000}
    rows = {
        row.target: row
        for row in target_rows(summarize(runs), "tabserve", extras, others=["tabserve-inline"])
    }
    assert rows["32 users: >= 2x the best peer's req/s"].versus == (
        "flask-gunicorn: 1200 req/s (2.08x)"
    )
    highest = rows["highest open-loop rate with p99 <= 50 ms: >= 2x the best peer's"]
    assert highest.versus == "flask-gunicorn: 800 req/s (2.12x)"
    report = markdown(runs, ["tabserve", "tabserve-inline"], extras, _CONTEXT)
    assert "Targets of the issue for tabserve, all from this run:" in report
    assert "Targets of the issue for tabserve-inline, all from this run:" in report
    inline_v1 = "| 1000-row requests over V1: >= 50% of in-process rows/s | 100000 rows/s (18%) |"
    assert inline_v1 in report
    inline_32 = (
        "| tabserve-inline | 32 | 9000 (9000) | 15 | 30 | 30 | 1.00 | 0 | 480 / 400 | 4.6 | 7.50x |"
    )
    assert inline_32 in report
