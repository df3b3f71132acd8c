"""What an API worker knows of each model's loaded versions and aliases, and how a request's
version resolves.

The process holding the models (the runner, or this worker in inline mode) owns the truth
(tabserve/loaded_models.py); the data plane keeps its last `describe` of it, refreshed by every
readiness check (about once a second) and after each repository call this worker makes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tabserve.errors import ModelNotFound
from tabserve.schemas import DEFAULT_ALIAS, ModelInfo


@dataclass(frozen=True)
class ModelVersions:
    name: str
    versions: dict[str, ModelInfo]  # version -> its description
    aliases: dict[str, str]  # alias -> version

    @classmethod
    def from_described(cls, described: Iterable[dict[str, Any]]) -> dict[str, ModelVersions]:
        """The runner's `describe` (one entry per loaded version), per model."""
        found: dict[str, ModelVersions] = {}
        for item in described:
            info = ModelInfo(**{**item, "aliases": tuple(item.get("aliases", ()))})
            model = found.setdefault(info.name, cls(info.name, {}, {}))
            model.versions[info.version] = info
            model.aliases.update(dict.fromkeys(info.aliases, info.version))
        return found

    @property
    def servable(self) -> bool:
        """The unversioned routes have a version to go to."""
        return self.aliases.get(DEFAULT_ALIAS) in self.versions

    def resolve(self, selector: str = "") -> ModelInfo:
        """The version a request names: none (the champion), an alias, or an exact version."""
        version = self.aliases.get(selector or DEFAULT_ALIAS, selector)
        info = self.versions.get(version)
        if info is None:
            raise ModelNotFound(
                f"model {self.name!r} has no version or alias {selector!r}; loaded: "
                f"{self.listing()}"
            )
        return info

    def listing(self) -> str:
        """'abc (champion), def (challenger)'."""
        return ", ".join(
            f"{version} ({', '.join(info.aliases)})" if info.aliases else version
            for version, info in self.versions.items()
        )

    def describe(self) -> dict[str, Any]:
        """The champion's description (what `/v1/models` always said), and every version."""
        return {
            **self.resolve().describe(),
            "versions": [info.describe() for info in self.versions.values()],
            "aliases": dict(sorted(self.aliases.items())),
        }
