"""ONNX export of a trained run: parity with the torch policy, the metadata a runtime checks,
action scaling to the robot's bounds, no file left behind by a failed export, and a model that
says truthfully what it was trained on (export, resume and eval refuse other data or tasks)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from deployutil import TASK, train_small_run
from robot_stack.data import EpisodeStore
from robot_stack.deploy.export import (INPUT_NAME, OUTPUT_NAME, PARITY_ATOL, ParityError,
                                       export_policy)
from robot_stack.errors import ConfigError
from robot_stack.deploy.evaluate import evaluate_onnx
from robot_stack.learn.trainer import load_policy, load_run_config, train
from robot_stack.learn.trajectories import dataset_fingerprint


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_small_run(tmp_path_factory.mktemp("deploy"))


def onnx_actions(path, observations: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: observations.astype(np.float32)})[0]


def test_export_matches_torch_and_describes_the_robot(run, tmp_path):
    out = tmp_path / "policy.onnx"
    result = export_policy(run, out)
    assert result["parity_samples"] == 400 and result["parity_max_abs_diff"] <= PARITY_ATOL

    store = EpisodeStore.open(load_run_config(run).dataset, mode="r")
    observations = store.read("observation")[::7]
    with torch.no_grad():
        expected = load_policy(run).actor(torch.as_tensor(observations)).numpy()
    actual = onnx_actions(out, observations)
    assert actual.shape == (len(observations), 6)
    np.testing.assert_allclose(actual, expected, atol=PARITY_ATOL, rtol=0)

    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == [INPUT_NAME]
    assert [o.name for o in model.graph.output] == [OUTPUT_NAME]
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    robot = store.robot
    assert meta["task"] == TASK and meta["obs_dim"] == 17 and meta["act_dim"] == 6
    assert meta["observation_layout"] == robot["observation_layout"]
    assert meta["joint_names"] == robot["joint_names"]
    assert meta["action_low"] == robot["action_low"] and meta["action_high"] == robot["action_high"]
    assert meta["control_rate_hz"] == robot["control_rate_hz"] == 100.0
    assert meta["dataset_fingerprint"] == dataset_fingerprint(store)
    assert meta["training_config"]["dataset"] == load_run_config(run).dataset
    assert meta["training_config"]["algo"] == "td3bc"
    assert meta["training_run"] == str(run.resolve())
    assert meta["command_interface"] == robot["command_interface"] == "effort"


def test_failed_parity_check_leaves_no_file(run, tmp_path):
    # float32 ONNX kernels differ from torch's in the last bits; a limit below that must fail.
    out = tmp_path / "policy.onnx"
    with pytest.raises(ParityError, match="parity check") as err:
        export_policy(run, out, atol=1e-12)
    assert "nothing was written" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_export_of_a_folder_without_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not a training run"):
        export_policy(tmp_path, tmp_path / "policy.onnx")


@pytest.fixture(scope="module")
def walker_data(tmp_path_factory) -> str:
    from sim.collect import collect_dataset

    path = tmp_path_factory.mktemp("walker") / "walker.zarr"
    collect_dataset("walker-walk", "scripted", 1, str(path), seed=0, max_steps=100, progress=False)
    return str(path)


def test_export_refuses_data_the_run_was_not_trained_on(run, walker_data, tmp_path):
    # Walker data has the cheetah's sizes (17, 6): only the fingerprint tells them apart.
    out = tmp_path / "policy.onnx"
    with pytest.raises(ConfigError, match="is not the data the run was trained on") as err:
        export_policy(run, out, dataset=walker_data)
    assert "task walker-walk" in str(err.value) and "task cheetah-run" in str(err.value)
    assert not out.exists()
    with pytest.raises(ConfigError, match="parity samples must be a whole number >= 1, got 0"):
        export_policy(run, out, samples=0)


def test_resume_refuses_other_data(run, walker_data, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    cfg = load_run_config(copy)
    cfg.out, cfg.dataset, cfg.steps = str(copy), walker_data, cfg.steps + 10
    with pytest.raises(ConfigError, match="is not the data the run was trained on"):
        train(cfg, resume=True, progress=False, log=lambda line: None)


def test_export_and_resume_refuse_the_runs_data_relabelled_for_another_robot(run, tmp_path):
    # The same steps (so the same fingerprint) under a robot description with other action
    # bounds: the run's [-1, 1] actions would be mapped onto bounds it never learned.
    import shutil

    from robot_stack.data import standard_keys

    source = EpisodeStore.open(load_run_config(run).dataset)
    relabelled = tmp_path / "relabelled.zarr"
    robot = dict(source.robot, action_low=[-2.0] * 6, action_high=[2.0] * 6)
    store = EpisodeStore.create(str(relabelled), standard_keys(obs_dim=17, act_dim=6), task=source.task,
                                robot=robot)
    for i in range(source.n_episodes):
        store.append_episode(source.episode(i), source="scripted")
    store.close()
    assert dataset_fingerprint(EpisodeStore.open(str(relabelled))) == dataset_fingerprint(source)

    out = tmp_path / "policy.onnx"
    with pytest.raises(ConfigError, match="under another description .*robot action_high, action_low"):
        export_policy(run, out, dataset=str(relabelled))
    assert not out.exists()
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    cfg = load_run_config(copy)
    cfg.out, cfg.dataset, cfg.steps = str(copy), str(relabelled), cfg.steps + 10
    with pytest.raises(ConfigError, match="under another description"):
        train(cfg, resume=True, progress=False, log=lambda line: None)


def test_eval_refuses_a_model_made_for_another_task(run, tmp_path):
    # A model whose layout fits the walker but whose metadata says it is a cheetah policy.
    from sim import make_task

    policy = tmp_path / "policy.onnx"
    export_policy(run, policy, samples=10)
    model = onnx.load(str(policy))
    walker = make_task("walker-walk").robot_description()
    for prop in model.metadata_props:
        if prop.key in ("observation_layout", "joint_names"):
            prop.value = json.dumps(walker[prop.key])
    policy.write_bytes(model.SerializeToString())
    with pytest.raises(ConfigError, match="trained for task cheetah-run .*, not walker-walk"):
        evaluate_onnx(str(policy), "walker-walk", episodes=1, max_steps=5)
