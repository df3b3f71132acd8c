"""Load each training data set and clean it into (features, labels).

Every loader returns a DataFrame whose columns are the model's feature names (see catalog.py) and
a Series of class names. Cleaning rules live here, next to the file they apply to; data/README.md
explains where each file comes from.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_iris

DATA_DIR = Path(__file__).resolve().parent.parent / "data"

Dataset = tuple[pd.DataFrame, pd.Series]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- churn: UCI Iranian Churn ---------------------------------------------------------------
# The UCI column names (some with double spaces) -> our snake_case feature names.
CHURN_COLUMNS = {
    "Call  Failure": "call_failures",
    "Complains": "complains",
    "Subscription  Length": "subscription_months",
    "Charge  Amount": "charge_amount",
    "Seconds of Use": "seconds_of_use",
    "Frequency of use": "call_count",
    "Frequency of SMS": "sms_count",
    "Distinct Called Numbers": "distinct_called_numbers",
    "Age Group": "age_group",
    "Tariff Plan": "tariff_plan",
    "Status": "status",
    "Age": "age",
    "Customer Value": "customer_value",
}


def load_churn(path: Path) -> Dataset:
    raw = pd.read_csv(path)
    features = raw[list(CHURN_COLUMNS)].rename(columns=CHURN_COLUMNS)
    labels = raw["Churn"].map({0: "retained", 1: "churned"})
    return features, labels


# --- drug: drug200 -----------------------------------------------------------------------------
def load_drug(path: Path) -> Dataset:
    raw = pd.read_csv(path)
    features = raw[["Age", "Sex", "BP", "Cholesterol", "Na_to_K"]].set_axis(
        ["age", "sex", "bp", "cholesterol", "na_to_k"], axis=1
    )
    # The Kaggle copy spells the majority class "DrugY" and the others "drugA".."drugX".
    labels = raw["Drug"].str.replace(r"^[Dd]rug", "drug", regex=True)
    return features, labels


# --- iris: scikit-learn's bundled copy ----------------------------------------------------------
def iris_sha256() -> str:
    """sha256 of the CSV scikit-learn ships and `load_iris` reads."""
    return hashlib.sha256(
        resources.files("sklearn.datasets.data").joinpath("iris.csv").read_bytes()
    ).hexdigest()


def load_iris_frame(_path: Path | None = None) -> Dataset:
    iris = load_iris()
    features = pd.DataFrame(
        iris.data,
        columns=["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"],
    )
    labels = pd.Series(iris.target_names[iris.target], name="species")
    return features, labels


# --- spam: UCI SMS Spam Collection ----------------------------------------------------------------
def load_spam(path: Path) -> Dataset:
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    return raw[["text"]], raw["label"]


# --- admission: KTAS triage records (PLOS ONE) ----------------------------------------------------
# Code books as given with the Kaggle upload of the PLOS ONE data (see data/README.md).
KTAS_SEX = {1: "female", 2: "male"}
KTAS_ARRIVAL = {
    1: "walk_in",
    2: "public_ambulance",
    3: "private_vehicle",
    4: "private_ambulance",
    5: "other",
    6: "other",
    7: "other",
}
KTAS_MENTAL = {1: "alert", 2: "verbal_response", 3: "pain_response", 4: "unresponsive"}
# Disposition: only the codes whose meaning is settled are used (1 discharge, 2 ward, 3 ICU);
# the 97 rows with codes 4-7 (transfer, death, surgery... per an unverified code book) are left
# out rather than guessed into a class.
KTAS_ADMITTED = {1: "discharged", 2: "admitted", 3: "admitted"}
KTAS_VITALS = {
    "SBP": "sbp",
    "DBP": "dbp",
    "HR": "heart_rate",
    "RR": "respiratory_rate",
    "BT": "temperature_c",
    "Saturation": "o2_saturation",
}


def _as_number(column: pd.Series) -> pd.Series:
    """Decimal commas -> points; '??', blanks and spreadsheet errors -> NaN (imputed later)."""
    text = column.astype(str).str.strip().str.replace(",", ".", regex=False)
    return pd.to_numeric(text, errors="coerce")


def load_admission(path: Path) -> Dataset:
    # Published as semicolon-separated, Latin-1 (really a Korean code page) with CRLF endings.
    raw = pd.read_csv(path, sep=";", encoding="latin-1", dtype=str, keep_default_na=False)
    raw = raw[raw["Disposition"].astype(int).isin(KTAS_ADMITTED)].reset_index(drop=True)

    pain = raw["Pain"].astype(int) == 1
    nrs = _as_number(raw["NRS_pain"])
    # NRS_pain holds '#BOÞ!' where no pain was reported: that is a score of 0, not a missing value.
    nrs = nrs.where(pain, 0.0)

    features = pd.DataFrame(
        {
            "age": raw["Age"].astype(int),
            "sex": raw["Sex"].astype(int).map(KTAS_SEX),
            "arrival_mode": raw["Arrival mode"].astype(int).map(KTAS_ARRIVAL),
            "injury": (raw["Injury"].astype(int) == 2).astype(float),
            "mental_state": raw["Mental"].astype(int).map(KTAS_MENTAL),
            "pain": pain.astype(float),
            "pain_score": nrs,
            "triage_acuity": raw["KTAS_RN"].astype(int),
            **{name: _as_number(raw[column]) for column, name in KTAS_VITALS.items()},
        }
    )
    # A saturation of 0 or a blood pressure of 0 is a blank in disguise, not a measurement.
    for name in KTAS_VITALS.values():
        features.loc[features[name] <= 0, name] = np.nan
    labels = raw["Disposition"].astype(int).map(KTAS_ADMITTED)
    return features, labels
