"""`tabserve`: the project's commands behind one console script (`pip install -e .` installs it).

Each command hands the rest of its command line to the code that implements it, so
`tabserve <command> --help` shows that code's own options; nothing is parsed twice.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

# The source checkout this package was installed from (editable install): service.py, train.py
# and loadtests/ live there, outside the package.
CHECKOUT = Path(__file__).resolve().parent.parent


def serve(argv: list[str]) -> NoReturn:
    """`bentoml serve service:ModelAPI` with every listener (HTTP, gRPC, metrics) on one host."""
    parser = argparse.ArgumentParser(
        prog="tabserve serve",
        description="Serve the models (bentoml serve service:ModelAPI). Options after these go "
        "to bentoml serve; TABSERVE_* settings come from the environment (README).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address of HTTP, gRPC and metrics")
    parser.add_argument("--port", type=int, default=3000, help="HTTP port")
    parser.add_argument("--metrics-port", type=int, help="/metrics port (TABSERVE_METRICS_PORT)")
    args, bentoml_args = parser.parse_known_args(argv)
    env = {**os.environ, "TABSERVE_GRPC_HOST": args.host, "TABSERVE_METRICS_HOST": args.host}
    if args.metrics_port is not None:
        env["TABSERVE_METRICS_PORT"] = str(args.metrics_port)
    command = [sys.executable, "-m", "bentoml", "serve", "service:ModelAPI",
               "--working-dir", str(CHECKOUT), "--host", args.host, "--port", str(args.port),
               *bentoml_args]  # fmt: skip
    # Replaced, not wrapped: signals (Ctrl-C, a supervisor's SIGTERM) reach bentoml directly.
    os.execve(sys.executable, command, env)


def program_name(module: str) -> str:
    """A command's name in its usage lines: `tabserve <command>` when `main` below ran it, else
    how a module is run (`python -m tabserve.batch`)."""
    return sys.argv[0] if sys.argv[0].startswith("tabserve ") else f"python -m {module}"


def main_of(module: str) -> Callable[[list[str]], int]:
    """The `main(argv) -> int` of a module, imported only when its command runs."""
    return lambda argv: importlib.import_module(module).main(argv)


@dataclass(frozen=True)
class Command:
    what: str
    run: Callable[[list[str]], int]
    # service.py, train.py and loadtests/ are in the checkout, not in the installed package.
    needs_checkout: bool = True


COMMANDS = {
    "train": Command("train, evaluate and save the models (train.py)", main_of("train")),
    "serve": Command("serve the models (bentoml serve service:ModelAPI)", serve),
    "batch": Command("score a CSV file offline", main_of("tabserve.batch"), needs_checkout=False),
    "drift": Command(
        "compare rows with a model's training data (PSI report)",
        main_of("tabserve.drift.report"),
        needs_checkout=False,
    ),
    "loadtest": Command("a bounded locust run, judged by thresholds", main_of("loadtests.run")),
    "soak": Command("minutes of mixed traffic, watched", main_of("loadtests.soak.__main__")),
    "bench": Command("tabserve against its peers, side by side", main_of("loadtests.bench.run")),
}


def _parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<10} {command.what}" for name, command in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="tabserve",
        description="tabserve's commands; `tabserve <command> --help` for each one's options.",
        epilog=f"commands:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=COMMANDS, metavar="command", help="one of the below")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # No usage analytics from anything this project starts.
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    # Only the command name is ours: -h, a missing or an unknown command end here (exit 0 or 2).
    name = _parser().parse_args(argv[:1]).command
    command = COMMANDS[name]
    if command.needs_checkout:
        if not (CHECKOUT / "service.py").is_file():
            print(
                f"tabserve {name} runs from a source checkout (service.py, train.py, loadtests/):"
                " install it with `pip install -e <checkout>`",
                file=sys.stderr,
            )
            return 2
        sys.path.insert(0, str(CHECKOUT))
    # The command's own usage lines then read `tabserve <command> ...`.
    sys.argv[0] = f"tabserve {name}"
    return command.run(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
