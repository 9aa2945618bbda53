"""Neural regime detectors (torch) and their model-agnostic training, storage and prediction helpers.

* :mod:`.lstm` -- :class:`AttentionLSTMClassifier`, the vol and trend detectors;
* :mod:`.training` -- seeding, class weights, early-stopped training, save/load, predict_proba.
"""

from regime_pipeline.core.regimes.models.lstm import AttentionLSTMClassifier
from regime_pipeline.core.regimes.models.training import (
    TrainResult,
    class_weights,
    fit_classifier,
    load_model,
    predict_proba,
    profile,
    save_model,
    set_seed,
)

__all__ = [
    "AttentionLSTMClassifier",
    "TrainResult",
    "class_weights",
    "fit_classifier",
    "load_model",
    "predict_proba",
    "profile",
    "save_model",
    "set_seed",
]
