"""Robots unlike the sim suite's: action bounds other than [-1, 1], and recordings without rewards.

Real MuJoCo (cheetah-run-scaled: cheetah-run commanded in asymmetric units such as a gripper's
[0, 0.04] and joints' [-2.9, 2.9]), real zarr datasets, real ONNX files, through the CLI.
"""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from robot_stack.action_space import ActionSpace
from robot_stack.cli import main as robot_stack
from robot_stack.data import EpisodeStore, standard_keys
from robot_stack.deploy.runtime import INPUT_NAME, OUTPUT_NAME
from robot_stack.errors import DatasetError
from robot_stack.learn.edm import DiffusionConfig, DiffusionGenerator, fit_diffusion
from robot_stack.learn.synthetic import generate, load_generator
from robot_stack.learn.trainer import load_policy
from robot_stack.learn.unet1d import UNet1DConfig
from robot_stack.learn.world_model import WorldModelConfig, fit_world_model

SCALED = "cheetah-run-scaled"
LOW = np.array([0.0, -2.9, -0.5, 0.0, -2.9, -0.5])
HIGH = np.array([0.04, 2.9, 2.0, 0.04, 2.9, 2.0])
SMALL_NETS = ["--agent-param", "hidden_dims=64,64"]
# Tolerances are fractions of each dimension's range (high - low).
BOUNDS_SLACK = 1e-6  # float32 storage of a bound such as -2.9 lies up to 1e-7 outside it


def run_args(dataset, out, steps: int, *extra: str) -> list[str]:
    """A short run; the trainer evaluates once, at the end, for one episode."""
    return ["train", "--dataset", str(dataset), "--out", str(out), "--steps", str(steps),
            "--log-every", str(steps), "--checkpoint-every", str(steps), "--eval-every", "1000000",
            "--eval-episodes", "1", "--quiet", *extra]


def onnx_actions(path, observations: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: observations.astype(np.float32)})[0]


def in_bounds(actions: np.ndarray, low=LOW, high=HIGH) -> bool:
    slack = BOUNDS_SLACK * (high - low)
    return bool(np.all(actions >= low - slack) and np.all(actions <= high + slack))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robot-stack: error:"), err
    return err[0]


# --- the conversion itself ---------------------------------------------------------------------

def test_action_space_maps_asymmetric_bounds_both_ways_and_refuses_missing_ones():
    space = ActionSpace(LOW, HIGH)
    robot = np.array([[0.0, -2.9, -0.5, 0.04, 2.9, 2.0], [0.01, 0.0, 0.75, 0.03, 1.45, 0.0]])
    unit = space.normalize(robot)
    np.testing.assert_allclose(unit[0], [-1, -1, -1, 1, 1, 1], atol=1e-12)
    np.testing.assert_allclose(unit[1], [-0.5, 0.0, 0.0, 0.5, 0.5, -0.6], atol=1e-12)
    np.testing.assert_allclose(space.to_robot(unit), robot, atol=1e-12)
    assert in_bounds(space.to_robot(np.full((1, 6), 1.5)))  # beyond [-1, 1] stays inside the bounds
    with pytest.raises(DatasetError, match="no action bounds"):
        ActionSpace.from_robot({"name": "arm"}, 6, "dataset x")
    with pytest.raises(DatasetError, match="low < high"):
        ActionSpace([0.0, 1.0], [0.0, 2.0])
    with pytest.raises(DatasetError, match="2 action bounds"):
        ActionSpace.from_robot({"action_low": [0, 0], "action_high": [1, 1]}, 6, "dataset x")


def test_scaled_task_takes_robot_units(tmp_path):
    from sim import make_task

    scaled, suite = make_task(SCALED), make_task("cheetah-run")
    description = scaled.robot_description()
    assert description["action_low"] == LOW.tolist() and description["action_high"] == HIGH.tolist()
    state, _ = suite.reset(seed=3)
    unit = np.random.default_rng(0).uniform(-1, 1, (5, 6))
    for a in unit:  # the same step, commanded in robot units and in the suite's [-1, 1]
        robot_next, robot_reward = scaled.step_from(state, LOW + (a + 1) / 2 * (HIGH - LOW))
        suite_next, suite_reward = suite.step_from(state, a)
        np.testing.assert_allclose(robot_next, suite_next, atol=1e-9)
        assert robot_reward == pytest.approx(suite_reward, abs=1e-9)


# --- section 1: collect -> train -> export -> commands in robot units ---------------------------

