"""The linear-probe experiment (paper Table 4): a linear SVM trained on z, on v and on raw pixels.

Features come from the deterministic encoding (z = mu(x), v = f(x at bin centres; z)); each feature
set is standardised (per-dimension zero mean, unit variance on the training split) before
``sklearn.svm.LinearSVC``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fastflow.data import LABELLED_DATASETS
from fastflow.data.order import image_loader, subset_indices
from fastflow.errors import UsageError

FEATURES = ("z", "v", "pixels")


@torch.no_grad()
def encode_features(
    model: torch.nn.Module,
    dataset: Dataset,
    limit: int,
    batch_size: int = 256,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Features ``{"z": [N, dz], "v": [N, 3HW], "pixels": [N, 3HW]}`` (no "z" without a global code)
    and labels ``[N]`` of ``limit`` images (all if 0; else a fixed random subset)."""
    device = next(model.parameters()).device
    parts: dict[str, list[np.ndarray]] = {name: [] for name in FEATURES}
    labels = []
    for images, y in image_loader(dataset, batch_size, subset_indices(len(dataset), limit)):
        z, v = model.encode(images.to(device))
        if z is not None:
            parts["z"].append(z.float().cpu().numpy())
        parts["v"].append(v.flatten(1).float().cpu().numpy())
        parts["pixels"].append(images.flatten(1).float().numpy() / 255.0)
        labels.append(y.numpy())
    return {k: np.concatenate(v) for k, v in parts.items() if v}, np.concatenate(labels)


def svm_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    c: float = 1.0,
    max_iter: int = 5000,
) -> tuple[float, bool]:
    """Test accuracy of a standardised linear SVM, and whether liblinear converged."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    classifier = make_pipeline(StandardScaler(), LinearSVC(C=c, max_iter=max_iter))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        classifier.fit(train_x, train_y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return float((classifier.predict(test_x) == test_y).mean()), converged


def linear_probe(
    model: torch.nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    max_train: int = 0,
    max_test: int = 0,
    c: float = 1.0,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Linear SVMs on z (if the model has one), v and raw pixels.

    Returns ``{"accuracy": {feature: float}, "dims": {feature: int}, "converged": {feature: bool},
    "train_images": int, "test_images": int}``.
    """
    train_x, train_y = encode_features(model, train_set, max_train, batch_size)
    test_x, test_y = encode_features(model, test_set, max_test, batch_size)
    if (train_y < 0).any() or len(np.unique(train_y)) < 2:
        raise UsageError(
            f"the probe needs a labelled data set with at least two classes ({', '.join(LABELLED_DATASETS)}); "
            "this one has no labels"
        )
    result: dict[str, Any] = {
        "accuracy": {},
        "dims": {},
        "converged": {},
        "train_images": int(len(train_y)),
        "test_images": int(len(test_y)),
    }
    for name, features in train_x.items():
        accuracy, converged = svm_accuracy(features, train_y, test_x[name], test_y, c)
        result["accuracy"][name], result["converged"][name] = accuracy, converged
        result["dims"][name] = int(features.shape[1])
    return result


def format_probe(result: dict[str, Any]) -> str:
    """The paper's Table 4 layout: the accuracies on z, v and raw pixels side by side."""
    titles = {"z": "z", "v": "v", "pixels": "raw pixels"}
    cells = []
    for name in FEATURES:
        accuracy = result["accuracy"].get(name)
        mark = "" if result["converged"].get(name, True) else "*"
        cells.append("n/a" if accuracy is None else f"{100 * accuracy:.2f}%{mark}")
    width = max(len(t) for t in list(titles.values()) + cells) + 2
    lines = [
        f"linear SVM test accuracy ({result['train_images']} train / {result['test_images']} test images)",
        "".join(titles[n].rjust(width) for n in FEATURES),
        "".join(c.rjust(width) for c in cells),
    ]
    if any(c.endswith("*") for c in cells):
        lines.append("* liblinear did not converge within max_iter")
    return "\n".join(lines)
