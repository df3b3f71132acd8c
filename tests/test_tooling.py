"""The tools around the service, run for real: the system-package check as a user who cannot
install (not root, or not Debian)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import PROJECT
from tests.system_packages import packages, require

INSTALL_SCRIPT = PROJECT / "scripts" / "install-system-packages.sh"
PACKAGE_LIST = PROJECT / "scripts" / "system-packages.txt"


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
    assert re.search(r"\b3 passed, 3 skipped\b", done.stdout), done.stdout[-3000:]
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
