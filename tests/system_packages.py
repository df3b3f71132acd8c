"""The Debian packages of scripts/system-packages.txt, seen from the tests.

A test that needs one calls `require("<package>")`: when what the package provides is missing,
the test is skipped with a reason naming the package, so a machine where `make system-deps`
cannot install (not root, not Debian) still runs every other suite. When CI is set the test
fails instead: CI installs every package, and a skip there would hide a broken set-up.
Tools that are not Debian packages (checkov, in a venv of its own) follow the same rule through
`missing`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import NoReturn

import pytest

PACKAGE_LIST = Path(__file__).resolve().parent.parent / "scripts" / "system-packages.txt"
# As in scripts/install-system-packages.sh: sbin programs (runc, debootstrap) count even when a
# user's PATH leaves sbin out.
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


@dataclass(frozen=True)
class SystemPackage:
    name: str
    provides: tuple[str, ...]  # programs looked up on PATH, or absolute paths
    suites: tuple[str, ...]  # the test files that need it

    def absent(self) -> list[str]:
        search = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])

        def found(item: str) -> bool:
            return (
                Path(item).exists()
                if item.startswith("/")
                else bool(shutil.which(item, path=search))
            )

        return [item for item in self.provides if not found(item)]


@cache
def packages(path: Path = PACKAGE_LIST) -> dict[str, SystemPackage]:
    listed = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, provides, *suites = line.split()
        listed[name] = SystemPackage(name, tuple(provides.split(",")), tuple(suites))
    return listed


def require(*names: str) -> None:
    """Skip the calling test (fail it when CI is set) unless these packages are installed."""
    for name in names:
        if absent := packages()[name].absent():
            missing(
                f"needs the Debian package {name} ({', '.join(absent)} not found); "
                "`make system-deps` installs it"
            )


def missing(message: str) -> NoReturn:
    """A tool the calling test needs is missing: skip it with `message` (which names the tool
    and how to install it), or fail it when CI is set."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
