"""Evaluation of generated digits: the classifier Fréchet distance (cFD), class recognition, floors."""

from artifex_rl.metrics.classifier import (
    classifier_accuracy,
    classifier_features,
    predict_logits,
    train_digit_classifier,
)
from artifex_rl.metrics.evaluate import cfd_floors, evaluate_samples, noise_baseline_images
from artifex_rl.metrics.frechet import classifier_frechet_distance, frechet_distance_from_moments

__all__ = [
    "cfd_floors",
    "classifier_accuracy",
    "classifier_features",
    "classifier_frechet_distance",
    "evaluate_samples",
    "frechet_distance_from_moments",
    "noise_baseline_images",
    "predict_logits",
    "train_digit_classifier",
]
