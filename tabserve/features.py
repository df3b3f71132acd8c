"""The vocabulary of a model's input: one `Feature` per named field a caller sends.

A feature declares what a caller may send (kind, allowed categories, plausible bounds, whether it
may be omitted). Training reads the same declaration to pick columns, the request schemas are
generated from it, and it is saved into the model's metadata, so the three cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    NUMBER = "number"  # any finite real number within the bounds
    INTEGER = "integer"  # a whole number within the bounds (counts, codes, ordinal levels)
    BOOLEAN = "boolean"  # true / false; the model sees 1.0 / 0.0
    CATEGORY = "category"  # one of a fixed set of strings
    TEXT = "text"  # free text, at most Settings.max_text_chars characters


NUMERIC_KINDS = frozenset({Kind.NUMBER, Kind.INTEGER, Kind.BOOLEAN})


@dataclass(frozen=True)
class Feature:
    name: str
    kind: Kind
    description: str
    # Plausible bounds, not the training range: a value outside them is a mistake (a unit mix-up,
    # a sentinel like -999), so the request is rejected instead of extrapolated.
    minimum: float | None = None
    maximum: float | None = None
    categories: tuple[str, ...] = ()
    # An optional feature may be omitted or null: the model pipeline imputes it.
    required: bool = True
    example: Any = None

    def __post_init__(self) -> None:
        if (self.kind is Kind.CATEGORY) != bool(self.categories):
            raise ValueError(f"{self.name}: categories are given exactly for category features")
        if self.kind in (Kind.NUMBER, Kind.INTEGER) and (
            self.minimum is None or self.maximum is None
        ):
            raise ValueError(f"{self.name}: numeric features need plausible bounds")

    @property
    def is_numeric(self) -> bool:
        return self.kind in NUMERIC_KINDS

    def describe(self) -> dict[str, Any]:
        """The JSON form saved in model metadata and listed by `GET /v1/models`."""
        described: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind.value,
            "required": self.required,
            "description": self.description,
        }
        if self.minimum is not None:
            described["minimum"] = self.minimum
            described["maximum"] = self.maximum
        if self.categories:
            described["categories"] = list(self.categories)
        return described
