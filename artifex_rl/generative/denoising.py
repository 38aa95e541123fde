"""What the diffusion and flow trainers share: the EMA, label dropout, batch checks, sampling plumbing.

* **EMA** of the parameters (``ema <- d ema + (1 - d) params``), updated inside
  the compiled step by :meth:`after_update` and kept in
  ``train_state["extra"]["ema"]``, so it is checkpointed and resumed with the
  rest of the state. Samplers use it by default.
* **Classifier-free guidance** training (Ho & Salimans, 2022): each label is
  replaced by the model's null label with probability ``cond_drop_prob``.
* Batch checks on the host (images ``(B, 8, 8, C)`` floating point, labels
  integers in ``[0, num_classes)``), run before each compiled call on numpy
  batches; the same shape/dtype checks also run at trace time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from artifex_rl.config import TrainerConfig
from artifex_rl.models.images import check_images
from artifex_rl.trainer import Trainer

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class DenoisingConfig(TrainerConfig):
    """Settings shared by :class:`DiffusionConfig` and :class:`FlowConfig`.

    Attributes:
      ema_decay: ``d`` of the parameters' EMA, in ``[0, 1)``.
      cond_drop_prob: probability of replacing a label by the null label
        during training (classifier-free guidance); 0 for no dropout.
    """

    ema_decay: float = 0.995
    cond_drop_prob: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1], got {self.cond_drop_prob}")


def ema_update(ema: Any, params: Any, decay: float) -> Any:
    """``decay * ema + (1 - decay) * params`` leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def drop_labels(labels: Array, rng: Array, prob: float, null_label: int) -> Array:
    """Each label replaced by ``null_label`` with probability ``prob`` (int ``(B,)``)."""
    if prob == 0.0:
        return labels
    return jnp.where(jax.random.uniform(rng, labels.shape) < prob, null_label, labels)


def masked_mean_loss(per_sample: Array, batch: Mapping[str, Array]):
    """``LossTerm(sum(loss * mask), sum(mask))``: exact under gradient accumulation and padding."""
    from artifex_rl.core.loss_terms import LossTerm

    mask = batch.get("mask")
    if mask is None:
        return LossTerm(jnp.sum(per_sample), jnp.asarray(per_sample.shape[0], jnp.float32))
    if jnp.shape(mask) != per_sample.shape:
        raise ValueError(f"batch['mask'] must have shape {per_sample.shape} (one weight per image), "
                         f"got {jnp.shape(mask)}")
    mask = jnp.asarray(mask, jnp.float32)
    return LossTerm(jnp.sum(per_sample * mask), jnp.sum(mask))


