"""The deployment runtime without ROS: the ONNX session, metadata checks against robot specs,
and the safety logic between policy and actuators (driven with an explicit clock)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml

from deployutil import exported_policy
from robot_stack.deploy.runtime import (BAD_OBSERVATION, BAD_OUTPUT, CPU, DISABLED, ESTOP,
                                        NO_OBSERVATION, STALE, LatencyStats, OnnxPolicy,
                                        PolicyRunner, SafetyConfig, TickSchedule,
                                        all_finite, check_compatible, choose_providers)
from robot_stack.errors import ConfigError
from robot_stack.learn.trainer import load_policy
from robot_stack.spec import load_spec, spec_from_dict

CONFIG = Path(__file__).resolve().parent.parent / "config"
OBS = np.linspace(-0.5, 0.5, 17)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_policy(tmp_path_factory.mktemp("deploy"))


@pytest.fixture(scope="module")
def policy(exported):
    return OnnxPolicy(exported[1])


def cheetah_spec_dict() -> dict:
    return yaml.safe_load((CONFIG / "robot_cheetah_sim.yaml").read_text())


def test_onnx_policy_runs_the_exported_actor(exported, policy):
    run, _ = exported
    assert policy.provider == CPU  # no CUDA libraries on this machine: the fallback is used
    assert policy.metadata.obs_dim == 17 and policy.metadata.act_dim == 6
    batch = np.random.default_rng(0).normal(size=(32, 17))
    with torch.no_grad():
        expected = load_policy(run).actor(torch.as_tensor(batch, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(policy(batch), expected, atol=1e-5, rtol=0)
    # One at a time, as a node ticks: each call sees its own observation.
    np.testing.assert_allclose([policy(o) for o in batch], expected, atol=1e-5, rtol=0)


def test_provider_order_and_unknown_provider():
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU]
    assert choose_providers("auto", available) == ["CUDAExecutionProvider", CPU]
    assert choose_providers("tensorrt", available) == available
    assert choose_providers("tensorrt", [CPU]) == [CPU]
    with pytest.raises(ConfigError, match="provider must be one of"):
        choose_providers("gpu", available)


def test_a_provider_that_cannot_run_is_reported_as_a_fallback(exported):
    cpu = OnnxPolicy(exported[1], provider="cpu")
    assert (cpu.provider, cpu.fell_back) == (CPU, False)
    cuda = OnnxPolicy(exported[1], provider="cuda")
    if cuda.provider == "CUDAExecutionProvider":
        pytest.skip("CUDA runs on this machine: nothing falls back")
    # Missing from this onnxruntime build, or listed without the CUDA libraries or a device:
    # CPU, reported as a fallback either way.
    assert (cuda.provider, cuda.fell_back) == (CPU, True)


def test_model_matches_the_cheetah_spec_and_not_others(policy):
    check_compatible(policy.metadata, load_spec(CONFIG / "robot_cheetah_sim.yaml")
                     .robot_description(), "cheetah spec")
    with pytest.raises(ConfigError, match="observation size: model 17, robot") as err:
        check_compatible(policy.metadata, load_spec(CONFIG / "robot_hopper_sim.yaml")
                         .robot_description(), "hopper spec")
    assert "does not match hopper spec" in str(err.value) and "action size" in str(err.value)
    with pytest.raises(ConfigError, match="observation layout.*joint names"):  # also 17 and 6
        check_compatible(policy.metadata, load_spec(CONFIG / "robot_walker_sim.yaml")
                         .robot_description(), "walker spec")

    reordered = cheetah_spec_dict()
    joints = reordered["observation"][0]["joints"]
    joints[2], joints[3] = joints[3], joints[2]  # same size, different layout
    with pytest.raises(ConfigError, match="observation layout"):
        check_compatible(policy.metadata, spec_from_dict(reordered).robot_description(), "spec")

    bounds = cheetah_spec_dict()
    bounds["action"]["high"] = 2.0
    with pytest.raises(ConfigError, match="action bounds"):
        check_compatible(policy.metadata, spec_from_dict(bounds).robot_description(), "spec")

    renamed = cheetah_spec_dict()
    renamed["robot"]["joint_names"][-1] = "ffoot2"
    with pytest.raises(ConfigError, match="joint names"):
        check_compatible(policy.metadata, spec_from_dict(renamed).robot_description(), "spec")

    # Torques from a policy trained on the sim's motors must not drive position controllers.
    assert policy.metadata.command_interface == "effort"
    with pytest.raises(ConfigError, match="command interface: model effort, robot position"):
        check_compatible(policy.metadata, interface_spec("position").robot_description(), "spec")


def test_metadata_that_disagrees_with_the_graph_is_refused(exported, tmp_path):
    path = tmp_path / "policy.onnx"

    def widened(metadata: dict, key: str) -> dict:
        # metadata that agrees with itself, one wider than the graph, which maps 17 -> 6
        if key == "obs_dim":
            return {"obs_dim": 18, "observation_layout": [*metadata["observation_layout"],
                                                          {"name": "extra", "size": 1}]}
        return {"act_dim": 7, "action_low": [*metadata["action_low"], -1.0],
                "action_high": [*metadata["action_high"], 1.0]}

    for key, value in (("obs_dim", 18), ("act_dim", 7)):
        model = onnx.load(str(exported[1]))
        metadata = {p.key: json.loads(p.value) for p in model.metadata_props}
        for prop in model.metadata_props:
            prop.value = json.dumps(widened(metadata, key).get(prop.key, metadata[prop.key]))
        path.write_bytes(model.SerializeToString())
        with pytest.raises(ConfigError, match=f"metadata {key} {value} disagrees with the graph"):
            OnnxPolicy(path)


@pytest.mark.parametrize("key, value, message", [
    ("action_low", [-1.0] * 5, "action bounds must be finite and of one size"),
    ("action_high", [float("nan")] * 6, "action bounds must be finite and of one size"),
    ("action_low", [1.0] * 6, "every action bound needs low < high"),
    ("act_dim", 5, "act_dim 5 with 6 action bounds"),
    ("observation_layout", [{"name": "qpos", "size": 3}], "obs_dim 17 with an observation layout of 3"),
    ("obs_dim", "seventeen", "malformed metadata"),
    ("action_low", "low", "malformed metadata"),
    ("observation_layout", None, "malformed metadata"),
])
def test_metadata_that_disagrees_with_itself_is_refused(exported, tmp_path, key, value, message):
    path = tmp_path / "policy.onnx"
    model = onnx.load(str(exported[1]))
    next(p for p in model.metadata_props if p.key == key).value = json.dumps(value)
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ConfigError, match=message):
        OnnxPolicy(path)


def interface_spec(interface: str):
    """The cheetah spec with another command interface, action bounds [-2, 2]."""
    raw = cheetah_spec_dict()
    raw["action"].update(command_interface=interface, low=-2.0, high=2.0)
    return spec_from_dict(raw)


@pytest.mark.parametrize("interface", ["position", "velocity", "effort"])
def test_every_stop_gives_the_interfaces_safe_action_within_one_tick(interface):
    spec = interface_spec(interface)
    position_index = spec.commanded_positions() if interface == "position" else None
    drive = np.full(6, 0.9)  # the policy's command: a torque or velocity that keeps moving
    clock = Clock()
    runner = PolicyRunner(lambda obs: drive, spec.action.low, spec.action.high,
                          SafetyConfig(interface, stale_timeout_s=0.05), position_index,
                          clock=clock)
    rng = np.random.default_rng(0)

    def stop_for(measured: np.ndarray) -> np.ndarray:
        # qpos/bthigh .. qpos/ffoot are observation entries 2..7 of the cheetah spec
        return measured[2:8] if interface == "position" else np.zeros(6)

    def running() -> np.ndarray:
        measured = rng.uniform(-1, 1, 17)
        runner.observe(measured)
        assert np.array_equal(runner.step(), drive) and runner.last_reason is None
        return measured

    # Nothing measured yet: a position robot gets no command (zero is a position, not a stop).
    first = runner.step()
    assert first is None if interface == "position" else np.array_equal(first, np.zeros(6))

    measured = running()
    runner.estop()
    for _ in range(3):  # latched; the joints' positions at the stop are held, not later ones
        assert np.array_equal(runner.step(), stop_for(measured)) and runner.last_reason == ESTOP
        runner.observe(rng.uniform(-1, 1, 17))
    assert runner.reset_estop()

    measured = running()
    clock.now += 0.06
    assert np.array_equal(runner.step(), stop_for(measured)) and runner.last_reason == STALE

    measured = running()
    broken = measured.copy()
    broken[3] = np.nan  # qpos/bshin: a commanded joint's position
    runner.observe(broken)
    assert np.array_equal(runner.step(), stop_for(measured))
    assert runner.last_reason == BAD_OBSERVATION

    measured = running()
    runner.set_enabled(False)
    assert np.array_equal(runner.step(), stop_for(measured)) and runner.last_reason == DISABLED
    assert runner.status()["command_interface"] == interface


def test_a_position_spec_must_observe_the_commanded_joints_positions():
    raw = cheetah_spec_dict()
    raw["action"]["command_interface"] = "position"
    assert spec_from_dict(raw).commanded_positions().tolist() == [2, 3, 4, 5, 6, 7]
    raw["observation"][0]["joints"].remove("ffoot")  # qvel still has it: not a position
    with pytest.raises(ConfigError, match=r"no JointState position part of the observation "
                                          r"has \['ffoot'\]"):
        spec_from_dict(raw, "pos.yaml").commanded_positions()
    del raw["action"]["names"], raw["action"]["applied"], raw["sample_on"]
    with pytest.raises(ConfigError, match="pos.yaml: .*action.names is not set"):
        spec_from_dict(raw, "pos.yaml").commanded_positions()


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update(rate_hz=-5), "rate_hz must be a positive number"),
    (lambda s: s.update(rate_hz=float("inf")), r"rate_hz must be a positive number \(finite"),
    (lambda s: s.update(rate_hz=float("nan")), "rate_hz must be a positive number"),
    (lambda s: s.update(stale_timeout_s=float("inf")), "stale_timeout_s must be a positive"),
    (lambda s: s["action"].update(size=6.7), "size must be a whole number >= 1, got 6.7"),
    (lambda s: s["action"].update(command_interface="torque"),
     "command_interface must be one of"),
])
def test_bad_rates_sizes_and_interfaces_in_a_spec_are_refused(edit, message):
    raw = cheetah_spec_dict()
    edit(raw)
    with pytest.raises(ConfigError, match=message):
        spec_from_dict(raw)


def test_a_file_that_is_not_a_policy_is_refused(tmp_path):
    bad = tmp_path / "policy.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="cannot load policy"):
        OnnxPolicy(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        OnnxPolicy(tmp_path / "missing.onnx")


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_runner(policy, **safety) -> tuple[PolicyRunner, Clock]:
    clock = Clock()
    low, high = policy.metadata.action_low, policy.metadata.action_high
    return PolicyRunner(policy, low, high, SafetyConfig("effort", **safety), clock=clock), clock


def test_fresh_observations_drive_the_policy_and_stale_ones_stop(policy):
    runner, clock = make_runner(policy, stale_timeout_s=0.05)
    assert np.array_equal(runner.step(), np.zeros(6))  # nothing observed yet
    runner.observe(OBS)
    command = runner.step()
    np.testing.assert_allclose(command, policy(OBS))
    assert np.abs(command).max() > 0
    clock.now += 0.04
    np.testing.assert_allclose(runner.step(), command)  # still fresh: same observation
    clock.now += 0.02  # 0.06 s old: stale on this very tick
    runner.observe(OBS)
    runner.observation_time -= 0.06
    assert np.array_equal(runner.step(), np.zeros(6))
    assert runner.last_reason == STALE
    assert runner.safe_actions == {NO_OBSERVATION: 1, STALE: 1}
    assert runner.policy_actions == 2 and runner.status()["state"] == "safe:" + STALE


def test_non_finite_observation_or_output_gives_the_zero_action(policy):
    runner, _ = make_runner(policy)
    runner.observe(OBS)
    assert np.abs(runner.step()).max() > 0
    runner.observe(np.full(17, np.nan))
    assert np.array_equal(runner.step(), np.zeros(6))
    runner.observe(None, problem="joint_states: non-finite qpos value")
    assert np.array_equal(runner.step(), np.zeros(6))
    assert runner.safe_actions[BAD_OBSERVATION] == 2
    assert runner.status()["observation_problem"].endswith("non-finite qpos value")

    broken = PolicyRunner(lambda obs: np.array([0.1, np.inf, 0, 0, 0, 0]), -np.ones(6),
                          np.ones(6), SafetyConfig("effort"))
    broken.observe(OBS)
    assert np.array_equal(broken.step(), np.zeros(6)) and broken.safe_actions == {BAD_OUTPUT: 1}


def test_estop_latches_until_reset_and_disable_stops(policy):
    runner, _ = make_runner(policy)
    runner.observe(OBS)
    runner.estop()
    for _ in range(3):
        runner.observe(OBS)
        assert np.array_equal(runner.step(), np.zeros(6))
    assert runner.safe_actions[ESTOP] == 3 and runner.status()["estop"]
    assert runner.set_enabled(False) == "disabled"  # disabling does not clear the latch
    assert runner.step().tolist() == [0.0] * 6 and runner.last_reason == ESTOP
    assert runner.reset_estop() and not runner.reset_estop()
    runner.step()
    assert runner.last_reason == DISABLED
    runner.estop()
    assert runner.set_enabled(True) == "e-stop cleared, enabled"
    np.testing.assert_allclose(runner.step(), policy(OBS))


def test_commands_are_clipped_and_rate_limited():
    swing = iter([np.full(6, 5.0), np.full(6, -5.0), np.full(6, 0.05)])
    runner = PolicyRunner(lambda obs: next(swing), -np.ones(6), np.ones(6),
                          SafetyConfig("velocity", max_delta=0.25))
    runner.observe(OBS)
    assert np.allclose(runner.step(), 0.25)   # 5 -> clipped to 1 -> limited to 0 + 0.25
    assert np.allclose(runner.step(), 0.0)    # -5 -> -1 -> limited to 0.25 - 0.25
    assert np.allclose(runner.step(), 0.05)
    assert runner.clipped == 2 and runner.rate_limited == 2


def test_bad_safety_settings_are_refused():
    for interface in ("torque", None):  # None: a spec that does not declare it
        with pytest.raises(ConfigError, match="command_interface must be one of"):
            PolicyRunner(np.tanh, -np.ones(2), np.ones(2), SafetyConfig(interface))
    with pytest.raises(ConfigError, match="max_delta"):
        SafetyConfig("effort", max_delta=-1.0).validate()
    with pytest.raises(ConfigError, match="stale_timeout_s"):
        SafetyConfig("effort", stale_timeout_s=np.inf).validate()
    with pytest.raises(ConfigError, match="observation index of each commanded joint"):
        PolicyRunner(np.tanh, -np.ones(2), np.ones(2), SafetyConfig("position"))


def test_latency_stats_and_missed_ticks():
    stats = LatencyStats(window=100)
    assert stats.summary() == {"count": 0}
    for ms in range(1, 201):  # the window keeps the last 100: 101..200 ms
        stats.add(ms / 1e3)
    summary = stats.summary()
    assert summary["count"] == 200 and summary["max_ms"] == 200.0
    assert summary["p50_ms"] == pytest.approx(150.5) and summary["p99_ms"] == pytest.approx(199.01)

    schedule = TickSchedule(period=0.001, start=0.0)  # deadlines at 1, 2, 3, ... ms
    assert schedule.wait_time(0.0004) == pytest.approx(0.0006) and not schedule.due(0.0009)
    for t in [0.0010, 0.0029, 0.0052, 0.0061]:  # 2.9 ms is 0.9 ms late but still its own tick;
        assert schedule.due(t)                 # by 5.2 ms the deadlines 3 and 4 ms have passed
        schedule.tick(t)
    assert schedule.missed == 2 and schedule.deadline == pytest.approx(0.007)
    assert schedule.lateness.summary()["max_ms"] == pytest.approx(0.9)
    assert schedule.wait_time(0.0080) == 0.0


def test_all_finite_is_elementwise_isfinite():
    for values in ([0.0, -1.5, 2.0], [1e200, -1e300], [np.nan], [1.0, np.inf], [-np.inf, 1.0],
                   [np.inf, -np.inf], [], [[1.0, 2.0], [3.0, np.nan]], [[1.0], [2.0]]):
        for dtype in (np.float64, np.float32):
            array = np.array(values, dtype)
            assert all_finite(array) == bool(np.isfinite(array).all()), (values, dtype)
    assert all_finite(np.array([1e20, 3e38], np.float32))  # squares overflow float32
