"""Model quality numbers: accuracy/F1/AUC for classification, RMSE/MAE/R2 for regression.

The champion/challenger decision uses one of them (the *primary* metric); ``higher_is_better``
says which way it points so that the decision code never special-cases a task.
"""

from __future__ import annotations

import numpy as np

PRIMARY = {"classification": "accuracy", "regression": "rmse"}
CHOICES = {"classification": ("accuracy", "f1"), "regression": ("rmse",)}


def higher_is_better(metric: str) -> bool:
    return metric not in ("rmse", "mae", "loss")


def classification(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Accuracy, F1 (binary, or macro over classes) and ROC AUC (one-vs-rest when multiclass)."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    pred = proba.argmax(axis=1)
    n_classes = proba.shape[1]
    out = {
        "accuracy": float(accuracy_score(y_true, pred)),
        "f1": float(f1_score(y_true, pred, average="binary" if n_classes == 2 else "macro")),
    }
    try:
        if n_classes == 2:
            out["auc"] = float(roc_auc_score(y_true, proba[:, 1]))
        else:
            p = proba / proba.sum(axis=1, keepdims=True)
            out["auc"] = float(roc_auc_score(y_true, p, multi_class="ovr", labels=list(range(n_classes))))
    except ValueError:  # a split without every class: AUC is undefined
        pass
    return out


def regression(y_true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Root mean squared error, mean absolute error and R2, in target units."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    pred = pred.reshape(-1)
    return {
        "rmse": float(np.sqrt(mean_squared_error(y_true, pred))),
        "mae": float(mean_absolute_error(y_true, pred)),
        "r2": float(r2_score(y_true, pred)),
    }


def compute(task: str, y_true: np.ndarray, output: np.ndarray) -> dict[str, float]:
    """Metrics from a served model's output (probabilities or predictions)."""
    return classification(y_true, output) if task == "classification" else regression(y_true, output)
