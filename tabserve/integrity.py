"""The model files in the store are the ones training wrote: their SHA-256 digests are recorded
at save and checked at load, before any file is read by a framework.

A pickle runs code when it is loaded, so a model file altered or swapped in the store (a shared
volume, a copied bento, a bad disk) has to be refused before it is unpickled, not noticed after.
`record` writes each file's digest into the model's metadata, i.e. BentoML's model.yaml (which
holds the metadata, so cannot hold its own digest). `verify` recomputes them and raises
`ModelIntegrityError`, naming the model and the file, when anything differs.

A model saved before digests were recorded is refused too, with the command that retrains it:
its files cannot be told apart from tampered ones, and serving an unverifiable pickle is not a
default a production team wants.
"""

from __future__ import annotations

from pathlib import Path

import bentoml

from tabserve.datasets import sha256_of

DIGESTS_KEY = "file_sha256"
MODEL_YAML = "model.yaml"  # BentoML's record of the model: metadata, labels, signatures


class ModelIntegrityError(RuntimeError):
    """A stored model whose files are not provably the ones training wrote."""


def file_digests(model_dir: Path) -> dict[str, str]:
    """SHA-256 of every file of the stored model but model.yaml, by path within the model."""
    return {
        path.relative_to(model_dir).as_posix(): sha256_of(path)
        for path in sorted(model_dir.rglob("*"))
        if path.is_file() and path.relative_to(model_dir).as_posix() != MODEL_YAML
    }


def record(model: bentoml.Model) -> None:
    """Add the digests of the stored model's files to its metadata (rewrites its model.yaml)."""
    model.info.metadata[DIGESTS_KEY] = file_digests(Path(model.path))
    model.flush()


def verify(model: bentoml.Model) -> None:
    """Raise ModelIntegrityError unless every file matches the digests recorded at save."""
    retrain = f"retrain it: python train.py --only {model.tag.name}"
    recorded: dict[str, str] | None = model.info.metadata.get(DIGESTS_KEY)
    if recorded is None:
        raise ModelIntegrityError(
            f"model {model.tag}: no file digests in its metadata (saved before tabserve "
            f"recorded them), so its files cannot be verified; refusing to load it; {retrain}"
        )
    found = file_digests(Path(model.path))
    for name in sorted(recorded.keys() | found.keys()):
        if name not in found:
            problem = "is missing"
        elif name not in recorded:
            problem = "was not written by training"
        elif found[name] != recorded[name]:
            problem = f"has SHA-256 {found[name]}, not the {recorded[name]} recorded at training"
        else:
            continue
        raise ModelIntegrityError(
            f"model {model.tag}: file {name} {problem}; refusing to load it; restore the "
            f"model or {retrain}"
        )
