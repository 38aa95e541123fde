"""``WandbLoggerCallback``: Weights & Biases logging that never stops training.

Inside ``fit`` the callback logs from ``on_log`` (interval-averaged host
metrics, no extra device sync). In a hand-written loop (the user calls
``on_train_begin``, ``on_train_batch_end(trainer, metrics, step)`` and
``on_train_end`` by hand) it logs from ``on_train_batch_end`` every
``log_every_n_steps`` steps, pulling that step's device metrics to the host
only then. Either way the W&B step is the trainer's global step that the
metrics belong to (``on_log``'s ``step``), never a second counter.

A failing W&B (no network, bad credentials, ``wandb.init`` raising) logs one
warning and turns the callback into a no-op; training continues.
"""

from __future__ import annotations

import dataclasses
import logging
import netrc
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from artifex_rl.callbacks._host import json_compatible
from artifex_rl.events import Callback

if TYPE_CHECKING:
    from artifex_rl.trainer import Trainer

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WandbLoggerConfig:
    """Settings of :class:`WandbLoggerCallback`.

    Attributes:
      project: W&B project.
      name: run name (W&B picks one when ``None``).
      entity: W&B entity (user or team).
      config: extra run config (e.g. the algorithm's settings as the user
        sees them); logged next to the trainer's own config.
      log_every_n_steps: log every this many global steps. In ``fit``,
        metrics arrive every ``TrainerConfig.log_every_n_steps`` steps and
        are forwarded when a multiple of this is crossed; in a hand-written
        loop this is the only logging interval.
      mode: ``"online"``, ``"offline"`` or ``"disabled"``. ``None``: the
        ``WANDB_MODE`` environment variable, else ``"offline"`` when no API
        key is configured (no ``WANDB_API_KEY``, no netrc entry), else
        ``"online"``.
      dir: directory for W&B's local files (default: W&B's own choice).
      tags: run tags.
    """

    project: str
    name: str | None = None
    entity: str | None = None
    config: Mapping[str, Any] | None = None
    log_every_n_steps: int = 10
    mode: str | None = None
    dir: str | None = None
    tags: Sequence[str] = ()

    def __post_init__(self) -> None:
        if self.log_every_n_steps < 1:
            raise ValueError(
                f"WandbLoggerConfig.log_every_n_steps must be >= 1, got {self.log_every_n_steps}"
            )
        if self.mode not in (None, "online", "offline", "disabled"):
            raise ValueError(
                f"WandbLoggerConfig.mode must be 'online', 'offline', 'disabled' or None, got {self.mode!r}"
            )


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str | None) -> str:
    """The W&B mode to use: ``mode``, else ``$WANDB_MODE``, else offline without an API key."""
    if mode is not None:
        return mode
    env = os.environ.get("WANDB_MODE")
    if env:
        return env
    return "online" if _has_api_key() else "offline"


class WandbLoggerCallback(Callback):
    """Logs configs and metrics to Weights & Biases against ``trainer.global_step``.

    The run is created lazily in ``on_train_begin`` and finished in
    ``on_train_end`` (exit code 0) or ``on_exception`` (exit code 1, shown as
    failed). The run id is part of ``state_dict``, so a resumed training
    continues the same W&B run.
    """

    log_may_lag = True  # on_log only records (metrics, step)
    main_process_only = True  # several processes: process 0 writes

    def __init__(self, config: WandbLoggerConfig):
        if not isinstance(config, WandbLoggerConfig):
            raise TypeError(f"WandbLoggerCallback expects a WandbLoggerConfig, got {type(config).__name__}")
        self.config = config
        self.run: Any = None
        self._disabled = False
        self._run_id: str | None = None
        self._trainer: Trainer | None = None
        self._last_logged_step = 0
        self._unlogged: tuple[dict[str, float], int] | None = None

    # ------------------------------------------------------------------ #
    # Hooks
    # ------------------------------------------------------------------ #
    def on_train_begin(self, trainer: Trainer) -> None:
        self._trainer = trainer
        self._last_logged_step = trainer.global_step
        self._unlogged = None
        if self._disabled or self.run is not None:
            return
        mode = resolve_mode(self.config.mode)
        if mode == "disabled":
            return
        run_config = json_compatible(
            {
                **dict(self.config.config or {}),
                "trainer": {"class": type(trainer).__name__, **trainer.config.to_dict()},
            }
        )
        resume = {"id": self._run_id, "resume": "allow"} if self._run_id else {}
        try:
            import wandb

            self.run = wandb.init(
                project=self.config.project,
                name=self.config.name,
                entity=self.config.entity,
                config=run_config,
                mode=mode,
                dir=self.config.dir,
                tags=list(self.config.tags) or None,
                **resume,
            )
            self._run_id = self.run.id
        except Exception as exc:  # noqa: BLE001 - W&B must never stop training
            self._fail("wandb.init", exc)

    def on_log(self, trainer: Trainer, metrics: Mapping[str, float], step: int) -> None:
        every = self.config.log_every_n_steps
        if step // every > self._last_logged_step // every:
            self._log(dict(metrics), step)
        else:
            self._unlogged = (dict(metrics), step)

    def on_train_end(self, trainer: Trainer) -> None:
        if self._unlogged is not None and self._unlogged[1] > self._last_logged_step:
            self._log(*self._unlogged)  # the last (partial) interval of fit
        self._finish(exit_code=0)

    def on_exception(self, trainer: Trainer, exception: BaseException) -> None:
        self._finish(exit_code=1)

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self._run_id}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._run_id = state.get("run_id") or self._run_id

    # ------------------------------------------------------------------ #
    # Extras for trainers
    # ------------------------------------------------------------------ #
    def log_table(
        self,
        name: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        step: int | None = None,
    ) -> None:
        """Log a small table (e.g. prompts and generated text) as a ``wandb.Table``.

        ``step`` defaults to the trainer's current global step. A trainer can
        reach this with ``for cb in trainer.callbacks: getattr(cb, "log_table", ...)``.
        """
        if self.run is None:
            return
        if step is None:
            step = self._trainer.global_step if self._trainer is not None else None
        try:
            import wandb

            table = wandb.Table(columns=list(columns), data=[list(r) for r in rows])
            self.run.log({name: table}, step=step)
        except Exception as exc:  # noqa: BLE001
            self._fail("wandb log_table", exc)

    # ------------------------------------------------------------------ #
    # Internals
    # ------------------------------------------------------------------ #
    def _log(self, metrics: dict[str, float], step: int) -> None:
        self._last_logged_step = step
        self._unlogged = None
        if self.run is None:
            return
        try:
            self.run.log(metrics, step=step)
        except Exception as exc:  # noqa: BLE001
            self._fail("wandb.log", exc)

    def _finish(self, exit_code: int) -> None:
        run, self.run = self.run, None
        if run is None:
            return
        try:
            run.finish(exit_code=exit_code)
        except Exception as exc:  # noqa: BLE001
            self._fail("wandb finish", exc)

    def _fail(self, what: str, exc: Exception) -> None:
        """Warn once and switch W&B off for the rest of this callback's life."""
        if not self._disabled:
            _log.warning(
                "W&B logging disabled: %s failed with %s: %s (training continues)",
                what,
                type(exc).__name__,
                exc,
            )
        self._disabled = True
        run, self.run = self.run, None
        if run is not None:
            try:
                run.finish(exit_code=1)
            except Exception:  # noqa: BLE001, S110 - already reported once
                pass
