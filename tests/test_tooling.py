"""The tools around the service, run for real: the system-package check as a user who cannot
install (not root, or not Debian), the Makefile's help and Python check, and the `tabserve`
console script serving, training and scoring."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.local_process import free_port, stop_process_group, wait_until_ready
from tests.server import PROJECT
from tests.system_packages import packages, require

INSTALL_SCRIPT = PROJECT / "scripts" / "install-system-packages.sh"
PACKAGE_LIST = PROJECT / "scripts" / "system-packages.txt"
TABSERVE = Path(sys.executable).with_name("tabserve")
MAKEFILE = (PROJECT / "Makefile").read_text()


# --- system packages: what is missing, and which suites skip -------------------------------------
def check_packages(path: str, *, ci: bool = False) -> tuple[int, str]:
    """(exit code, output) of the install script with this PATH (and CI set or not)."""
    env = {"PATH": path, **({"CI": "true"} if ci else {})}
    command = ["/bin/bash", str(INSTALL_SCRIPT)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def readable_copy() -> Iterator[Path]:
    """The script and its list where an unprivileged user can read them (a CI clone may sit in
    root's home), plus an empty folder for PATH."""
    folder = Path(tempfile.mkdtemp(prefix="tabserve-packages-"))
    try:
        for source in (INSTALL_SCRIPT, PACKAGE_LIST):
            shutil.copy(source, folder)
        (folder / "bin").mkdir()
        for path in (folder, folder / "bin", *folder.iterdir()):
            path.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder)


def test_without_apt_get_it_names_each_missing_package_and_the_suites_that_skip() -> None:
    code, output = check_packages("/nonexistent")
    assert code == 0, output
    assert "not installed: there is no apt-get (not a Debian system)" in output
    # Programs on PATH are missing; the keyring (an absolute path) is there on this machine.
    assert re.search(r"chromium +no chromium; skipped: tests/test_web\.py", output), output
    assert re.search(
        r"prometheus +no prometheus promtool; skipped: tests/test_prometheus\.py "
        r"tests/test_alerts\.py",
        output,
    ), output
    assert "Install them with: sudo apt-get install -y buildah" in output
    assert "Every other suite runs" in output


def test_in_ci_a_missing_package_fails_the_run() -> None:
    code, output = check_packages("/nonexistent", ci=True)
    assert code == 1
    assert "chromium" in output and "CI is set: a missing package fails the run" in output


