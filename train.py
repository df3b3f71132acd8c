"""Train every model of the catalog on its data set, evaluate it and save it to the model store.

    python train.py                 # all models
    python train.py --only churn    # one model (repeatable)
    python train.py --if-missing    # only models the store lacks (used by `make serve`), or has
                                    # from before file digests were recorded
    python train.py --fast          # small ensembles: for tests, not for serving

The model store is BentoML's: $BENTOML_HOME/models (default ~/bentoml/models).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

import bentoml
from bentoml.exceptions import NotFound
from tqdm import tqdm

from tabserve.catalog import MODELS
from tabserve.datasets import DATA_DIR
from tabserve.integrity import DIGESTS_KEY
from tabserve.training import save, train


def _in_store(name: str) -> bool:
    """A version is in the store, with the file digests loading checks: a model saved before
    they were recorded would be refused at load, so it counts as missing."""
    try:
        model = bentoml.models.get(f"{name}:latest")
    except NotFound:
        return False
    return DIGESTS_KEY in model.info.metadata


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(MODELS),
        metavar="NAME",
        help=f"train only this model (repeatable); one of {', '.join(MODELS)}",
    )
    parser.add_argument("--fast", action="store_true", help="small models, for tests")
    parser.add_argument(
        "--if-missing",
        action="store_true",
        help="skip models that already have a version (with file digests) in the store",
    )
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="where the CSV files are")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    names = args.only or list(MODELS)
    if args.if_missing:
        names = [name for name in names if not _in_store(name)]
        if not names:
            print("All models are in the store; nothing to train.")
            return 0

    rows = []
    progress = tqdm(names, desc="training", unit="model", file=sys.stderr)
    for name in progress:
        progress.set_postfix_str(name)
        trained = train(MODELS[name], data_dir=args.data_dir, fast=args.fast)
        model = save(trained)
        rows.append((str(model.tag), trained.rows, trained.metrics))

    print(f"\n{'model':<34} {'rows':>6}  hold-out metrics (25% stratified)")
    for tag, count, metrics in rows:
        shown = "  ".join(f"{metric}={value:.3f}" for metric, value in metrics.items())
        print(f"{tag:<34} {count:>6}  {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
