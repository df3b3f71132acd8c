"""The models of the catalog loaded in one process, in every version asked for, each call timed.

The runner service holds one of these; so does each API worker in inline mode
(`TABSERVE_INLINE_MODELS`, tabserve/inline.py). Importing this module imports the ML libraries
(~155 MB per process): only a process that holds models imports it.

Versions and aliases (docs/protocols.md, "Model versions"): every model has one or more loaded
versions and a set of aliases naming them; `champion` always names one, and the unversioned
routes follow it. The repository API (tabserve/protocols/repository.py) loads and unloads
versions and moves aliases while requests flow:
- a load reads the version into memory first and then publishes it in one dict assignment;
- an unload first stops the version taking new requests (it leaves the aliases and the listing,
  so API workers stop routing to it within their next refresh), waits `unload_grace_s` for the
  requests already routed there, then drops it; a call still holding it finishes on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import bentoml
import numpy as np
from bentoml.exceptions import NotFound
from threadpoolctl import threadpool_limits

from tabserve import metrics, model_input
from tabserve.catalog import ModelSpec
from tabserve.inference import LoadedModel
from tabserve.schemas import DEFAULT_ALIAS, RepositoryAnswer, Row, is_alias_name


class RepositoryRefusal(Exception):
    """A repository call that cannot be done as asked: `status` is its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class LoadedModels:
    def __init__(
        self,
        specs: Mapping[str, ModelSpec],
        tags: Callable[[str], Sequence[str]],
        aliases: Mapping[str, Mapping[str, str]],
        threads: int,
        unload_grace_s: float,
        fetch: Callable[[str], bentoml.Model] = bentoml.models.get,
    ) -> None:
        """`tags(name)`: the model's tags to load, the default (champion) first; `aliases`: more
        aliases per model ({alias: version}); `fetch(tag)`: the model store's entry for a tag."""
        self._specs = specs
        self._threads = threads
        self._unload_grace_s = unload_grace_s
        self._fetch = fetch
        # Repository calls come from the runner's thread pool: one at a time.
        self._changes = threading.Lock()
        metrics.record_models_loading(specs)
        self.loaded: dict[str, dict[str, LoadedModel]] = {name: {} for name in specs}
        self.aliases: dict[str, dict[str, str]] = {name: {} for name in specs}
        for name in specs:
            default, *others = tags(name)
            champion = self._load(name, default)
            for tag in others:
                self._load(name, tag)
            self._set_alias(name, DEFAULT_ALIAS, champion)
            for alias, version in aliases.get(name, {}).items():
                self._set_alias(name, alias, metrics.version_of(version))
        # Once the models are loaded, every library's thread pool exists: scikit-learn's OpenMP
        # (HistGradientBoosting) and numpy's BLAS start a thread per core, and on a pod's CPU
        # share the idle ones spin (one admission row cost 117 ms of CPU with 2 threads on 2
        # cores). XGBoost gets the same count as its nthread (LoadedModel).
        threadpool_limits(limits=threads)

    # --- serving ---------------------------------------------------------------------------
    def describe(self) -> list[dict[str, Any]]:
        """Every loaded version: name, resolved tag, framework, metadata, version, aliases."""
        return [
            {**vars(model.info), "aliases": self._aliases_of(name, version)}
            for name, versions in self.loaded.items()
            for version, model in versions.items()
        ]

    def _aliases_of(self, model_name: str, version: str) -> list[str]:
        return sorted(a for a, v in self.aliases[model_name].items() if v == version)

    def predict_proba(self, model_name: str, batch: np.ndarray) -> np.ndarray:
        """Each row of a versioned batch (tabserve/model_input.py) scored by the version it
        names. A version not loaded (unloaded after an API worker routed to it, a race the grace
        period makes rare) scores NaN: the batch's other requests still get their answers, and
        that request is told to retry."""
        versions = self.loaded[model_name]
        names, features = model_input.unversioned(batch)
        first = names[0]
        with metrics.inference_timer(model_name, len(batch)):
            if first in versions and (names == first).all():
                # Nearly always: one version per batch, the model's answer as it is.
                return versions[first].predict_proba(features)
            answer = np.full((len(batch), len(self._specs[model_name].class_names)), np.nan)
            for name in np.unique(names):
                model = versions.get(name)
                if model is not None:
                    positions = np.flatnonzero(names == name)
                    answer[positions] = model.predict_proba(features[positions])
        return answer

    def explain(self, model_name: str, version: str, rows: list[Row]) -> dict[str, Any]:
        """Probabilities and per-feature contributions (tabserve/explanations.py), as plain JSON:
        a few thousand numbers at most (explain_max_rows), cheap to send from the runner."""
        model = self.loaded[model_name].get(version)
        if model is None:
            return {"missing": version}
        with metrics.explanation_timer(model_name):
            probabilities = model.predict_proba(rows)
            explanation = model.explain(rows)
        return {
            "probabilities": probabilities.tolist(),
            "contributions": explanation.contributions.tolist(),
            "outputs": list(explanation.outputs),
            "scale": explanation.scale,
            "tokens": explanation.tokens,
        }

    # --- the repository --------------------------------------------------------------------
    def load(self, model_name: str, version: str) -> RepositoryAnswer:
        """Load a version from the model store (`latest`: the newest there); already loaded is
        fine. Answers the model's versions, or the refusal."""
        return self._change(lambda: self._load(model_name, version), model_name)

    def unload(self, model_name: str, version: str) -> RepositoryAnswer:
        return self._change(lambda: self._unload(model_name, version), model_name)

    def set_alias(self, model_name: str, alias: str, version: str | None) -> RepositoryAnswer:
        """Point an alias at a loaded version; None removes it (never `champion`)."""
        return self._change(lambda: self._set_alias(model_name, alias, version), model_name)

    def _change(self, change: Callable[[], str | None], model_name: str) -> RepositoryAnswer:
        """`change()` returns the version it made or moved to (None: it removed something)."""
        if model_name not in self._specs:
            return {"status": 404, "error": f"unknown model {model_name!r}"}
        with self._changes:
            try:
                version = change()
            except RepositoryRefusal as refusal:
                return {"status": refusal.status, "error": str(refusal)}
        versions = [item for item in self.describe() if item["name"] == model_name]
        return {"status": 200, "version": version, "versions": versions}

    def _load(self, model_name: str, tag_or_version: str) -> str:
        tag = tag_or_version if ":" in tag_or_version else f"{model_name}:{tag_or_version}"
        try:
            stored = self._fetch(tag)
        except NotFound:
            raise RepositoryRefusal(
                404, f"{tag} is not in the model store this service reads"
            ) from None
        if stored.tag.name != model_name:
            raise RepositoryRefusal(
                422, f"{tag} is a version of {stored.tag.name}, not of {model_name}"
            )
        version = str(stored.tag.version)
        if version not in self.loaded[model_name]:
            model = LoadedModel(self._specs[model_name], stored, self._threads)
            # A new dict, swapped in whole: a predict call looking versions up never sees a
            # half-made one.
            self.loaded[model_name] = {**self.loaded[model_name], version: model}
            metrics.record_model_loaded(model.info)
        return version

    def _unload(self, model_name: str, version: str) -> str | None:
        model = self._loaded_version(model_name, version)
        named = self._aliases_of(model_name, version)
        if named:
            raise RepositoryRefusal(
                409,
                f"{model_name} version {version} is aliased {', '.join(named)}: point the "
                "alias at another version (or remove it) first",
            )
        remaining = {v: m for v, m in self.loaded[model_name].items() if v != version}
        self.loaded[model_name] = remaining
        metrics.record_model_unloaded(model.info)
        # API workers route by the listing they refreshed last (at most ~1 s old): requests
        # routed here before it changed may still come. The version keeps answering them
        # until the grace ends, from this reference.
        time.sleep(self._unload_grace_s)
        del model
        _release_memory()
        return None

    def _set_alias(self, model_name: str, alias: str, version: str | None) -> str | None:
        if not is_alias_name(alias):
            raise RepositoryRefusal(
                422, f"alias {alias!r}: use letters, digits, '-' and '_', starting with a letter"
            )
        aliases = dict(self.aliases[model_name])
        previous = aliases.get(alias)
        if version is None:
            if alias == DEFAULT_ALIAS:
                raise RepositoryRefusal(409, f"{DEFAULT_ALIAS} cannot be removed, only moved")
            aliases.pop(alias, None)
        else:
            self._loaded_version(model_name, version)
            aliases[alias] = version
        self.aliases[model_name] = aliases
        metrics.record_alias(model_name, alias, previous, version)
        return version

    def _loaded_version(self, model_name: str, version: str) -> LoadedModel:
        model = self.loaded[model_name].get(version)
        if model is None:
            loaded = ", ".join(self.loaded[model_name])
            raise RepositoryRefusal(
                404, f"{model_name} has no loaded version {version!r}; loaded: {loaded}"
            )
        return model


def _release_memory() -> None:
    """Give an unloaded model's memory back to the system: collected, and glibc's free lists
    trimmed (XGBoost and numpy free into them; without the trim RSS stays where it was)."""
    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc:
        with contextlib.suppress(AttributeError):  # not glibc (musl): nothing to trim
            ctypes.CDLL(libc).malloc_trim(0)
