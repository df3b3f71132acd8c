"""A `bentoml serve` whose metrics no other test server can wipe.

BentoML keeps the per-process metric files in $BENTOML_HOME/prometheus_multiproc_dir and empties
that directory whenever a server starts: two servers sharing a home lose each other's metrics
(the first one's /metrics then shows the second one's files). A server here gets a home of its
own, with the trained models linked in from the shared test store.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from tests.server import ServerProcess


@contextlib.contextmanager
def own_home_server(
    store: Path, workdir: Path, env: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    home = workdir / "bentoml-home"
    home.mkdir()
    (home / "models").symlink_to(store / "models", target_is_directory=True)
    env = {"BENTOML_HOME": str(home), **(env or {})}
    with ServerProcess.start(workdir / "bentoml-serve.log", env=env) as server:
        yield server
