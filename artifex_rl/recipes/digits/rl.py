"""Recipes ``digits-{grpo,ppo,reinforce}-diffusion`` and ``digits-grpo-flow``: RL on a digit sampler's chain.

The seeds' first integration example made real (DDPO, Black et al. 2023;
Flow-GRPO, Liu et al. 2025): a digit diffusion (or flow) model, trained by
``digits-diffusion``/``digits-flow`` (``--base-run DIR``, or trained and cached
in ``<run_dir>/base``), is fine-tuned with :class:`~artifex_rl.GRPOTrainer` and a
:class:`~artifex_rl.generative.DenoisingChainPolicy` so that its samples win a
reward:

* default (**unconditional** base model): reward = ``P(digit = --target-digit)``
  under a *reward* classifier (seed 1, width 12); every prompt is the same
  (the model has no condition), ``G`` chains per prompt.
* ``--conditional``: a class-conditional base model sampled *without*
  guidance; each prompt is a label and its reward is ``P(label)``.

``digits-reinforce-diffusion`` trains the same chains with
:class:`~artifex_rl.REINFORCETrainer` (one chain per prompt, as many chains
per step as GRPO, the batch-normalised reward as the advantage: DDPO's
per-prompt statistics, with one prompt); ``digits-ppo-diffusion`` with
:class:`~artifex_rl.PPOTrainer` (DDPO's importance-sampling variant: the same
advantages per condition, 2 epochs x 2 minibatches of clipped updates, no
value network).

Before the first update and after the last, 500 samples from the training
sampler (DDIM with ``eta = 1``, or the flow SDE) are scored by the reward
classifier (``initial_mean_reward``/``final_mean_reward``) and by the separate
*evaluation* classifier (seed 0, width 16): the cFD to the held-out digits of
the target class (against that class's real floor and noise baseline), the
fraction recognised as the target, and the KL of the trained sampler to the
base model on those chains. Written: ``samples_before.npz``/``.png``,
``samples_after.npz``/``.png``, ``before_after.png``, ``summary.json``,
``metrics.jsonl``/``metrics.png``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from argparse import Namespace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from artifex_rl.data import ArrayDataLoader, load_digits_split
from artifex_rl.generative.chain_policy import DenoisingChainPolicy
from artifex_rl.generative.diffusion_dpo import DenoisingLikelihood
from artifex_rl.generative.image_rewards import DigitClassifierReward
from artifex_rl.metrics import train_digit_classifier
from artifex_rl.metrics.classifier import classifier_features, predict_logits
from artifex_rl.metrics.evaluate import noise_baseline_images
from artifex_rl.metrics.frechet import classifier_frechet_distance
from artifex_rl.plotting import save_sample_grid
from artifex_rl.recipes.common import standard_callbacks, write_summary
from artifex_rl.recipes.digits.common import (
    NUM_SAMPLES,
    classifier_cache_dir,
    evaluation_classifier,
    write_samples,
)
from artifex_rl.recipes.digits.diffusion import DIFFUSION, FLOW, load_denoiser_run, run_denoiser_recipe
from artifex_rl.rl.configs import DPOConfig, GRPOConfig, PPOConfig, REINFORCEConfig
from artifex_rl.rl.dpo import DPOTrainer
from artifex_rl.rl.grpo import GRPOTrainer
from artifex_rl.rl.ppo import PPOTrainer
from artifex_rl.rl.reinforce import REINFORCETrainer

#: The reward network: another seed and width than the evaluation classifier (seed 0, width 16).
REWARD_CLASSIFIER = {"seed": 1, "width": 12}


@dataclasses.dataclass(frozen=True)
class ChainRLSettings:
    """What defines a GRPO-on-a-sampler run besides the base model."""

    steps: int = 300
    num_prompts: int = 4
    group_size: int = 8
    chain_steps: int = 10
    eta: float = 1.0
    noise_level: float = 0.7
    learning_rate: float = 3e-4
    beta: float = 0.01
    advantage_clip: float = 5.0
    max_grad_norm: float = 1.0
    train_fraction: float = 1.0
    log_every: int = 10
    #: Diffusion-DPO: pairs drawn once from the base model, and beta for per-pixel-mean errors.
    dpo_pairs: int = 512
    dpo_beta: float = 2000.0


SETTINGS = ChainRLSettings()
#: GRPO with --conditional (variant b; measured on the diffusion model): the model starts at ~85% class accuracy, not at P(3) = 0.09, so smaller steps
#: (Adam 1e-4), a stronger KL (0.04) and more labels per step (8 x 4 chains). Measured: with SETTINGS it got
#: worse (0.854 -> 0.768, cFD 8.2 -> 36); with these 0.854 -> 0.900, cFD 8.2 -> 6.2 (docs/generative_rl.md).
CONDITIONAL_SETTINGS = dataclasses.replace(SETTINGS, steps=200, num_prompts=8, group_size=4, learning_rate=1e-4,
                                           beta=0.04)


def _base_trainer(args: Namespace, kind: str, conditional: bool):
    """The base denoiser: ``--base-run``, else trained once into ``<run_dir>/base`` (not timed)."""
    base_dir = getattr(args, "base_run", None)
    if base_dir is None:
        base_dir = os.path.join(args.run_dir, "base")
        try:
            return load_denoiser_run(base_dir)
        except FileNotFoundError:
            base_args = Namespace(
                recipe=f"digits-{kind}", seed=args.seed, run_dir=base_dir, steps=None, unconditional=not conditional,
                wandb_mode="disabled", no_progress=getattr(args, "no_progress", False),
            )
            run_denoiser_recipe(base_args, kind, DIFFUSION if kind == "diffusion" else FLOW)
    trainer = load_denoiser_run(base_dir)
    if (trainer.num_classes is not None) != conditional:
        want = "class-conditional" if conditional else "unconditional"
        raise ValueError(
            f"--base-run {base_dir} holds a {'conditional' if trainer.num_classes else 'unconditional'} model; "
            f"this run needs a {want} one ({'drop' if not conditional else 'add'} --conditional or train "
            f"digits-{kind}{'' if conditional else ' --unconditional'})"
        )
    return trainer


def _policy(kind: str, base, settings: ChainRLSettings) -> DenoisingChainPolicy:
    if kind == "diffusion":
        return DenoisingChainPolicy.diffusion(
            base.schedule, num_steps=settings.chain_steps, eta=settings.eta, prediction=base.config.prediction,
            train_fraction=settings.train_fraction,
        )
    return DenoisingChainPolicy.flow(
        num_steps=settings.chain_steps, noise_level=settings.noise_level, train_fraction=settings.train_fraction
    )


@functools.partial(jax.jit, static_argnums=(0, 1))
def _rollout(policy, graphdef, state, conditions, key):
    return policy.rollout(nnx.merge(graphdef, state), conditions, key).samples


@functools.partial(jax.jit, static_argnums=(0, 1))
def _chain_kl(policy, graphdef, state, base_state, conditions, key):
    """Mean per-pixel KL(trained || base) over every stochastic step of chains drawn by the trained sampler."""
    model, base = nnx.merge(graphdef, state), nnx.merge(graphdef, base_state)
    trajectory = policy.rollout(model, conditions, key)
    steps = jnp.broadcast_to(jnp.asarray(policy.stochastic_steps), (conditions.shape[0], policy.stochastic_steps.size))
    scores = policy.score(model, conditions, trajectory.states, steps)
    return jnp.mean(policy.kl(scores, policy.score(base, conditions, trajectory.states, steps).means))


def _sample(policy, model: nnx.Module, conditions: np.ndarray, seed: int) -> np.ndarray:
    graphdef, state = nnx.split(model)
    out = [np.asarray(_rollout(policy, graphdef, state, jnp.asarray(conditions[i : i + 100]),
                               jax.random.fold_in(jax.random.key(seed), i)))
           for i in range(0, len(conditions), 100)]
    return np.concatenate(out)


def _class_cfd(classifier, images: np.ndarray, target: int) -> dict[str, float]:
    """cFD of ``images`` to the held-out digits of class ``target``, with that class's floor and noise baseline.

    Per class there are ~50 held-out digits (and ~130 training digits): the
    covariance estimate is poor and the numbers are comparable only with each
    other (same reference set), not with the all-class cFDs.
    """
    split = load_digits_split()
    reference = classifier_features(classifier, split.heldout_images[split.heldout_labels == target])
    train = split.train_images[split.train_labels == target]
    return {
        "cfd_target": classifier_frechet_distance(classifier_features(classifier, images), reference),
        "cfd_target_real_floor": classifier_frechet_distance(classifier_features(classifier, train), reference),
        "cfd_target_noise_baseline": classifier_frechet_distance(
            classifier_features(classifier, noise_baseline_images(len(images))), reference
        ),
    }


def _evaluate(policy, model, conditions, seed, reward_fn, classifier, target, conditional) -> tuple[np.ndarray, dict]:
    images = _sample(policy, model, conditions, seed)
    rewards = np.asarray(reward_fn(jnp.asarray(images), jnp.asarray(conditions)))
    predicted = predict_logits(classifier, images).argmax(axis=-1)
    wanted = conditions if conditional else np.full(len(images), target)
    scores = {"mean_reward": float(rewards.mean()), "class_accuracy": float(np.mean(predicted == wanted)),
              "class_histogram": (np.bincount(predicted, minlength=10) / len(predicted)).tolist()}
    if not conditional:
        scores.update(_class_cfd(classifier, images, target))
    else:
        from artifex_rl.metrics import evaluate_samples

        scores["cfd"] = evaluate_samples(classifier, images, conditions)["cfd"]
    return images, scores


def _run(args: Namespace, kind: str, algorithm: str = "grpo", settings: ChainRLSettings | None = None) -> dict[str, Any]:
    conditional = bool(getattr(args, "conditional", False))
    settings = settings or (CONDITIONAL_SETTINGS if conditional and algorithm == "grpo" else SETTINGS)
    target = int(getattr(args, "target_digit", None) or 3)
    if not 0 <= target <= 9:
        raise ValueError(f"--target-digit must be in 0..9, got {target}")
    steps = getattr(args, "steps", None) or settings.steps
    log_every = getattr(args, "log_every", None) or min(settings.log_every, steps)
    base = _base_trainer(args, kind, conditional)
    start = time.perf_counter()

    # The policy starts from the base model's EMA weights (what its sampler uses).
    model = nnx.merge(base.slots["model"].graphdef, base.ema_params, base.train_state["model_state"]["model"])
    cache = classifier_cache_dir(args.run_dir)
    reward_clf, reward_info = train_digit_classifier(**REWARD_CLASSIFIER, cache_dir=cache)
    classifier, eval_info = evaluation_classifier(args.run_dir)
    reward_fn = DigitClassifierReward(reward_clf, target=None if conditional else target)
    policy = _policy(kind, base, settings)
    optimizer = optax.adam(settings.learning_rate)
    if algorithm == "grpo":
        config: GRPOConfig | PPOConfig | REINFORCEConfig | DPOConfig = GRPOConfig(
            num_generations=settings.group_size, beta=settings.beta, entropy_coeff=0.0,
            advantage_clip=settings.advantage_clip, max_grad_norm=settings.max_grad_norm, seed=args.seed,
            log_every_n_steps=log_every,
        )
        trainer: GRPOTrainer | PPOTrainer | REINFORCETrainer | DPOTrainer = GRPOTrainer(
            model, optimizer, config, policy=policy, reward_fn=reward_fn
        )
        prompts_per_step = settings.num_prompts
    elif algorithm == "ppo":  # DDPO_IS: per-condition reward statistics, 2 epochs x 2 minibatches, no critic
        # scan_unroll: the 4 updates are a scan, and a conv gradient in a rolled scan is ~16x slower on XLA:CPU.
        config = PPOConfig(entropy_coeff=0.0, update_epochs=2, num_minibatches=2, max_grad_norm=settings.max_grad_norm,
                           seed=args.seed, log_every_n_steps=log_every, scan_unroll=True)
        trainer = PPOTrainer(model, optimizer, config, policy=policy, reward_fn=reward_fn)
        prompts_per_step = settings.num_prompts * settings.group_size
    elif algorithm == "dpo":  # Diffusion-DPO on pairs ranked by the reward, drawn once from the base model
        config = DPOConfig(beta=settings.dpo_beta, max_grad_norm=settings.max_grad_norm, seed=args.seed,
                           log_every_n_steps=log_every)
        likelihood = DenoisingLikelihood(base.schedule, prediction=base.config.prediction)
        trainer = DPOTrainer(model, optimizer, config, policy=likelihood)
        prompts_per_step = settings.num_prompts * settings.group_size
    else:  # one chain per prompt, the same number of reward evaluations per step as GRPO
        config = REINFORCEConfig(entropy_coeff=0.0, max_grad_norm=settings.max_grad_norm, seed=args.seed,
                                 log_every_n_steps=log_every)
        trainer = REINFORCETrainer(model, optimizer, config, policy=policy, reward_fn=reward_fn)
        prompts_per_step = settings.num_prompts * settings.group_size

    eval_conditions = (np.arange(NUM_SAMPLES, dtype=np.int32) % 10) if conditional else np.zeros(NUM_SAMPLES, np.int32)
    eval_args = (eval_conditions, args.seed + 1000, reward_fn, classifier, target, conditional)
    before_images, before = _evaluate(policy, trainer.model, *eval_args)
    write_samples(args.run_dir, before_images, eval_conditions if conditional else None, name="samples_before",
                  title=f"before {algorithm.upper()}")

    prompts = (np.arange(1000, dtype=np.int32) % 10) if conditional else np.zeros(1000, np.int32)
    data = {"observations": prompts}
    if algorithm == "dpo":
        data = _preference_pairs(policy, trainer.model, reward_fn, settings, conditional, args.seed)
    loader = ArrayDataLoader(data, prompts_per_step, seed=args.seed)
    run_config = {"recipe": args.recipe, "kind": kind, "algorithm": algorithm, "conditional": conditional, "target_digit": target,
                  "base_run": getattr(args, "base_run", None) or os.path.join(args.run_dir, "base"),
                  **dataclasses.asdict(settings), "steps": steps, **trainer.config.to_dict()}
    callbacks = standard_callbacks(args, run_config=run_config, checkpoint_every=max(steps // 2, 1))
    fit_start = time.perf_counter()
    trainer.fit(loader, max_steps=steps, callbacks=callbacks, ckpt_path="last")
    jax.block_until_ready(trainer.train_state)
    train_seconds = time.perf_counter() - fit_start

    after_images, after = _evaluate(policy, trainer.model, *eval_args)
    write_samples(args.run_dir, after_images, eval_conditions if conditional else None, name="samples_after",
                  title=f"after {algorithm.upper()}")
    picked = slice(0, 50)
    save_sample_grid(np.concatenate([before_images[picked], after_images[picked]]),
                     os.path.join(args.run_dir, "before_after.png"),
                     title=f"before (top 5 rows) / after (bottom 5 rows) {algorithm.upper()}")
    graphdef, state = nnx.split(trainer.model)
    final_kl = float(_chain_kl(policy, graphdef, state, _base_state(base),
                               jnp.asarray(eval_conditions), jax.random.key(args.seed + 2000)))
    summary: dict[str, Any] = {
        "recipe": args.recipe, "kind": kind, "algorithm": algorithm, "conditional": conditional, "target_digit": None if conditional else target,
        "steps": trainer.global_step,
        "reward_evaluations": (settings.dpo_pairs * settings.group_size if algorithm == "dpo"
                               else trainer.global_step * settings.num_prompts * settings.group_size),
        "initial_mean_reward": before["mean_reward"], "final_mean_reward": after["mean_reward"],
        "final_kl": final_kl, "wall_seconds": time.perf_counter() - start, "train_seconds": train_seconds,
        "reward_classifier": {k: reward_info[k] for k in ("seed", "width", "heldout_accuracy")},
        "eval_classifier": {k: eval_info[k] for k in ("seed", "width", "heldout_accuracy")},
        "load_average_1min": os.getloadavg()[0], "cpu_count": os.cpu_count(),
    }
    for name, scores in (("initial", before), ("final", after)):
        for key, value in scores.items():
            if key != "mean_reward":
                summary[f"{name}_{key}"] = value
    write_summary(args.run_dir, summary)
    return summary


def _preference_pairs(policy, model, reward_fn, settings: ChainRLSettings, conditional: bool, seed: int):
    """``dpo_pairs`` pairs (best vs worst of ``group_size`` samples of one condition, by the reward) drawn
    from the base model's training sampler before any update (Wallace et al.'s offline pairs)."""
    groups = settings.dpo_pairs
    conditions = (np.arange(groups, dtype=np.int32) % 10) if conditional else np.zeros(groups, np.int32)
    repeated = np.repeat(conditions, settings.group_size)
    images = _sample(policy, model, repeated, seed + 3000)
    rewards = np.asarray(reward_fn(jnp.asarray(images), jnp.asarray(repeated))).reshape(groups, settings.group_size)
    images = images.reshape(groups, settings.group_size, *images.shape[1:])
    rows = np.arange(groups)
    return {"observations": conditions, "chosen": images[rows, rewards.argmax(1)],
            "rejected": images[rows, rewards.argmin(1)]}


def _base_state(base) -> Any:
    """The base model's EMA weights as an ``nnx.State`` like the policy's."""
    return nnx.split(nnx.merge(base.slots["model"].graphdef, base.ema_params, base.train_state["model_state"]["model"]))[1]


def run_grpo_diffusion(args: Namespace) -> dict[str, Any]:
    """``artifex-rl train digits-grpo-diffusion``: GRPO on DDIM (eta 1) chains of a digit diffusion model."""
    return _run(args, "diffusion")


def run_grpo_flow(args: Namespace) -> dict[str, Any]:
    """``artifex-rl train digits-grpo-flow``: GRPO on the flow SDE's chains (Flow-GRPO)."""
    return _run(args, "flow")


