"""The Fréchet distance between two feature sets, each summarised by a Gaussian.

``d^2 = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})``: the squared
2-Wasserstein distance between ``N(mu_a, S_a)`` and ``N(mu_b, S_b)`` (Dowson &
Landau, 1982), the formula of FID (Heusel et al., 2017). Here it is computed on
a small digit classifier's penultimate features (the "classifier Fréchet
distance", cFD) rather than on Inception's.
"""

from __future__ import annotations

import numpy as np


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (round-off negative eigenvalues clipped to 0)."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def _check_features(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be (N, D) features, got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows to estimate a covariance, got {x.shape[0]}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def frechet_distance_from_moments(
    mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray
) -> float:
    """Fréchet distance of ``N(mu_a, cov_a)`` and ``N(mu_b, cov_b)``; means ``(D,)``, covariances ``(D, D)``."""
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    if mu_a.ndim != 1:
        raise ValueError(f"mu_a must be a (D,) mean vector, got shape {mu_a.shape}")
    dim = mu_a.shape[0]
    for name, value, shape in (
        ("mu_b", mu_b, (dim,)),
        ("cov_a", cov_a, (dim, dim)),
        ("cov_b", cov_b, (dim, dim)),
    ):
        if value.shape != shape:
            raise ValueError(f"{name} must have shape {shape} (from mu_a), got {value.shape}")
    # Tr (S_a S_b)^{1/2} = Tr (S_a^{1/2} S_b S_a^{1/2})^{1/2}: the right-hand matrix is symmetric PSD, so
    # its eigenvalues are real and >= 0 even when a covariance is singular (a dead ReLU feature), where
    # scipy.linalg.sqrtm(S_a @ S_b) warns and returns a complex result.
    root_a = _psd_sqrt(cov_a)
    inner = root_a @ cov_b @ root_a
    trace_root = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)))
    diff = mu_a - mu_b
    distance = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root
    # Round-off can take the distance of (nearly) identical sets a hair below zero.
    return float(max(distance, 0.0))


def classifier_frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between two feature sets, each ``(N, D)`` (``N`` may differ).

    Means and unbiased covariances (``np.cov``, ``ddof=1``) of each set, then
    :func:`frechet_distance_from_moments`. Compare sets of equal size: the
    estimate is biased upwards by an amount that shrinks with ``N``.
    """
    a = _check_features(features_a, "features_a")
    b = _check_features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"features_a and features_b need the same width; got {a.shape} and {b.shape}")
    return frechet_distance_from_moments(
        a.mean(axis=0), np.cov(a, rowvar=False), b.mean(axis=0), np.cov(b, rowvar=False)
    )
