"""The trainer end to end through the CLI: run folders, exact resume after a kill, clear errors."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robot_stack.cli import main as robot_stack
from robot_stack.data import EpisodeStore, standard_keys

CLI = [sys.executable, "-m", "robot_stack.cli"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    from sim.collect import collect_dataset

    path = tmp_path_factory.mktemp("data") / "cheetah.zarr"
    collect_dataset("cheetah-run", "scripted", 3, str(path), seed=0, max_steps=200, progress=False)
    return str(path)


def agent_tensors(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    flat = {}
    for name in ("actor", "critic", "actor_target", "critic_target"):
        flat.update({f"{name}.{k}": v for k, v in state["agent"][name].items()})
    flat["critic_optimizer.exp_avg"] = torch.cat(
        [s["exp_avg"].flatten() for s in state["agent"]["critic_optimizer"]["state"].values()])
    return flat


def train_args(dataset: str, out: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "--dataset", dataset, "--out", str(out), "--steps", str(steps),
            "--log-every", "50", "--checkpoint-every", "100", "--eval-every", "100000",
            "--eval-episodes", "1", "--quiet", *extra]


def test_resume_after_kill_continues_exactly(dataset, tmp_path):
    steps = 500
    assert robot_stack(train_args(dataset, tmp_path / "straight", steps)) == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen(CLI + train_args(dataset, killed, steps), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved_step = torch.load(killed / "checkpoint.pt", weights_only=False)["step"]
    assert proc.returncode == -signal.SIGKILL and saved_step < steps, "the kill came too late"

    assert robot_stack(["train", "--resume", str(killed), "--quiet"]) == 0
    straight, resumed = agent_tensors(tmp_path / "straight"), agent_tensors(killed)
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    with open(killed / "metrics.csv") as f:
        logged = [float(row["step"]) for row in csv.DictReader(f)]
    assert logged == sorted(set(logged)) and logged[-1] == steps  # no row twice after the resume
    assert (killed / "learning_curves.png").stat().st_size > 0


def test_pgd_run_resumes_exactly_with_its_synthetic_buffer(dataset, tmp_path):
    pgd = ["--synthetic", "pgd", "--generator-steps", "30", "--synthetic-size", "8", "--horizon", "8",
           "--sample-steps", "4", "--regen-every", "100", "--guidance", "0.5"]
    assert robot_stack(train_args(dataset, tmp_path / "straight", 300, *pgd)) == 0
    assert robot_stack(train_args(dataset, tmp_path / "split", 200, *pgd)) == 0
    assert robot_stack(["train", "--resume", str(tmp_path / "split"), "--steps", "300", "--quiet"]) == 0
    straight, split = agent_tensors(tmp_path / "straight"), agent_tensors(tmp_path / "split")
    for name in straight:
        assert torch.equal(straight[name], split[name]), name
    assert (tmp_path / "split" / "generator" / "config.json").is_file()


def test_compiled_iql_run_evaluates_in_mujoco(dataset, tmp_path, capsys):
    out = tmp_path / "iql"
    assert robot_stack(train_args(dataset, out, 100, "--algo", "iql", "--eval-every", "100",
                                  "--compile")) == 0
    assert json.loads((out / "config.json").read_text())["compile"] is True
    result = json.loads((out / "result.json").read_text())
    assert result["eval"]["task"] == "cheetah-run" and result["eval"]["episodes"] == 1
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert "normalized_return" in rows[-1] and "value_loss" in rows[-1]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robot-stack: error:"), err
    return err[0]


def test_dataset_without_rewards_names_the_fix(tmp_path, capsys):
    path = tmp_path / "teleop.zarr"
    keys = standard_keys(obs_dim=3, act_dim=2, reward=False)
    robot = {"name": "arm", "joint_names": ["j0", "j1"], "control_rate_hz": 10.0,
             "action_low": [-1.0, -1.0], "action_high": [1.0, 1.0]}
    store = EpisodeStore.create(str(path), keys, task="real-arm", robot=robot)
    store.append_episode({"observation": torch.rand(20, 3).numpy(), "action": torch.rand(20, 2).numpy() - 0.5,
                          "terminal": [False] * 20, "timestamp": [0.1 * i for i in range(20)]},
                         source="teleop")
    assert robot_stack(train_args(str(path), tmp_path / "run", 10)) == 2
    assert "--reward module:function" in _error_line(capsys)

    reward_module = tmp_path / "arm_reward.py"
    reward_module.write_text("def reach(obs, act, next_obs):\n    return -abs(next_obs).sum(1), None\n")
    sys.path.insert(0, str(tmp_path))
    try:
        code = robot_stack(train_args(str(path), tmp_path / "run", 10, "--reward", "arm_reward:reach"))
    finally:
        sys.path.remove(str(tmp_path))
    assert code == 0
    assert json.loads((tmp_path / "run" / "result.json").read_text())["steps"] == 10


@pytest.mark.parametrize("argv, message", [
    (["--eval-task", "moon-walk"], "not a sim task"),
    # the walker observes 17 values and takes 6 actions in [-1, 1] too: another body all the same
    (["--eval-task", "walker-walk"], "--eval-task walker-walk observes ['qpos/rootz', 'qpos/rooty', 'qpos/right_hip'"),
    (["--synthetic", "pgd", "--generator", "{generator}"], "generator"),
    (["--algo", "sarsa"], None),
])
def test_bad_inputs_give_one_line_errors(dataset, tmp_path, capsys, argv, message):
    generator = tmp_path / "gen"
    if "{generator}" in argv:
        hopper = tmp_path / "hopper.zarr"
        from sim.collect import collect_dataset

        collect_dataset("hopper-hop", "random", 1, str(hopper), max_steps=40, progress=False)
        assert robot_stack(["train-generator", "--kind", "diffusion", "--dataset", str(hopper),
                            "--out", str(generator), "--steps", "2", "--horizon", "8"]) == 0
        capsys.readouterr()
        argv = [a.replace("{generator}", str(generator)) for a in argv]
    if message is None:  # argparse rejects it before the trainer starts
        with pytest.raises(SystemExit):
            robot_stack(train_args(dataset, tmp_path / "run", 10, *argv))
        return
    assert robot_stack(train_args(dataset, tmp_path / "run", 10, *argv)) == 2
    assert message in _error_line(capsys)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_train_refuses_to_overwrite_a_run(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert robot_stack(train_args(dataset, out, 20)) == 0
    capsys.readouterr()
    assert robot_stack(train_args(dataset, out, 20)) == 2
    assert "--resume" in _error_line(capsys)
