"""The command line: options a recipe does not read are errors; any gymnax env trains; run directories."""

from __future__ import annotations

import json
import shlex

import pytest

from artifex_rl.cli import ACTIVATIONS, build_parser, check_options, main
from artifex_rl.recipes import (
    CHAIN_RL_OPTIONS,
    COMMON_OPTIONS,
    DENOISING_OPTIONS,
    ENV_OPTIONS,
    LM_OPTIONS,
    PPO_OPTIONS,
    RECIPE_INFO,
)

#: A valid value for each recipe-specific option.
OPTION_ARGS: dict[str, list[str]] = {
    "env": ["--env", "CartPole-v1"],
    "total_timesteps": ["--total-timesteps", "1000"],
    "num_envs": ["--num-envs", "2"],
    "num_steps": ["--num-steps", "8"],
    "learning_rate": ["--learning-rate", "1e-3"],
    "anneal_lr": ["--no-anneal-lr"],
    "hidden": ["--hidden", "32", "32"],
    "activation": ["--activation", "relu"],
    "gamma": ["--gamma", "0.9"],
    "entropy_coeff": ["--entropy-coeff", "0.0"],
    "max_grad_norm": ["--max-grad-norm", "1.0"],
    "log_every": ["--log-every", "2"],
    "steps_per_execution": ["--steps-per-execution", "2"],
    "gae_lambda": ["--gae-lambda", "0.9"],
    "clip_param": ["--clip-param", "0.1"],
    "vf_coeff": ["--vf-coeff", "1.0"],
    "update_epochs": ["--update-epochs", "2"],
    "num_minibatches": ["--num-minibatches", "2"],
    "steps": ["--steps", "3"],
    "task": ["--task", "sort_digits"],
    "target_digit": ["--target-digit", "7"],
    "conditional": ["--conditional"],
    "base_run": ["--base-run", "/nonexistent/base"],
    "unconditional": ["--unconditional"],
}
RECIPE_SPECIFIC = ENV_OPTIONS | PPO_OPTIONS | LM_OPTIONS | DENOISING_OPTIONS | CHAIN_RL_OPTIONS | {"env"}


def _base(recipe: str) -> list[str]:
    return ["train", recipe, *(OPTION_ARGS["env"] if "env" in RECIPE_INFO[recipe].options else [])]


def test_every_option_is_classified_and_has_a_test_value():
    train = build_parser().train_parser
    dests = {a.dest for a in train._actions} - {"help", "recipe"}
    assert dests == RECIPE_SPECIFIC | COMMON_OPTIONS
    assert set(OPTION_ARGS) == RECIPE_SPECIFIC


def test_the_cli_offers_exactly_the_models_activations():
    from artifex_rl.models.mlp import _ACTIVATIONS

    assert set(ACTIVATIONS) == set(_ACTIVATIONS)


REFUSED = [
    (recipe, dest)
    for recipe, info in sorted(RECIPE_INFO.items())
    for dest in sorted(RECIPE_SPECIFIC - info.options)
]


@pytest.mark.parametrize(("recipe", "dest"), REFUSED, ids=[f"{r}-{d}" for r, d in REFUSED])
def test_an_option_the_recipe_does_not_read_is_an_error(recipe, dest, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*_base(recipe), *OPTION_ARGS[dest], "--run-dir", "/nonexistent/never-written"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    flag = "--" + dest.replace("_", "-")
    assert f"option {flag} is not used by recipe '{recipe}'" in err, err


def test_the_newcomers_example_is_refused_with_a_pointer_to_env(capsys):
    with pytest.raises(SystemExit):
        main(["train", "cartpole-ppo", "--env", "Acrobot-v1", "--total-timesteps", "2048"])
    assert "use `artifex-rl train ppo --env NAME`" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "cartpole-ppo", "--task", "Acrobot-v1"])
    assert "--task is a language-model option" in capsys.readouterr().err


def test_unconditional_is_read_by_the_denoising_recipes_only(capsys):
    assert {name for name, info in RECIPE_INFO.items() if "unconditional" in info.options} == {
        "digits-diffusion", "digits-flow"}
    parser = build_parser()
    assert parser.parse_args(["train", "digits-flow"]).unconditional is None  # absent: not "given as False"
    args = parser.parse_args(["train", "digits-diffusion", "--unconditional"])
    assert args.unconditional is True
    check_options(parser, args)  # no SystemExit
    with pytest.raises(SystemExit):
        main(["train", "digits-vae", "--unconditional"])
    assert "digits-vae trains without class labels already" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "ppo", "--env", "CartPole-v1", "--unconditional"])
    assert "digits-diffusion and digits-flow only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "digits-gan", "--env", "CartPole-v1"])
    assert "digits-gan trains on the UCI digits; it reads --log-every, --steps" in (
        capsys.readouterr().err)


