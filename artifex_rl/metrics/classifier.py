"""Training (and caching) the digit classifier that judges generated digits.

:func:`train_digit_classifier` is a function of ``(seed, width, steps)`` only:
the evaluation network of every run is ``seed=0``, and a second, independent
classifier (another seed, another width) can serve as a reward model without
the evaluator ever having seen the reward model's training. It is a plain
optax loop under one ``jax.jit`` (not a :class:`~artifex_rl.Trainer`: the
classifier is a measuring instrument, not a subject of the framework), fed by
:class:`~artifex_rl.data.ArrayDataLoader` over the fixed training split.

The trained parameters are cached as one ``.npz`` (``nnx.to_pure_dict`` leaves
keyed by their path) in ``cache_dir``, named after the settings, so a second
call with the same settings loads instead of training.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from artifex_rl.data import ArrayDataLoader, load_digits_split
from artifex_rl.models.classifier import DigitClassifier

DEFAULT_STEPS = 600
_BATCH_SIZE = 128
_LEARNING_RATE = 3e-3
_WEIGHT_DECAY = 1e-4
_EVAL_BATCH = 500
_INFO_KEY = "__info__"


def _cache_path(cache_dir: str, seed: int, width: int, steps: int) -> str:
    return os.path.join(cache_dir, f"digit_classifier_seed{seed}_width{width}_steps{steps}.npz")


def _shift(images: jax.Array, key: jax.Array) -> jax.Array:
    """Translate each image by -1, 0 or +1 pixels per axis (zero-padded with the background, -1)."""
    batch = images.shape[0]
    padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-1.0)
    offsets = jax.random.randint(key, (batch, 2), 0, 3)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (8, 8, 1))

    return jax.vmap(crop)(padded, offsets)


def predict_logits(classifier: DigitClassifier, images: np.ndarray) -> np.ndarray:
    """Logits ``(N, num_classes)`` of images ``(N, 8, 8, 1)``, in compiled batches."""
    return _apply(classifier, images, "logits")


def classifier_features(classifier: DigitClassifier, images: np.ndarray) -> np.ndarray:
    """Penultimate features ``(N, num_features)`` of images ``(N, 8, 8, 1)``, in compiled batches."""
    return _apply(classifier, images, "features")


@functools.partial(jax.jit, static_argnums=(0, 3))
def _apply_batch(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array, what: str) -> jax.Array:
    model = nnx.merge(graphdef, state)
    return model.features(images) if what == "features" else model(images)


def _apply(classifier: DigitClassifier, images: np.ndarray, what: str) -> np.ndarray:
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[1:] != (8, 8, 1):
        raise ValueError(f"images must have shape (N, 8, 8, 1), got {images.shape}")
    graphdef, state = nnx.split(classifier)
    out = []
    for start in range(0, len(images), _EVAL_BATCH):
        chunk = images[start : start + _EVAL_BATCH]
        real = len(chunk)
        if real < _EVAL_BATCH:  # one compiled shape for every chunk
            chunk = np.concatenate([chunk, np.zeros((_EVAL_BATCH - real, 8, 8, 1), np.float32)])
        out.append(np.asarray(_apply_batch(graphdef, state, jnp.asarray(chunk), what))[:real])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def classifier_accuracy(classifier: DigitClassifier, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of ``images (N, 8, 8, 1)`` whose arg-max class equals ``labels (N,)``."""
    predictions = predict_logits(classifier, images).argmax(axis=-1)
    return float(np.mean(predictions == np.asarray(labels)))


