"""The robot-stack command as a user runs it: a separate process, its output and exit codes."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from robot_stack.data import EpisodeStore

CLI = [sys.executable, "-m", "robot_stack.cli"]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"robot-stack {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("cli") / "cheetah.zarr")
    proc = run("sim", "collect", "--task", "cheetah-run", "--policy", "scripted", "--episodes", "2",
               "--max-steps", "100", "--out", path, "--seed", "3", "--json")
    summary = json.loads(proc.stdout)
    assert summary["episodes"] == 2 and summary["steps"] == 200
    return path


@pytest.mark.parametrize("verb", [[], ["sim"], ["sim", "collect"], ["sim", "serve"], ["data"],
                                  ["data", "info"], ["data", "check"], ["teleop"], ["record"],
                                  ["train"], ["train-generator"], ["generate"], ["validate"],
                                  ["export"], ["eval"], ["deploy"]])
def test_every_verb_has_help(verb):
    proc = run(*verb, "--help")
    assert "usage" in proc.stdout.lower()


def test_data_info_json_describes_the_dataset(dataset):
    info = json.loads(run("data", "info", dataset, "--json").stdout)
    assert info["episodes"] == 2 and info["steps"] == 200
    assert info["task"] == "cheetah-run" and info["sources"] == {"scripted": 2}
    assert info["keys"]["observation"]["shape"] == [17] and info["keys"]["action"]["dtype"] == "float32"
    assert info["size_bytes"] > 0
    text = run("data", "info", dataset).stdout
    assert "cheetah-run" in text and "observation" in text


def test_data_check_reports_and_repairs_an_uncommitted_tail(dataset, tmp_path):
    import shutil

    path = str(tmp_path / "crashed.zarr")
    shutil.copytree(dataset, path)
    # A writer that flushes part of an episode and dies before committing it.
    crash = textwrap.dedent(f"""
        import os, signal, numpy as np
        from robot_stack.data import EpisodeStore
        store = EpisodeStore.open({path!r}, mode="a")
        writer = store.begin_episode(source="teleop")
        writer.add_steps({{"observation": np.ones((30, 17), np.float32), "action": np.zeros((30, 6), np.float32),
                          "reward": np.zeros(30, np.float32), "terminal": np.zeros(30, bool),
                          "timestamp": np.arange(30) * 0.01}})
        writer.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert subprocess.run([sys.executable, "-c", crash]).returncode == -9
    assert EpisodeStore.open(path).uncommitted_steps == 30

    broken = run("data", "check", path, check=False)
    assert broken.returncode != 0 and "uncommitted" in broken.stdout + broken.stderr
    assert run("data", "check", path, "--repair").returncode == 0
    assert run("data", "check", path).returncode == 0
    store = EpisodeStore.open(path)
    assert store.n_episodes == 2 and store.uncommitted_steps == 0
    original = EpisodeStore.open(dataset)
    for i in range(2):
        np.testing.assert_array_equal(store.episode(i)["observation"], original.episode(i)["observation"])


@pytest.mark.parametrize("args, words", [
    (["data", "info", "/nonexistent/x.zarr"], "x.zarr"),
    (["sim", "collect", "--task", "moon-walk", "--episodes", "1", "--out", "{tmp}/m.zarr"], "moon-walk"),
    (["validate", "--data", "{dataset}", "--task", "hopper-hop"], "hopper-hop"),
])
def test_errors_are_one_clear_line(dataset, tmp_path, args, words):
    args = [a.replace("{tmp}", str(tmp_path)).replace("{dataset}", dataset) for a in args]
    proc = run(*args, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("robot-stack: error:") and words in lines[0]


def test_validate_separates_true_from_corrupted_dynamics(dataset, tmp_path):
    corrupted = str(tmp_path / "corrupted.zarr")
    real = EpisodeStore.open(dataset)
    store = EpisodeStore.create(corrupted, real.keys, task=real.task, robot=real.robot,
                                generator={"kind": "noise", "settings": {"std": 0.05}})
    rng = np.random.default_rng(0)
    for i in range(real.n_episodes):
        episode = real.episode(i)
        episode["observation"] = episode["observation"] + rng.normal(0, 0.05, episode["observation"].shape)
        store.append_episode(episode, source="synthetic")
    plot = tmp_path / "horizon.png"
    result = json.loads(run("validate", "--data", dataset, "--data", corrupted, "--task", "cheetah-run",
                            "--json", "--plot", str(plot)).stdout)
    clean, noisy = result["datasets"]
    assert clean["dynamics_mse"] < 1e-8 < noisy["dynamics_mse"]
    assert len(clean["by_horizon"]) == 99 and noisy["generator"] == "noise"
    assert plot.stat().st_size > 0


def test_export_and_eval_verbs(dataset, tmp_path):
    run_dir, policy = tmp_path / "run", tmp_path / "policy.onnx"
    run("train", "--dataset", dataset, "--out", str(run_dir), "--steps", "50", "--eval-every", "1000",
        "--eval-episodes", "1", "--quiet")
    assert "parity" in run("export", str(run_dir), "--out", str(policy)).stdout
    result = json.loads(run("eval", "--policy", str(policy), "--task", "cheetah-run", "--episodes", "1",
                            "--json").stdout)
    assert result["episodes"] == 1 and np.isfinite(result["mean_return"])
    assert result["normalized_return"] == pytest.approx(
        100 * (result["mean_return"] - 3.47) / (918.2 - 3.47))
    wrong = run("eval", "--policy", str(policy), "--task", "hopper-hop", "--json", check=False)
    errors = [line for line in wrong.stderr.splitlines() if line.startswith("robot-stack: error:")]
    assert wrong.returncode == 2 and len(errors) == 1 and "Traceback" not in wrong.stderr
    assert "observation size: model 17, robot 13" in errors[0]
