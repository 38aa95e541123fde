"""The classifier Fréchet distance, the evaluation classifier, and the floors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from artifex_rl.data import load_digits_split
from artifex_rl.metrics import (
    cfd_floors,
    classifier_accuracy,
    classifier_features,
    classifier_frechet_distance,
    evaluate_samples,
    frechet_distance_from_moments,
    noise_baseline_images,
    train_digit_classifier,
)

# --------------------------------------------------------------------------- #
# Fréchet distance
# --------------------------------------------------------------------------- #


def _gaussian_set(rng, n, d, shift=0.0):
    mixing = rng.normal(size=(d, d))
    return rng.normal(size=(n, d)) @ mixing + shift + rng.normal(size=d)


def _scipy_frechet(a, b):
    """FID as usually written: scipy.linalg.sqrtm of the covariance product."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    assert np.max(np.abs(np.imag(root))) < 1e-6 * np.max(np.abs(root))
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * np.real(root)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_matches_scipy_sqrtm_on_random_gaussians(seed):
    rng = np.random.default_rng(seed)
    d = 3 + 5 * seed
    a, b = _gaussian_set(rng, 400, d), _gaussian_set(rng, 300, d, shift=0.5)
    want = _scipy_frechet(a, b)
    assert want > 0.1
    np.testing.assert_allclose(classifier_frechet_distance(a, b), want, rtol=1e-7)
    np.testing.assert_allclose(classifier_frechet_distance(b, a), want, rtol=1e-7)  # symmetric


def test_frechet_of_identical_sets_is_zero_and_shift_adds_squared_distance():
    rng = np.random.default_rng(0)
    a = _gaussian_set(rng, 200, 6)
    assert classifier_frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shift = rng.normal(size=6)
    # Same covariance, means apart by `shift`: the distance is exactly |shift|^2.
    np.testing.assert_allclose(classifier_frechet_distance(a, a + shift), shift @ shift, rtol=1e-7)


def test_frechet_closed_form_for_diagonal_gaussians():
    # W2^2 of diagonal Gaussians: |mu_a - mu_b|^2 + sum (sigma_a - sigma_b)^2.
    rng = np.random.default_rng(3)
    mu_a, mu_b = rng.normal(size=5), rng.normal(size=5)
    sd_a, sd_b = rng.uniform(0.2, 2, 5), rng.uniform(0.2, 2, 5)
    want = np.sum((mu_a - mu_b) ** 2) + np.sum((sd_a - sd_b) ** 2)
    got = frechet_distance_from_moments(mu_a, np.diag(sd_a**2), mu_b, np.diag(sd_b**2))
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_frechet_with_a_dead_feature_equals_the_distance_without_it():
    # A ReLU unit that never fires is a constant column: singular covariances, no effect on the distance.
    rng = np.random.default_rng(4)
    a, b = _gaussian_set(rng, 300, 4), _gaussian_set(rng, 300, 4, shift=1.0)
    dead = np.zeros((300, 1))
    with_dead = classifier_frechet_distance(np.hstack([a, dead]), np.hstack([b, dead]))
    assert np.isfinite(with_dead)
    np.testing.assert_allclose(with_dead, classifier_frechet_distance(a, b), rtol=1e-6)


def test_frechet_bad_input():
    a = np.zeros((10, 4))
    with pytest.raises(ValueError, match="same width"):
        classifier_frechet_distance(a, np.zeros((10, 3)))
    with pytest.raises(ValueError, match=r"features_a must be \(N, D\) features, got shape \(10,\)"):
        classifier_frechet_distance(np.zeros(10), a)
    with pytest.raises(ValueError, match="at least 2 rows"):
        classifier_frechet_distance(np.zeros((1, 4)), a)
    with pytest.raises(ValueError, match="features_b contains NaN"):
        classifier_frechet_distance(a, np.full((10, 4), np.nan))


