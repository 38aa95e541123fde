"""Noise schedules of DDPM-style diffusion: ``beta_k``, ``alpha_bar_k`` for ``k = 0..T-1``.

* ``"linear"``: Ho et al. (2020), ``beta`` linear from ``1e-4`` to ``0.02`` at
  ``T = 1000``; for other ``T`` both ends are scaled by ``1000 / T`` (Nichol &
  Dhariwal, 2021, appendix) so the total noise stays the same.
* ``"cosine"``: Nichol & Dhariwal (2021), ``alpha_bar(k) = f(k + 1) / f(0)``
  with ``f(s) = cos(((s / T) + 0.008) / 1.008 * pi / 2) ** 2``, each
  ``beta`` clipped to at most ``0.999``.

Index ``k`` is the ``k + 1``-th noising step of the paper; ``x_k = sqrt(ab_k) x_0
+ sqrt(1 - ab_k) eps``. The denoiser sees the time ``t = k / T`` in ``[0, 1)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

SCHEDULES = ("linear", "cosine")


class NoiseSchedule(NamedTuple):
    """float32 arrays ``(T,)``: ``betas`` and their running product ``alpha_bars``."""

    betas: np.ndarray
    alpha_bars: np.ndarray

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """``(T,)`` linearly spaced betas, scaled by ``1000 / T`` (float64)."""
    scale = 1000.0 / num_timesteps
    return np.linspace(beta_start * scale, beta_end * scale, num_timesteps, dtype=np.float64)


def cosine_alpha_bars(num_timesteps: int, offset: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """``(T,)`` alpha_bar of the cosine schedule, built from clipped betas (float64)."""
    steps = np.arange(num_timesteps + 1, dtype=np.float64)
    f = np.cos((steps / num_timesteps + offset) / (1 + offset) * math.pi / 2) ** 2
    betas = np.minimum(1.0 - f[1:] / f[:-1], max_beta)
    return np.cumprod(1.0 - betas)


def make_schedule(name: str, num_timesteps: int, *, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
    """The schedule ``name`` (``"linear"`` or ``"cosine"``) with ``num_timesteps`` steps.

    Raises ValueError naming the field when the schedule is impossible (a beta
    outside ``(0, 1)``, fewer than 2 steps, an unknown name).
    """
    if name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 2:
        raise ValueError(f"num_timesteps must be an int >= 2, got {num_timesteps!r}")
    if name == "linear":
        if not 0 < beta_start <= beta_end:
            raise ValueError(f"beta_start must be in (0, beta_end={beta_end}], got {beta_start}")
        betas = linear_betas(num_timesteps, beta_start, beta_end)
        if betas[-1] >= 1.0:
            raise ValueError(
                f"beta_end={beta_end} scaled by 1000 / num_timesteps={num_timesteps} gives a beta of "
                f"{betas[-1]:.3f} >= 1: use more num_timesteps or a smaller beta_end"
            )
        alpha_bars = np.cumprod(1.0 - betas)
    else:
        alpha_bars = cosine_alpha_bars(num_timesteps)
        betas = 1.0 - alpha_bars / np.concatenate([[1.0], alpha_bars[:-1]])
    return NoiseSchedule(betas.astype(np.float32), alpha_bars.astype(np.float32))


def sampling_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
    """``num_steps`` indices from ``T - 1`` down to 0, evenly spaced (DDIM's sub-sequence), int32."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be an int in [1, num_timesteps={num_timesteps}], got {num_steps!r}")
    return np.round(np.linspace(num_timesteps - 1, 0, num_steps)).astype(np.int32)


__all__ = ["SCHEDULES", "NoiseSchedule", "cosine_alpha_bars", "linear_betas", "make_schedule", "sampling_timesteps"]