class DenoisingTrainer(Trainer):
    """Base of :class:`DiffusionTrainer` and :class:`FlowTrainer` (one denoiser ``model(x, t, labels)``).

    The model must expose ``num_classes`` (``None`` when unconditional) and
    ``null_label`` like :class:`~artifex_rl.models.DenoiserUNet`.
    """

    config_class = DenoisingConfig

    def __init__(self, model: nnx.Module, optimizer: Any, config: DenoisingConfig | None = None, **kwargs: Any):
        self.num_classes: int | None = getattr(model, "num_classes", None)
        self.null_label: int | None = getattr(model, "null_label", None)
        self.image_channels: int = int(getattr(model, "image_channels", 1))
        super().__init__(model, optimizer, config, **kwargs)
        self._samplers: dict[Any, Any] = {}

    # ---- EMA ------------------------------------------------------------ #
    def init_extra_state(self) -> dict[str, Any]:
        return {"ema": jax.tree.map(jnp.array, self.train_state["params"]["model"])}

    def after_update(self, extra: Any, params: Mapping[str, Any], model_state: Mapping[str, Any]) -> Any:
        return {**extra, "ema": ema_update(extra["ema"], params["model"], self.config.ema_decay)}

    @property
    def ema_params(self) -> Any:
        """The EMA parameters (a pytree like ``train_state["params"]["model"]``)."""
        return self.train_state["extra"]["ema"]

    # ---- inputs --------------------------------------------------------- #
    def training_labels(self, batch: Mapping[str, Array], rng: Array) -> Array | None:
        """The batch's labels after classifier-free-guidance dropout (``None`` when unconditional)."""
        if self.num_classes is None:
            return None
        if "labels" not in batch:
            raise ValueError(
                f"a class-conditional model (num_classes={self.num_classes}) needs batch['labels']; "
                f"got keys {sorted(batch)}"
            )
        labels = jnp.asarray(batch["labels"]).astype(jnp.int32)
        return drop_labels(labels, rng, self.config.cond_drop_prob, self.null_label)

    def images_of(self, batch: Mapping[str, Array]) -> Array:
        if "images" not in batch:
            raise ValueError(f"batch needs 'images' (B, 8, 8, {self.image_channels}); got keys {sorted(batch)}")
        images = batch["images"]
        check_images(images, "batch['images']", channels=self.image_channels)
        return images

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        """Host checks of a numpy batch (device arrays are only checked at trace time)."""
        images = batch.get("images")
        if images is None:
            raise ValueError(f"batch needs 'images' (B, 8, 8, {self.image_channels}); got keys {sorted(batch)}")
        check_images(images, "batch['images']", channels=self.image_channels)
        labels = batch.get("labels")
        if self.num_classes is None or labels is None:
            return
        dtype = np.dtype(getattr(labels, "dtype", None) or np.asarray(labels).dtype)
        if jnp.shape(labels) != (images.shape[0],) or not np.issubdtype(dtype, np.integer):
            raise ValueError(
                f"batch['labels'] must be integers of shape ({images.shape[0]},), got "
                f"{getattr(labels, 'dtype', type(labels))} {jnp.shape(labels)}"
            )
        if isinstance(labels, np.ndarray) and labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"batch['labels'] must be in [0, {self.num_classes}), got values in "
                f"[{labels.min()}, {labels.max()}]"
            )

    def train_step(self, batch: Mapping[str, Any]):
        self.check_batch(batch)
        return super().train_step(batch)

    def run_chunk(self, *, batches: Sequence[Mapping[str, Any]] | None = None, **kwargs: Any):
        for b in batches or ():
            self.check_batch(b)
        return super().run_chunk(batches=batches, **kwargs)

    # ---- sampling ------------------------------------------------------- #
    def model_fn(self, params: Any, model_state: Any):
        """``(x, t, labels) -> prediction`` of the denoiser with ``params`` (pure; use inside jit)."""
        model = nnx.merge(self.slots["model"].graphdef, params, model_state)
        return lambda x, t, labels: model(x, t, labels)

    def sample_labels(self, labels: Array | None) -> Array | None:
        """Labels handed to the model while sampling: ``None`` for an unconditional model."""
        return None if self.num_classes is None else labels

    def sample(self, key: Array, labels: Array | np.ndarray, *, use_ema: bool = True, **options: Any) -> Array:
        """Samples ``(B, 8, 8, C)`` for ``labels (B,)`` (ignored by an unconditional model), compiled once
        per set of ``options`` (see :meth:`sampler`)."""
        labels = jnp.asarray(labels, jnp.int32)
        if labels.ndim != 1:
            raise ValueError(f"labels must have shape (B,), got {labels.shape}")
        if self.num_classes is not None and labels.size and not (
            0 <= int(labels.min()) and int(labels.max()) <= self.num_classes
        ):
            raise ValueError(f"labels must be in [0, {self.num_classes}] ({self.num_classes} = null), got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        cache_key = tuple(sorted(options.items()))
        if cache_key not in self._samplers:
            self._samplers[cache_key] = jax.jit(self.sampler(**options))
        params = self.ema_params if use_ema else self.train_state["params"]["model"]
        return self._samplers[cache_key](params, self.train_state["model_state"]["model"], key, labels)

    def check_guidance(self, guidance: float) -> None:
        """Refuse classifier-free guidance for an unconditional model (it would be silently ignored)."""
        if guidance != 1.0 and self.num_classes is None:
            raise ValueError(f"guidance={guidance} needs a class-conditional model; this one is unconditional "
                             "(num_classes=None): use guidance=1.0")

    def sampler(self, **options: Any):
        """A pure ``(params, model_state, key, labels (B,)) -> images`` function (jittable)."""
        raise NotImplementedError