@pytest.mark.parametrize("recipe", sorted(RECIPE_INFO))
def test_every_option_a_recipe_reads_is_accepted(recipe):
    parser = build_parser()
    argv = _base(recipe) + [a for dest in sorted(RECIPE_INFO[recipe].options - {"env"}) for a in OPTION_ARGS[dest]]
    check_options(parser, parser.parse_args(argv))  # no SystemExit


@pytest.mark.parametrize("recipe", ["ppo", "reinforce"])
def test_env_recipes_need_a_known_env(recipe, capsys):
    with pytest.raises(SystemExit):
        main(["train", recipe])
    assert f"recipe '{recipe}' needs --env NAME" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", recipe, "--env", "Breakout-v5"])
    err = capsys.readouterr().err
    assert "--env 'Breakout-v5' is not a gymnax environment" in err and "Breakout-MinAtar" in err


def test_list_describes_every_recipe(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == sorted(RECIPE_INFO)
    assert all(len(line.split()) > 3 for line in lines)


# ---------------------------------------------------------------------------------------
# Family defaults and their layering (no compile)


@pytest.mark.parametrize(
    ("env", "family"),
    [("CartPole-v1", "discrete"), ("Acrobot-v1", "discrete"), ("MountainCar-v0", "discrete"),
     ("Pendulum-v1", "continuous"), ("MountainCarContinuous-v0", "continuous"),
     ("Breakout-MinAtar", "minatar"), ("SpaceInvaders-MinAtar", "minatar")],
)
def test_family_of(env, family):
    from artifex_rl.recipes.env_defaults import family_of

    assert family_of(env) == family


def test_family_defaults_are_the_published_numbers():
    from artifex_rl.recipes.env_runs import resolve

    # PureJaxRL purejaxrl/ppo.py
    s, c, p = resolve("ppo", "Acrobot-v1")
    assert (s.num_envs, s.num_steps, s.learning_rate, s.anneal_lr, s.total_timesteps) == (4, 128, 2.5e-4, True, 500_000)
    assert (c.update_epochs, c.num_minibatches, c.gamma, c.entropy_coeff, c.max_grad_norm) == (4, 4, 0.99, 0.01, 0.5)
    assert p["family"] == "discrete" and "purejaxrl/ppo.py" in p["defaults_source"]
    # rejax configs/gymnax/pendulum.yaml
    s, c, p = resolve("ppo", "Pendulum-v1")
    assert (s.num_envs, s.num_steps, s.learning_rate, s.anneal_lr, s.activation) == (100, 100, 1e-3, False, "swish")
    assert (c.update_epochs, c.num_minibatches, c.gamma, c.entropy_coeff, c.max_grad_norm) == (10, 10, 0.995, 0.0, 10.0)
    assert c.policy == "gaussian" and "pendulum.yaml" in p["defaults_source"]
    # PureJaxRL examples/brax_minatar.ipynb
    s, c, p = resolve("ppo", "Breakout-MinAtar")
    assert (s.num_envs, s.num_steps, s.learning_rate, s.activation, s.total_timesteps) == (64, 128, 5e-3, "relu", 10**7)
    assert (c.update_epochs, c.num_minibatches, c.gamma, c.entropy_coeff) == (4, 8, 0.99, 0.01)
    # REINFORCE: cartpole-reinforce's rollout and optimiser, the family's network.
    s, c, p = resolve("reinforce", "Breakout-MinAtar")
    assert (s.num_envs, s.num_steps, s.learning_rate, s.activation) == (8, 256, 3e-3, "relu")
    assert (c.gamma, c.entropy_coeff, c.max_grad_norm) == (0.99, 0.01, 1.0)


def test_preset_then_command_line_override_the_family():
    from artifex_rl.recipes.cartpole import PENDULUM_PPO
    from artifex_rl.recipes.env_runs import resolve

    s, c, p = resolve("ppo", "Pendulum-v1", PENDULUM_PPO, {"gamma": 0.9, "num_envs": 8}, seed=4)
    assert (s.num_envs, s.num_steps, s.activation, c.num_minibatches, c.gamma, c.seed) == (8, 128, "tanh", 16, 0.9, 4)
    assert p["overrides"] == {"gamma": 0.9, "num_envs": 8}
    with pytest.raises(ValueError, match=r"\['clip_param'\] are not settings of reinforce"):
        resolve("reinforce", "CartPole-v1", overrides={"clip_param": 0.1})
    with pytest.raises(ValueError, match="EnvRunSettings.num_envs must be a positive int, got 0"):
        resolve("ppo", "CartPole-v1", overrides={"num_envs": 0})


# ---------------------------------------------------------------------------------------
# Short real runs: run directory, config.json, summary.json (learning is for bench/)


def _read(run_dir, name):
    return json.loads((run_dir / name).read_text())


def test_ppo_on_acrobot_writes_config_summary_and_tensorboard(tmp_path):
    from tests._tb_events import read_events, scalars

    run_dir = tmp_path / "acrobot"
    argv = ["train", "ppo", "--env", "Acrobot-v1", "--total-timesteps", "512", "--num-envs", "4",
            "--num-steps", "32", "--update-epochs", "1", "--num-minibatches", "2", "--log-every", "1",
            "--steps-per-execution", "2", "--seed", "3", "--tensorboard", "--no-progress",
            "--run-dir", str(run_dir)]
    assert main(argv) == 0

    config = _read(run_dir, "config.json")
    assert config["command"] == shlex.join(["artifex-rl", *argv])
    assert config["run"]["family"] == "discrete" and config["run"]["env"] == "Acrobot-v1"
    assert config["run"]["overrides"] == {"total_timesteps": 512, "num_envs": 4, "num_steps": 32,
                                          "update_epochs": 1, "num_minibatches": 2, "log_every": 1,
                                          "steps_per_execution": 2}
    assert config["run"]["settings"]["learning_rate"] == 2.5e-4  # family default, not overridden
    trainer = config["trainer"]
    assert trainer["class"] == "PPOTrainer" and trainer["update_epochs"] == 1 and trainer["seed"] == 3
    assert trainer["gamma"] == 0.99 and trainer["policy"] == "categorical"

    summary = _read(run_dir, "summary.json")
    assert summary["total_env_steps"] == 512 and summary["iterations"] == 4
    assert summary["family"] == "discrete" and summary["algorithm"] == "ppo"
    # 4 iterations, 2 per compiled call: the second call gives a real figure.
    assert summary["sps"] is not None and summary["sps"] > 0 and "sps_unavailable" not in summary

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    logged = scalars(read_events(run_dir / "tensorboard"))
    for key in ("loss", "entropy", "env_steps"):
        assert [s for s, _ in logged[key]] == [1, 2, 3, 4]
        assert [v for _, v in logged[key]] == pytest.approx([r[key] for r in rows], rel=1e-6)


def test_reinforce_on_pendulum_reports_no_meaningless_sps(tmp_path):
    run_dir = tmp_path / "pendulum"
    assert main(["train", "reinforce", "--env", "Pendulum-v1", "--total-timesteps", "256", "--num-envs", "2",
                 "--num-steps", "64", "--hidden", "16", "--no-progress", "--run-dir", str(run_dir)]) == 0
    config = _read(run_dir, "config.json")
    assert config["run"]["family"] == "continuous"
    assert config["run"]["settings"]["activation"] == "swish" and config["run"]["settings"]["hidden"] == [16]
    assert config["trainer"]["class"] == "REINFORCETrainer" and config["trainer"]["policy"] == "gaussian"
    summary = _read(run_dir, "summary.json")
    assert summary["total_env_steps"] == 256
    # Both iterations ran inside the first (compiling) call.
    assert summary["sps"] is None and "first compiled call" in summary["sps_unavailable"]
    # 128 steps per env, Pendulum's episodes last 200: no return to report, and it says so.
    assert summary["final_episode_return"] is None and "no episode finished" in summary["final_episode_return_unavailable"]


def test_ppo_on_breakout_minatar_flattens_the_image_observations(tmp_path):
    run_dir = tmp_path / "breakout"
    assert main(["train", "ppo", "--env", "Breakout-MinAtar", "--total-timesteps", "256", "--num-envs", "4",
                 "--num-steps", "16", "--update-epochs", "1", "--num-minibatches", "2", "--no-progress",
                 "--run-dir", str(run_dir)]) == 0
    config = _read(run_dir, "config.json")
    assert config["run"]["family"] == "minatar" and "brax_minatar.ipynb" in config["run"]["defaults_source"]
    assert config["run"]["settings"]["activation"] == "relu"
    assert config["trainer"]["gamma"] == 0.99 and config["trainer"]["entropy_coeff"] == 0.01
    summary = _read(run_dir, "summary.json")
    assert summary["env"] == "Breakout-MinAtar" and summary["total_env_steps"] == 256
    assert (run_dir / "checkpoints").is_dir()


def test_digits_diffusion_unconditional_run_says_so(tmp_path, monkeypatch):
    """--unconditional end to end with tiny settings: an unlabelled model, -1 labels, no class accuracy."""
    import dataclasses

    import numpy as np

    from artifex_rl.metrics import train_digit_classifier
    from artifex_rl.recipes.digits import common
    from artifex_rl.recipes.digits import diffusion as recipes

    tiny = dataclasses.replace(recipes.DIFFUSION, channels=(8, 8), sampler={**recipes.DIFFUSION.sampler, "num_steps": 2})
    monkeypatch.setattr(recipes, "DIFFUSION", tiny)
    quick = train_digit_classifier(0, 4, steps=5, cache_dir=str(tmp_path / "classifier"))
    monkeypatch.setattr(common, "evaluation_classifier", lambda run_dir: quick)
    run_dir = tmp_path / "run"
    argv = ["train", "digits-diffusion", "--unconditional", "--steps", "2", "--log-every", "1", "--no-progress",
            "--run-dir", str(run_dir)]
    assert main(argv) == 0
    summary = _read(run_dir, "summary.json")
    assert summary["unconditional"] is True and summary["steps"] == 2
    assert summary["sampler"]["guidance"] == 1.0  # nothing to guide without labels
    assert summary.get("class_accuracy") is None and "class_histogram" in summary
    config = _read(run_dir, "config.json")
    assert config["command"] == shlex.join(["artifex-rl", *argv])
    assert config["run"]["unconditional"] is True and config["trainer"]["cond_drop_prob"] == 0.0
    with np.load(run_dir / "samples.npz") as data:
        assert data["images"].shape == (500, 8, 8, 1) and set(data["labels"].tolist()) == {-1}


def test_compile_cache_directory_comes_from_the_option_then_the_environment(monkeypatch, tmp_path):
    from artifex_rl.recipes.compile_cache import ENV_VAR, default_cache_dir, resolve_cache_dir

    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == str(tmp_path / "xdg" / "artifex_rl" / "jax")
    assert resolve_cache_dir(None) == default_cache_dir()
    assert resolve_cache_dir(str(tmp_path / "mine")) == str(tmp_path / "mine")
    monkeypatch.setenv(ENV_VAR, "OFF")
    assert resolve_cache_dir(None) is None
    assert resolve_cache_dir(str(tmp_path / "mine")) == str(tmp_path / "mine")  # the option wins
    assert resolve_cache_dir("off") is None and resolve_cache_dir("none") is None


def test_a_second_run_loads_its_programs_from_the_compile_cache(tmp_path):
    """The first run writes its compiled programs; the next skips XLA's compilation and trains the same."""
    import os
    import subprocess
    import sys

    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}

    def run(name: str) -> tuple[dict, list[dict]]:
        run_dir = tmp_path / name
        subprocess.run([sys.executable, "-m", "artifex_rl.cli", "train", "cartpole-ppo", "--total-timesteps", "10240",
                        "--log-every", "5", "--no-progress", "--run-dir", str(run_dir), "--compile-cache", str(cache)],
                       check=True, capture_output=True, env=env)
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return json.loads((run_dir / "summary.json").read_text()), rows

    first, first_rows = run("first")
    assert any(cache.iterdir()), "the first run wrote nothing to the cache"
    second, second_rows = run("second")
    # Tracing and lowering still run; XLA's compilation of the training program is what is skipped.
    assert second["compile_seconds_fit"] < 0.6 * first["compile_seconds_fit"], (first, second)
    assert [r["loss"] for r in second_rows] == [r["loss"] for r in first_rows]
    for summary in (first, second):
        assert summary["compile_seconds"] == pytest.approx(
            summary["compile_seconds_build"] + summary["compile_seconds_fit"])


def test_an_unwritable_compile_cache_directory_turns_the_cache_off_with_a_warning(monkeypatch, tmp_path):
    from artifex_rl.recipes import compile_cache

    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.warns(UserWarning, match="compilation cache off: cannot create"):
        assert compile_cache.enable_compile_cache(str(blocker / "cache")) is None
    assert compile_cache.enable_compile_cache("off") is None
