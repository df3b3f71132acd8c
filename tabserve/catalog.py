"""One declared spec per model: the single source of truth.

Training reads a spec to load data and fit the estimator, the request schemas are derived from
its features, the model's saved metadata repeats it, and the runner uses it to order columns.
Adding a model means adding one `ModelSpec` here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tabserve.features import Feature, Kind

if TYPE_CHECKING:
    from tabserve.datasets import Dataset

Framework = Literal["xgboost", "sklearn"]


@dataclass(frozen=True)
class ModelSpec:
    name: str  # URL segment and BentoML model name
    title: str
    use_case: str
    framework: Framework
    features: tuple[Feature, ...]
    # Class names in the order of the model's probability columns (sorted, as scikit-learn
    # and the label encoding in training.py order them).
    class_names: tuple[str, ...]
    dataset_file: str | None  # file in data/; None for data shipped with scikit-learn
    # Names of the functions in tabserve/datasets.py and tabserve/estimators.py. Named, not
    # imported: the serving processes read the catalog but never train, and pandas +
    # scikit-learn + XGBoost cost ~155 MB in each process that imports them.
    dataset_loader: str
    estimator_builder: str
    # The class whose probability is the model's "score" (binary models); None for multi-class.
    positive_class: str | None = None

    @property
    def feature_names(self) -> list[str]:
        return [feature.name for feature in self.features]

    def load_dataset(self, path: Path | None) -> Dataset:
        return getattr(importlib.import_module("tabserve.datasets"), self.dataset_loader)(path)

    def build_estimator(self, fast: bool) -> Any:
        builder = getattr(importlib.import_module("tabserve.estimators"), self.estimator_builder)
        return builder(fast)

    def example_instance(self) -> dict[str, Any]:
        return {f.name: f.example for f in self.features if f.example is not None}


def _count(name: str, description: str, maximum: float, example: int) -> Feature:
    return Feature(name, Kind.INTEGER, description, minimum=0, maximum=maximum, example=example)


CHURN = ModelSpec(
    name="churn",
    title="Telecom customer churn",
    use_case="Will this subscriber leave in the next period? (UCI Iranian Churn)",
    framework="xgboost",
    features=(
        _count("call_failures", "Failed calls in the period.", 10_000, 8),
        Feature("complains", Kind.BOOLEAN, "Has the customer complained?", example=False),
        _count("subscription_months", "Months subscribed.", 1200, 38),
        Feature(
            "charge_amount",
            Kind.INTEGER,
            "Charge level, 0 (lowest) to 10 (highest).",
            minimum=0,
            maximum=10,
            example=0,
        ),
        _count("seconds_of_use", "Seconds of calls in the period.", 10_000_000, 4370),
        _count("call_count", "Number of calls in the period.", 100_000, 71),
        _count("sms_count", "Number of text messages in the period.", 100_000, 5),
        _count("distinct_called_numbers", "Distinct numbers called.", 100_000, 17),
        Feature(
            "age_group",
            Kind.INTEGER,
            "Age group, 1 (youngest) to 5.",
            minimum=1,
            maximum=5,
            example=3,
        ),
        Feature(
            "tariff_plan",
            Kind.INTEGER,
            "1 = pay as you go, 2 = contract.",
            minimum=1,
            maximum=2,
            example=1,
        ),
        Feature(
            "status", Kind.INTEGER, "1 = active, 2 = inactive.", minimum=1, maximum=2, example=1
        ),
        Feature("age", Kind.INTEGER, "Age in years.", minimum=0, maximum=120, example=30),
        Feature(
            "customer_value",
            Kind.NUMBER,
            "The operator's customer value score.",
            minimum=0,
            maximum=1_000_000,
            example=197.64,
        ),
    ),
    class_names=("churned", "retained"),
    positive_class="churned",
    dataset_file="iranian_churn.csv",
    dataset_loader="load_churn",
    estimator_builder="churn_classifier",
)

DRUG = ModelSpec(
    name="drug",
    title="Drug prescription",
    use_case="Which of five drugs suits this patient? (drug200)",
    framework="sklearn",
    features=(
        Feature("age", Kind.INTEGER, "Age in years.", minimum=0, maximum=120, example=47),
        Feature("sex", Kind.CATEGORY, "Sex.", categories=("F", "M"), example="M"),
        Feature(
            "bp",
            Kind.CATEGORY,
            "Blood pressure level.",
            categories=("HIGH", "LOW", "NORMAL"),
            example="LOW",
        ),
        Feature(
            "cholesterol",
            Kind.CATEGORY,
            "Cholesterol level.",
            categories=("HIGH", "NORMAL"),
            example="HIGH",
        ),
        Feature(
            "na_to_k",
            Kind.NUMBER,
            "Blood sodium to potassium ratio.",
            minimum=0,
            maximum=100,
            example=13.093,
        ),
    ),
    class_names=("drugA", "drugB", "drugC", "drugX", "drugY"),
    dataset_file="drug200.csv",
    dataset_loader="load_drug",
    estimator_builder="drug_classifier",
)


def _centimetres(name: str, description: str, example: float) -> Feature:
    return Feature(name, Kind.NUMBER, description, minimum=0, maximum=100, example=example)


IRIS = ModelSpec(
    name="iris",
    title="Iris species",
    use_case="Which iris species is this flower? (Fisher's iris, shipped with scikit-learn)",
    framework="sklearn",
    features=(
        _centimetres("sepal_length_cm", "Sepal length in cm.", 5.1),
        _centimetres("sepal_width_cm", "Sepal width in cm.", 3.5),
        _centimetres("petal_length_cm", "Petal length in cm.", 1.4),
        _centimetres("petal_width_cm", "Petal width in cm.", 0.2),
    ),
    class_names=("setosa", "versicolor", "virginica"),
    dataset_file=None,
    dataset_loader="load_iris_frame",
    estimator_builder="iris_classifier",
)

SPAM = ModelSpec(
    name="spam",
    title="SMS spam filter",
    use_case="Is this short message spam? (UCI SMS Spam Collection)",
    framework="sklearn",
    features=(
        Feature(
            "text",
            Kind.TEXT,
            "The message text.",
            example="WINNER!! You have won a 1000 cash prize. Call 09061701461 to claim.",
        ),
    ),
    class_names=("ham", "spam"),
    positive_class="spam",
    dataset_file="sms_spam.csv",
    dataset_loader="load_spam",
    estimator_builder="spam_classifier",
)


def _vital(name: str, description: str, low: float, high: float, example: float) -> Feature:
    return Feature(
        name, Kind.NUMBER, description, minimum=low, maximum=high, required=False, example=example
    )


ADMISSION = ModelSpec(
    name="admission",
    title="Emergency department admission",
    use_case="Will this emergency patient be admitted (ward or ICU)? Uses only what is known at "
    "triage. (KTAS triage records, PLOS ONE)",
    framework="sklearn",
    features=(
        Feature("age", Kind.INTEGER, "Age in years.", minimum=0, maximum=120, example=71),
        Feature("sex", Kind.CATEGORY, "Sex.", categories=("female", "male"), example="male"),
        Feature(
            "arrival_mode",
            Kind.CATEGORY,
            "How the patient arrived.",
            categories=(
                "walk_in",
                "public_ambulance",
                "private_vehicle",
                "private_ambulance",
                "other",
            ),
            example="public_ambulance",
        ),
        Feature("injury", Kind.BOOLEAN, "Is the visit for an injury?", example=False),
        Feature(
            "mental_state",
            Kind.CATEGORY,
            "Mental state on the AVPU scale.",
            categories=("alert", "verbal_response", "pain_response", "unresponsive"),
            example="alert",
        ),
        Feature("pain", Kind.BOOLEAN, "Does the patient report pain?", example=True),
        Feature(
            "pain_score",
            Kind.INTEGER,
            "Numeric rating scale of pain, 0-10 (0 if no pain).",
            minimum=0,
            maximum=10,
            required=False,
            example=3,
        ),
        Feature(
            "triage_acuity",
            Kind.INTEGER,
            "KTAS level given at triage, 1 (most urgent) to 5.",
            minimum=1,
            maximum=5,
            example=2,
        ),
        _vital("sbp", "Systolic blood pressure, mmHg.", 20, 350, 160),
        _vital("dbp", "Diastolic blood pressure, mmHg.", 10, 250, 100),
        _vital("heart_rate", "Heart rate, beats per minute.", 10, 350, 84),
        _vital("respiratory_rate", "Respiratory rate, breaths per minute.", 2, 100, 18),
        _vital("temperature_c", "Body temperature, degrees Celsius.", 25, 45, 36.6),
        _vital("o2_saturation", "Oxygen saturation, percent.", 10, 100, 98),
    ),
    class_names=("admitted", "discharged"),
    positive_class="admitted",
    dataset_file="ktas_triage.csv",
    dataset_loader="load_admission",
    estimator_builder="admission_classifier",
)

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (CHURN, DRUG, IRIS, SPAM, ADMISSION)}