def test_a_user_who_is_not_root_is_told_why_nothing_was_installed(readable_copy: Path) -> None:
    """The real apt-get on PATH, run as an unprivileged user (nobody, when the tests are root)."""
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        pytest.skip("no apt-get on this machine: the not-Debian case is tested above")
    (readable_copy / "bin" / "apt-get").symlink_to(apt_get)
    nobody = [
        shutil.which("setpriv") or "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
    ]
    user = nobody if os.geteuid() == 0 else []
    script = readable_copy / INSTALL_SCRIPT.name
    env = {"PATH": str(readable_copy / "bin")}
    done = subprocess.run(
        [*user, "/bin/bash", str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "not installed: not root, and no sudo that needs no password." in output, output
    assert "chromium" in output and "Installing" not in output


def test_a_test_asking_for_a_missing_package_is_skipped_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"Debian package chromium \(chromium not"):
        require("chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="Debian package prometheus"):
        require("prometheus")


def test_a_suite_runs_what_it_can_without_its_package(tmp_path: Path) -> None:
    """tests/test_alerts.py with no promtool: its promtool tests skip with the package named, its
    other tests pass."""
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PATH": str(tmp_path)}
    command = [sys.executable, "-m", "pytest", "tests/test_alerts.py", "-p", "no:cacheprovider"]
    done = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    counts = re.search(r"\b(\d+) passed, (\d+) skipped\b", done.stdout)
    assert counts and min(map(int, counts.groups())) > 0, done.stdout[-3000:]
    assert "needs the Debian package prometheus (prometheus, promtool not found)" in done.stdout


def test_the_package_list_names_the_suites_that_ask_for_each_package() -> None:
    """What the script prints as skipped is what skips: each suite named for a package calls
    require() with it, and each require() call is in a suite named for its packages."""
    asked: dict[str, set[str]] = {}
    for path in sorted((PROJECT / "tests").rglob("test_*.py")):
        for call in re.findall(r"\brequire\(([^)]*)\)", path.read_text()):
            for name in re.findall(r'"([\w.+-]+)"', call):
                asked.setdefault(name, set()).add(str(path.relative_to(PROJECT)))
    listed = {name: set(package.suites) for name, package in packages().items()}
    # test_tooling.py itself asks for packages only to check require()'s answers.
    asked = {name: suites - {"tests/test_tooling.py"} for name, suites in asked.items()}
    assert asked == listed


# --- the Makefile --------------------------------------------------------------------------------
def make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_lists_every_target_and_every_variable_with_its_value() -> None:
    shown = make("help", "PORT=4321", "SOAK_RATE=7").stdout
    targets = {t for line in re.findall(r"^\.PHONY:(.*)$", MAKEFILE, re.M) for t in line.split()}
    for target in targets:
        assert re.search(rf"^  make {re.escape(target)} +\S", shown, re.M), target
    for variable in re.findall(r"^([A-Z_]+) *\?=", MAKEFILE, re.M):
        assert re.search(rf"^  {variable} +\S.* \S+$", shown, re.M), variable
    assert re.search(r"^  PORT +HTTP port +4321$", shown, re.M)
    assert re.search(r"^  SOAK_RATE .* 7$", shown, re.M)


def test_a_python_that_is_not_there_is_named_with_the_variable_to_set(tmp_path: Path) -> None:
    done = make("serve", "PYTHON=/nonexistent/python3", f"VENV={tmp_path / 'venv'}")
    assert done.returncode != 0
    assert (
        "tabserve needs Python 3.11, and PYTHON=/nonexistent/python3 is not found." in done.stderr
    )
    assert "make serve PYTHON=/path/to/python3.11" in done.stderr
    assert not (tmp_path / "venv").exists()


def test_serve_installs_the_runtime_dependencies_only(tmp_path: Path) -> None:
    """The recipes make would run in a fresh venv (`make -n`): serve never installs the dev
    extra; the tests do."""
    venv = f"VENV={tmp_path / 'venv'}"
    serve = make("-n", "serve", venv).stdout
    assert "--editable .\n" in serve and "[dev]" not in serve
    assert "tabserve train --if-missing" in serve and "tabserve serve --host" in serve
    assert "--editable '.[dev]'" in make("-n", "test", venv).stdout


def test_test_fast_needs_no_system_package(tmp_path: Path) -> None:
    venv = f"VENV={tmp_path / 'venv'}"
    assert "install-system-packages.sh" not in make("-n", "test-fast", venv).stdout
    assert "install-system-packages.sh" in make("-n", "test", venv).stdout


# --- the console script --------------------------------------------------------------------------
def tabserve(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    if not TABSERVE.exists():
        pytest.fail(f"{TABSERVE} is missing: `make install` (pip install -e .) installs it")
    return subprocess.run(
        [str(TABSERVE), *args], capture_output=True, text=True, timeout=120, **kwargs
    )


def test_help_lists_the_commands() -> None:
    done = tabserve("--help")
    assert done.returncode == 0
    for command in ("train", "serve", "batch", "drift", "loadtest", "soak", "bench"):
        assert re.search(rf"^  {command} +\w", done.stdout, re.M), command


@pytest.mark.parametrize("args", [["no-such-command"], []], ids=["unknown", "none"])
def test_an_unknown_or_missing_command_exits_2(args: list[str]) -> None:
    done = tabserve(*args)
    assert done.returncode == 2
    assert "usage: tabserve" in done.stderr


@pytest.mark.parametrize(
    "command", ["train", "serve", "batch", "drift", "loadtest", "soak", "bench"]
)
def test_each_command_shows_its_own_options(command: str) -> None:
    done = tabserve(command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: tabserve {command} ")


def test_train_and_batch_run_the_project_code(trained_store: Path, tmp_path: Path) -> None:
    assert "nothing to train" in tabserve("train", "--if-missing").stdout
    rows = tmp_path / "in.csv"
    rows.write_text(
        "sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm\n5.1,3.5,1.4,0.2\n"
    )
    scored = tmp_path / "out.csv"
    done = tabserve("batch", "--model", "iris", "--input", str(rows), "--output", str(scored))
    assert done.returncode == 0, done.stderr
    assert scored.read_text().splitlines()[1].split(",")[4] == "setosa"


def test_serve_listens_on_the_given_host_for_http_grpc_and_metrics(
    trained_store: Path, tmp_path: Path
) -> None:
    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    log = tmp_path / "serve.log"
    command = [str(TABSERVE), "serve", "--port", str(port), "--metrics-port", str(metrics_port)]
    env = {**os.environ, "TABSERVE_GRPC_PORT": str(grpc_port)}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until_ready(process, f"http://127.0.0.1:{port}/readyz", log, 120)
        iris = "sepal_length_cm=5.1&sepal_width_cm=3.5&petal_length_cm=1.4&petal_width_cm=0.2"
        answer = httpx.get(f"http://127.0.0.1:{port}/v1/models/iris:predict?{iris}")
        assert answer.json()["predictions"][0]["label"] == "setosa"
        assert "tabserve_" in httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        listening = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True).stdout
        for bound in (port, grpc_port, metrics_port):
            assert re.search(rf"(127\.0\.0\.1|\[::ffff:127\.0\.0\.1\]):{bound}\b", listening)
    finally:
        stop_process_group(process, 30)