@pytest.fixture(scope="module")
def scaled_dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("scaled") / "data.zarr"
    assert robot_stack(["sim", "collect", "--task", SCALED, "--policy", "scripted", "--episodes", "4",
                        "--max-steps", "200", "--noise", "0", "--out", str(path), "--quiet"]) == 0
    return path


def test_collected_actions_are_in_robot_units(scaled_dataset):
    actions = EpisodeStore.open(str(scaled_dataset)).read("action")
    assert in_bounds(actions)
    # The gripper dims live in [0, 0.04]; the joint dims use more than [-1, 1].
    assert actions[:, [0, 3]].max() <= 0.04 + 1e-7 and np.ptp(actions[:, [0, 3]], axis=0).min() > 0.01
    assert np.abs(actions[:, [1, 4]]).max() > 1.5


@pytest.mark.parametrize("algo, extra", [
    ("td3bc", ["--agent-param", "alpha=0.05"]),  # a strong BC weight
    ("iql", ["--agent-param", "beta=1.0"]),
])
def test_exported_policy_commands_the_datasets_actions_in_robot_units(scaled_dataset, tmp_path, algo, extra):
    run, policy = tmp_path / "run", tmp_path / "policy.onnx"
    assert robot_stack(run_args(scaled_dataset, run, 1000, "--algo", algo, "--batch-size", "128",
                                *SMALL_NETS, *extra)) == 0
    assert robot_stack(["export", str(run), "--out", str(policy)]) == 0
    store = EpisodeStore.open(str(scaled_dataset))
    observations, actions = store.read("observation"), store.read("action")
    commands = onnx_actions(policy, observations)
    assert in_bounds(commands)
    error = np.abs(commands - actions).mean(axis=0) / (HIGH - LOW)
    # behaviour cloning of a noise-free scripted policy: mean error within 8% of each dimension's
    # range (measured 2-3.5%)
    assert error.max() < 0.08, error
    # the one mapping to robot units is in the graph: the torch actor itself acts in [-1, 1]
    with torch.no_grad():
        unit = load_policy(run).actor(torch.as_tensor(observations[:100])).numpy()
    np.testing.assert_allclose(commands[:100], ActionSpace(LOW, HIGH).to_robot(unit), atol=1e-5)

    assert robot_stack(["eval", "--policy", str(policy), "--task", SCALED, "--episodes", "1", "--json"]) == 0


def test_pgd_samples_are_in_robot_units_and_follow_the_dynamics(scaled_dataset, tmp_path, capsys):
    run, generator = tmp_path / "run", tmp_path / "gen"
    assert robot_stack(run_args(scaled_dataset, run, 100, "--batch-size", "128", *SMALL_NETS)) == 0
    # test_generators' small denoiser: the CLI's default one trains too slowly for a test
    trained = fit_diffusion(scaled_dataset, generator, DiffusionConfig(
        horizon=16, stride=4, unet=UNet1DConfig(base_channels=32, channel_mults=(1, 2)), train_steps=600,
        sample_steps=16))
    untrained = DiffusionGenerator(trained.cfg, trained.layout, trained.normalizer, trained.action_space)
    generate(untrained, episodes=24, out=tmp_path / "untrained.zarr", dataset=scaled_dataset)
    synthetic = tmp_path / "pgd.zarr"
    assert robot_stack(["generate", "--generator", str(generator), "--policy", str(run), "--guidance",
                        "0.05", "--episodes", "24", "--out", str(synthetic)]) == 0

    real = EpisodeStore.open(str(scaled_dataset)).read("action")
    actions = EpisodeStore.open(str(synthetic)).read("action")
    assert in_bounds(actions)
    # in robot units, distributed as the dataset's (guidance moves them a little): per dimension
    # mean and std within 20% of the dimension's range (measured up to 13% for the mean)
    np.testing.assert_array_less(np.abs(actions.mean(0) - real.mean(0)) / (HIGH - LOW), 0.2)
    np.testing.assert_array_less(np.abs(actions.std(0) - real.std(0)) / (HIGH - LOW), 0.2)

    capsys.readouterr()
    assert robot_stack(["validate", "--data", str(scaled_dataset), "--data", str(synthetic), "--data",
                        str(tmp_path / "untrained.zarr"), "--task", SCALED, "--policy", str(run), "--json"]) == 0
    real, pgd, noise = json.loads(capsys.readouterr().out)["datasets"]
    assert real["dynamics_mse"] < 1e-6 and pgd["n_invalid"] == 0  # the recording replays exactly
    # one-step replay error in MuJoCo, in units of the data's state variance, against an untrained
    # denoiser's: unguided samples of this denoiser measured 0.39 of it (the PGD benchmark's
    # 10k-step denoiser reaches 0.03 in absolute terms)
    assert pgd["dynamics_mse"] < 0.6 * noise["dynamics_mse"], (pgd["dynamics_mse"], noise["dynamics_mse"])