def run_ppo_diffusion(args: Namespace) -> dict[str, Any]:
    """``artifex-rl train digits-ppo-diffusion``: PPO (DDPO's importance-sampling variant) on the same
    chains: per-condition reward statistics as advantages, no value network."""
    return _run(args, "diffusion", "ppo")


def run_dpo_diffusion(args: Namespace) -> dict[str, Any]:
    """``artifex-rl train digits-dpo-diffusion``: Diffusion-DPO (Wallace et al., 2023) on pairs ranked by
    the reward (best vs worst of ``group_size`` base-model samples of one condition)."""
    return _run(args, "diffusion", "dpo")


def run_reinforce_diffusion(args: Namespace) -> dict[str, Any]:
    """``artifex-rl train digits-reinforce-diffusion``: REINFORCE (DDPO's score-function estimator)
    on the same chains, with the batch-normalised reward as the advantage."""
    return _run(args, "diffusion", "reinforce")


def plot_reward_curves(run_dirs: dict[str, str], path: str) -> str:
    """One plot of ``mean_reward`` against reward evaluations for several runs of these recipes.

    Args:
      run_dirs: ``{legend name: run directory}`` (each with ``metrics.jsonl`` and ``summary.json``).
      path: the ``.png`` to write.
    """
    import json

    from artifex_rl.plotting import save_learning_curve

    curves, x = {}, None
    for name, run_dir in run_dirs.items():
        with open(os.path.join(run_dir, "summary.json")) as f:
            summary = json.load(f)
        per_step = summary["reward_evaluations"] / summary["steps"]
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if '"mean_reward"' in line]
        steps = np.asarray([r["step"] for r in rows], np.float64) * per_step
        if x is not None and (len(steps) != len(x) or not np.allclose(steps, x)):
            raise ValueError(f"{run_dir} logged at other reward evaluations than the first run; cannot share an x axis")
        x = steps
        curves[name] = [r["mean_reward"] for r in rows]
    return save_learning_curve(x, curves, path, xlabel="reward evaluations", ylabel="mean reward (training batch)",
                               title="P(target digit) of the training sampler's samples")
