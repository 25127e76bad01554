"""Export a training run's policy to one self-describing ONNX file.

The graph maps the robot's raw observation to the robot's action: observation normalisation
(inside the actor) and the one mapping of the actor's normalised [-1, 1] output to the dataset
robot's units (ActionSpace, action_low/high) are both part of it, so a runtime needs nothing but
the file. The file's
metadata_props carry what a runtime must check before driving a robot (JSON-encoded values):

    observation_layout, joint_names, action_low, action_high, control_rate_hz, task,
    robot_name, command_interface, obs_dim, act_dim, training_run, training_config, dataset,
    dataset_fingerprint, robot_stack_format

The metadata describes the dataset the run was trained on: a `dataset` given in place of the
run's own (a moved copy) must have the run's fingerprint.

An export whose ONNX outputs differ from the torch policy by more than PARITY_ATOL on dataset
observations fails and leaves no file.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robot_stack.action_space import ActionSpace
from robot_stack.deploy.runtime import FORMAT_VERSION, INPUT_NAME, OUTPUT_NAME
from robot_stack.errors import ConfigError

OPSET = 17
PARITY_SAMPLES = 1000
PARITY_ATOL = 1e-5


class DeployedPolicy(nn.Module):
    """actor (un-normalised obs -> normalised [-1, 1]) followed by ActionSpace.to_robot's affine
    map onto the robot's [low, high]."""

    def __init__(self, actor: nn.Module, action_space: ActionSpace):
        super().__init__()
        self.actor = actor
        self.register_buffer("half_range", torch.as_tensor(action_space.half_range, dtype=torch.float32))
        self.register_buffer("center", torch.as_tensor(action_space.center, dtype=torch.float32))

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        return self.center + self.half_range * self.actor(observation)


class ParityError(ConfigError):
    """The exported graph does not compute what the torch policy computes."""


def export_policy(run_dir: str | Path, out_path: str | Path, *, dataset: str | None = None,
                  samples: int = PARITY_SAMPLES, atol: float = PARITY_ATOL) -> dict:
    """Writes the run's policy to `out_path` (ONNX) and returns its metadata and parity figures.

    `dataset` overrides the run's dataset path (a moved dataset); it must hold the same data.
    """
    import onnx

    from robot_stack.data import EpisodeStore
    from robot_stack.learn.trainer import check_trained_on, load_policy, load_run_config
    from robot_stack.learn.trajectories import dataset_fingerprint

    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"parity samples must be a whole number >= 1, got {samples!r}")
    run_dir, out_path = Path(run_dir), Path(out_path)
    cfg = load_run_config(run_dir)
    store = EpisodeStore.open(dataset or cfg.dataset, mode="r")
    agent = load_policy(run_dir)
    check_trained_on(run_dir, store, dataset or cfg.dataset)
    robot = store.robot
    if "observation_layout" not in robot:
        raise ConfigError(f"dataset {dataset or cfg.dataset}: robot description lacks its observation_layout")
    obs_dim, act_dim = store.keys["observation"].shape[0], store.keys["action"].shape[0]
    action_space = ActionSpace.of_store(store)
    policy = DeployedPolicy(agent.actor.cpu().eval(), action_space)

    metadata = {
        "robot_stack_format": FORMAT_VERSION,
        "task": store.task,
        "robot_name": robot.get("name", store.task),
        "command_interface": robot.get("command_interface"),
        "obs_dim": obs_dim,
        "act_dim": act_dim,
        "observation_layout": robot["observation_layout"],
        "joint_names": list(robot.get("joint_names", [])),
        **action_space.to_dict(),
        "control_rate_hz": float(robot.get("control_rate_hz", 0.0)),
        "training_run": str(run_dir.resolve()),
        "training_config": dataclasses.asdict(cfg),
        "dataset": str(dataset or cfg.dataset),
        "dataset_fingerprint": dataset_fingerprint(store),
    }
    observations = _parity_observations(store, samples)
    model = _to_onnx(policy, obs_dim)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    onnx.checker.check_model(model, full_check=True)
    serialized = model.SerializeToString()

    diff = _parity(policy, serialized, observations)
    if not diff <= atol:  # also catches NaN
        raise ParityError(f"export of {run_dir} failed the parity check: ONNX and torch actions "
                          f"differ by up to {diff:.3g} on {len(observations)} dataset "
                          f"observations (limit {atol:g}); nothing was written")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_bytes(serialized)
    os.replace(tmp, out_path)  # readers never see a half-written model
    return {"path": str(out_path), "parity_max_abs_diff": diff,
            "parity_samples": len(observations), "metadata": metadata}


def _parity_observations(store, samples: int) -> np.ndarray:
    """Up to `samples` dataset observations spread evenly over the whole dataset."""
    n = store.n_steps
    if n == 0:
        raise ConfigError("the dataset has no committed steps to check the export against")
    index = np.unique(np.linspace(0, n - 1, min(samples, n)).astype(np.int64))
    return np.asarray(store.read("observation")[index], dtype=np.float32)


def _to_onnx(policy: nn.Module, obs_dim: int):
    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in torch >= 2.9, but the torch.export-based one
        # needs onnxscript, which this project does not install; the MLP exports the same.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(policy, (torch.zeros(1, obs_dim),), buffer, dynamo=False,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          opset_version=OPSET)
    return onnx.load_from_string(buffer.getvalue())


@torch.no_grad()
def _parity(policy: nn.Module, serialized: bytes, observations: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(serialized, providers=["CPUExecutionProvider"])
    expected = policy(torch.as_tensor(observations)).numpy()
    actual = session.run([OUTPUT_NAME], {INPUT_NAME: observations})[0]
    if actual.shape != expected.shape:
        return float("inf")
    return float(np.max(np.abs(actual.astype(np.float64) - expected)))