def test_agent_hyperparameters_are_set_recorded_and_kept_on_resume(scaled_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    params = ["--agent-param", "alpha=0.5", "--agent-param", "tau=0.01", "--agent-param", "policy_noise=0.1",
              "--agent-param", "noise_clip=0.2"]
    assert robot_stack(run_args(scaled_dataset, run, 20, *SMALL_NETS, *params)) == 0
    assert robot_stack(["train", "--resume", str(run), "--steps", "40", "--quiet"]) == 0
    expected = {"alpha": 0.5, "tau": 0.01, "policy_noise": 0.1, "noise_clip": 0.2, "hidden_dims": [64, 64]}
    assert json.loads((run / "config.json").read_text())["agent_params"] == expected
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["step"] == 40
    assert {k: state["agent"]["config"][k] for k in expected} == {**expected, "hidden_dims": (64, 64)}

    iql = tmp_path / "iql"
    assert robot_stack(run_args(scaled_dataset, iql, 10, "--algo", "iql", *SMALL_NETS, "--agent-param",
                                "expectile=0.9", "--agent-param", "beta=1", "--agent-param", "tau=0.02")) == 0
    config = torch.load(iql / "checkpoint.pt", weights_only=False)["agent"]["config"]
    assert (config["expectile"], config["beta"], config["tau"]) == (0.9, 1.0, 0.02)

    capsys.readouterr()
    for bad, message in ((["--agent-param", "expectile=0.9"], "--agent-param wants NAME=VALUE"),
                         (["--agent-param", "alpha=lots"], "not a valid float"),
                         (["--agent-param", "tau=0"], "tau in (0, 1]")):
        assert robot_stack(run_args(scaled_dataset, tmp_path / "bad", 10, *bad)) == 2
        assert message in one_error_line(capsys)


def test_dataset_without_action_bounds_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "arm.zarr"
    store = EpisodeStore.create(str(path), standard_keys(obs_dim=3, act_dim=2), task="real-arm",
                                robot={"name": "arm", "joint_names": ["j0", "j1"]})
    rng = np.random.default_rng(0)
    store.append_episode({"observation": rng.random((20, 3), np.float32),
                          "action": rng.random((20, 2), np.float32), "reward": np.ones(20, np.float32),
                          "terminal": np.zeros(20, bool), "timestamp": np.arange(20) * 0.1},
                         source="teleop")
    store.close()
    assert robot_stack(run_args(path, tmp_path / "run", 10)) == 2
    assert "no action bounds" in one_error_line(capsys)


# --- section 2: a recording without rewards ----------------------------------------------------

@pytest.fixture(scope="module")
def rewardless_dataset(tmp_path_factory):
    """Scripted cheetah-run episodes rewritten through the store API without the reward key, as
    a teleop recording is, with success labels (the recorder's stop service writes them)."""
    from sim.collect import collect_dataset

    root = tmp_path_factory.mktemp("rewardless")
    collect_dataset("cheetah-run", "scripted", 6, str(root / "source.zarr"), seed=0, max_steps=120,
                    progress=False)
    source = EpisodeStore.open(str(root / "source.zarr"))
    returns = [source.episode(i)["reward"].sum() for i in range(source.n_episodes)]
    path = root / "teleop.zarr"
    store = EpisodeStore.create(str(path), standard_keys(obs_dim=17, act_dim=6, reward=False),
                                task=source.task, robot=source.robot)
    for i in range(source.n_episodes):
        episode = {k: v for k, v in source.episode(i).items() if k != "reward"}
        store.append_episode(episode, source="teleop", success=bool(returns[i] >= np.median(returns)))
    store.close()
    return path


def test_every_verb_works_on_a_dataset_without_rewards(rewardless_dataset, tmp_path, capsys):
    data = str(rewardless_dataset)
    assert "reward" not in EpisodeStore.open(data).keys
    assert robot_stack(["data", "info", data, "--json"]) == 0
    assert robot_stack(["data", "check", data]) == 0

    run, policy = tmp_path / "run", tmp_path / "policy.onnx"
    assert robot_stack(run_args(data, run, 100, "--reward", "success", *SMALL_NETS)) == 0
    pgd = tmp_path / "pgd"
    assert robot_stack(run_args(data, pgd, 60, "--reward", "success", "--synthetic", "pgd", *SMALL_NETS,
                                "--generator-steps", "10", "--synthetic-size", "8", "--horizon", "8",
                                "--sample-steps", "4", "--regen-every", "30")) == 0
    world_model = tmp_path / "wm"
    fit_world_model(data, world_model, WorldModelConfig(max_epochs=3), reward="success")  # a short fit
    assert robot_stack(run_args(data, tmp_path / "wm_run", 30, "--reward", "success", "--synthetic",
                                "world-model", "--generator", str(world_model), *SMALL_NETS,
                                "--synthetic-size", "8", "--regen-every", "30")) == 0
    # The generators learned the trainer's reward: the success labels, not the (absent) dataset's.
    diffusion = load_generator(pgd / "generator")
    n_successful = int((EpisodeStore.open(data).episode_meta["success"] == 1).sum())
    assert diffusion.source["reward"] == "success"
    assert diffusion.normalizer.mean[diffusion.layout.reward] == pytest.approx(
        n_successful / EpisodeStore.open(data).n_steps)
    assert load_generator(world_model).source["reward"] == "success"

    assert robot_stack(["export", str(run), "--out", str(policy)]) == 0
    capsys.readouterr()
    assert robot_stack(["eval", "--policy", str(policy), "--task", "cheetah-run", "--episodes", "1",
                        "--json"]) == 0
    assert np.isfinite(json.loads(capsys.readouterr().out)["mean_return"])

    generator, synthetic = tmp_path / "gen", tmp_path / "synthetic.zarr"
    assert robot_stack(["train-generator", "--kind", "diffusion", "--dataset", data, "--out", str(generator),
                        "--steps", "5", "--horizon", "8", "--sample-steps", "4", "--reward", "success"]) == 0
    assert robot_stack(["generate", "--generator", str(generator), "--policy", str(run), "--episodes", "2",
                        "--out", str(synthetic)]) == 0
    assert robot_stack(["validate", "--data", data, "--data", str(synthetic), "--task", "cheetah-run",
                        "--policy", str(run), "--json"]) == 0
    capsys.readouterr()
    # a generator that learned other rewards than the run's (here: cheetah-run's own) is refused
    assert robot_stack(run_args(data, tmp_path / "mixed", 10, "--synthetic", "pgd", "--generator",
                                str(generator))) == 2
    assert "learned the rewards of 'success'" in one_error_line(capsys)

    # a generator saved before actions were normalised (no bounds recorded) is refused in one line
    meta = json.loads((generator / "config.json").read_text())
    del meta["action_space"]
    (generator / "config.json").write_text(json.dumps(meta))
    assert robot_stack(["generate", "--generator", str(generator), "--episodes", "1",
                        "--out", str(tmp_path / "old.zarr")]) == 2
    assert "fit this generator again" in one_error_line(capsys)


def test_success_reward_labels_the_final_step_of_successful_episodes(rewardless_dataset):
    from robot_stack.learn.replay import TransitionBuffer

    store = EpisodeStore.open(str(rewardless_dataset))
    buffer = TransitionBuffer.from_store(store, "success")
    batch = buffer.all()
    success = store.episode_meta["success"] == 1
    # one rewarded, terminal transition per successful episode: its kept final step
    assert batch.rewards.sum().item() == success.sum() == batch.terminals.sum().item()
    assert torch.equal(batch.rewards, batch.terminals)
    np.testing.assert_array_equal(buffer.episode_returns, success.astype(float))


def test_rewardless_dataset_without_labels_or_function_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "arm.zarr"
    store = EpisodeStore.create(str(path), standard_keys(obs_dim=3, act_dim=2, reward=False), task="real-arm",
                                robot={"name": "arm", "action_low": [0.0, -2.9], "action_high": [0.04, 2.9]})
    store.append_episode({"observation": np.zeros((20, 3), np.float32), "action": np.zeros((20, 2), np.float32),
                          "terminal": np.zeros(20, bool), "timestamp": np.arange(20) * 0.1}, source="teleop")
    store.close()
    assert robot_stack(run_args(path, tmp_path / "run", 10)) == 2
    assert "--reward success" in one_error_line(capsys)
    assert robot_stack(run_args(path, tmp_path / "run", 10, "--reward", "success")) == 2
    assert "labelled successful" in one_error_line(capsys)
