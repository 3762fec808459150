"""vggfeat: dense multi-scale VGG descriptors and linear-SVM transfer (Simonyan & Zisserman 2014).

Heavy submodules load on first use, so ``import vggfeat`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "VggfeatError": "vggfeat.errors",
    "FeatureStore": "vggfeat.store",
    "combine_stores": "vggfeat.store",
    "VGG": "vggfeat.nets",
    "DenseVGG": "vggfeat.nets",
    "load_weights": "vggfeat.weights",
    "Preprocess": "vggfeat.weights",
    "ExtractConfig": "vggfeat.extract",
    "Extractor": "vggfeat.extract",
    "extract_to_store": "vggfeat.pipeline",
    "find_images": "vggfeat.datasets",
    "SVMClassifier": "vggfeat.svm",
    "save_svm": "vggfeat.svm",
    "load_svm": "vggfeat.svm",
    "average_precision": "vggfeat.metrics",
    "mean_class_recall": "vggfeat.metrics",
    "FeatureSpec": "vggfeat.features",
    "design_matrix": "vggfeat.features",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vggfeat' has no attribute {name!r}")