def _train(seed: int, width: int, steps: int) -> DigitClassifier:
    model = DigitClassifier(width=width, rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model)
    optimizer = optax.adamw(optax.cosine_decay_schedule(_LEARNING_RATE, steps), weight_decay=_WEIGHT_DECAY)
    opt_state = optimizer.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, images, labels, key):
        def loss_fn(params):
            logits = nnx.merge(graphdef, params)(_shift(images, key))
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    loader = ArrayDataLoader(load_digits_split().train(), _BATCH_SIZE, seed=seed)
    key = jax.random.key(seed)
    done = 0
    while done < steps:
        for batch in loader:
            params, opt_state = step(
                params, opt_state, batch["images"], batch["labels"], jax.random.fold_in(key, done)
            )
            done += 1
            if done == steps:
                break
    return nnx.merge(graphdef, params)


def _save(path: str, classifier: DigitClassifier, info: dict[str, Any]) -> None:
    leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(classifier)))[0]
    arrays = {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}
    arrays[_INFO_KEY] = np.asarray(json.dumps(info))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # a cache file is either complete or absent


def _load(path: str, seed: int, width: int) -> tuple[DigitClassifier, dict[str, Any]]:
    # An abstract model (shapes only): building real initial parameters just to overwrite them costs seconds.
    graphdef, state = nnx.split(nnx.eval_shape(lambda: DigitClassifier(width=width, rngs=nnx.Rngs(seed))))
    pure = nnx.to_pure_dict(state)
    with np.load(path) as saved:
        paths, treedef = jax.tree_util.tree_flatten_with_path(pure)
        names = [jax.tree_util.keystr(p) for p, _ in paths]
        missing = [n for n in names if n not in saved]
        if missing:
            raise ValueError(f"cached classifier {path} lacks parameters {missing}")
        for (_, ref), name in zip(paths, names, strict=True):
            if saved[name].shape != ref.shape:
                raise ValueError(
                    f"cached classifier {path}: {name} has shape {saved[name].shape}, expected {ref.shape}"
                )
        leaves = [jnp.asarray(saved[n]) for n in names]
        info = json.loads(str(saved[_INFO_KEY]))
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_unflatten(treedef, leaves))
    return nnx.merge(graphdef, state), info


def train_digit_classifier(
    seed: int = 0, width: int = 16, *, cache_dir: str | None = None, steps: int = DEFAULT_STEPS
) -> tuple[DigitClassifier, dict[str, Any]]:
    """A :class:`DigitClassifier` trained on the 1,297 training digits; loaded from ``cache_dir`` if cached.

    Cross-entropy with AdamW (cosine-decayed learning rate) on batches of 128,
    each image shifted by up to one pixel (a cheap augmentation that buys
    held-out accuracy on a 1,297-image training set).

    Args:
      seed: initialisation, batch order and augmentation.
      width: channels of the first conv (see :class:`DigitClassifier`).
      cache_dir: directory of the ``.npz`` cache (e.g. ``<run_dir>/classifier``);
        ``None``: always train, never save.
      steps: optimizer steps.

    Returns:
      ``(classifier, info)``; ``info`` has ``heldout_accuracy`` (on the 500
      held-out digits), ``train_seconds`` (of the original training), ``cached``
      (``True`` when loaded) and the settings ``seed``, ``width``, ``steps``.
    """
    for name, value in (("seed", seed), ("width", width), ("steps", steps)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | np.integer)
            or value < (0 if name == "seed" else 1)
        ):
            raise ValueError(
                f"{name} must be a {'non-negative' if name == 'seed' else 'positive'} int, got {value!r}"
            )
    seed, width, steps = int(seed), int(width), int(steps)
    path = _cache_path(cache_dir, seed, width, steps) if cache_dir is not None else None
    if path is not None and os.path.exists(path):
        model, info = _load(path, seed, width)
        return model, {**info, "cached": True}
    start = time.perf_counter()
    model = _train(seed, width, steps)
    split = load_digits_split()
    info = {
        "seed": seed,
        "width": width,
        "steps": steps,
        "train_seconds": time.perf_counter() - start,
        "heldout_accuracy": classifier_accuracy(model, split.heldout_images, split.heldout_labels),
    }
    if path is not None:
        _save(path, model, info)
    return model, {**info, "cached": False}