# --------------------------------------------------------------------------- #
# The evaluation classifier (trained once for this module) and the floors
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cache_dir = str(tmp_path_factory.mktemp("classifier"))
    classifier, info = train_digit_classifier(0, 16, cache_dir=cache_dir)
    return classifier, info, cache_dir


def test_classifier_reaches_97_percent_and_is_cached(trained):
    classifier, info, cache_dir = trained
    split = load_digits_split()
    accuracy = classifier_accuracy(classifier, split.heldout_images, split.heldout_labels)
    assert accuracy >= 0.97
    assert info["heldout_accuracy"] == accuracy and info["cached"] is False
    print(f"held-out accuracy {accuracy:.3f}, trained in {info['train_seconds']:.1f}s")

    loaded, loaded_info = train_digit_classifier(0, 16, cache_dir=cache_dir)
    assert loaded_info["cached"] is True and loaded_info["heldout_accuracy"] == accuracy
    np.testing.assert_array_equal(
        classifier_features(loaded, split.heldout_images),
        classifier_features(classifier, split.heldout_images),
    )
    with pytest.raises(ValueError, match="width must be a positive int"):
        train_digit_classifier(0, 0, cache_dir=cache_dir)


def test_floors_are_ordered(trained):
    classifier = trained[0]
    floors = cfd_floors(classifier)
    print(floors)
    assert 0 < floors["cfd_real_floor"] < floors["cfd_noise_baseline"] / 10
    noise = noise_baseline_images()
    train = load_digits_split().train_images
    assert noise.shape == (500, 8, 8, 1) and noise.dtype == np.float32
    np.testing.assert_allclose(noise.mean(0), train.mean(0), atol=0.15)


def test_evaluate_samples(trained):
    classifier = trained[0]
    split = load_digits_split()
    # Real held-out digits as "samples": recognised as their labels, cFD 0 against themselves.
    scores = evaluate_samples(classifier, split.heldout_images, split.heldout_labels)
    assert scores["num_samples"] == 500 and scores["cfd"] == pytest.approx(0.0, abs=1e-6)
    assert scores["class_accuracy"] >= 0.97
    np.testing.assert_allclose(sum(scores["class_histogram"]), 1.0)
    np.testing.assert_allclose(scores["class_histogram"], np.bincount(split.heldout_labels) / 500, atol=0.02)
    # A model that only ever draws one digit: the histogram shows it, no class_accuracy without labels.
    ones = split.heldout_images[split.heldout_labels == 1]
    collapsed = evaluate_samples(
        classifier, ones, np.full(len(ones), -1), reference_images=split.train_images
    )
    assert "class_accuracy" not in collapsed and collapsed["class_histogram"][1] >= 0.95
    assert collapsed["cfd"] > 10 * cfd_floors(classifier)["cfd_real_floor"]
    # Requesting the wrong class is caught by class_accuracy.
    wrong = evaluate_samples(classifier, split.heldout_images, (split.heldout_labels + 1) % 10)
    assert wrong["class_accuracy"] <= 0.03


def test_evaluate_samples_bad_input(trained):
    classifier = trained[0]
    images = load_digits_split().heldout_images[:20]
    with pytest.raises(ValueError, match=r"images must have shape \(N, 8, 8, 1\), got \(20, 8, 8\)"):
        evaluate_samples(classifier, images[..., 0])
    with pytest.raises(ValueError, match="images must be floating point"):
        evaluate_samples(classifier, images.astype(np.int32))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 9\].*got values in \[0, 10\]"):
        evaluate_samples(classifier, images, np.arange(20) % 11)
    with pytest.raises(ValueError, match=r"labels must have shape \(20,\)"):
        evaluate_samples(classifier, images, np.zeros(5, np.int32))
    with pytest.raises(ValueError, match="images contain NaN"):
        evaluate_samples(classifier, np.full((20, 8, 8, 1), np.nan, np.float32))
