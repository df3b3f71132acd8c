"""tabserve: scikit-learn and XGBoost models from a training script to a served, observable API."""

__version__ = "0.1.0"
