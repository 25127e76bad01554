"""Behaviour policies that produce non-trivial datasets without any learning.

- ``RandomPolicy``: actions uniform within the task's action bounds.
- ``ScriptedPolicy``: a per-task central pattern generator (CPG) with torso-pitch feedback and
  joint-space damping/stiffness,
      a_j = clip(b_j + A_j sin(2π f t + φ_j) + kp_j θ + kd_j θ' - g_j q_j - d_j q'_j
                 + noise·N(0, 1), -1, 1)
  where θ, θ' are the root pitch angle and rate (joint "rooty") and q_j, q'_j the angle and rate
  of the joint actuator j drives (g = d = 0 gives a pure open-loop CPG; g > 0 turns it into PD
  tracking of the target (b + A sin(...)) / g, which keeps a biped upright). The parameters
  were found once by a cross-entropy search (``python -m sim.tune_scripted``) and are shipped as constants
  below; the Gaussian noise widens the state coverage of the collected data. It computes in the
  suite task's [-1, 1] and commands in the task's units (see sim.tasks, rescaled tasks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.tasks import SimError, SimTask

PITCH_JOINT = "rooty"  # the hinge that tilts the torso in every planar suite body


@dataclass(frozen=True)
class CPGParams:
    frequency_hz: float
    amplitude: tuple[float, ...]
    phase: tuple[float, ...]
    bias: tuple[float, ...]
    pitch_gain: tuple[float, ...]
    pitch_rate_gain: tuple[float, ...]
    joint_gain: tuple[float, ...]
    joint_damping: tuple[float, ...]

    @classmethod
    def from_vector(cls, v: np.ndarray, act_dim: int) -> "CPGParams":
        n_fields = len(cls.__dataclass_fields__) - 1  # per-joint fields after frequency_hz
        if len(v) != 1 + n_fields * act_dim:
            raise SimError(f"CPG parameter vector needs {1 + n_fields * act_dim} entries, got {len(v)}")
        groups = np.split(np.asarray(v[1:], dtype=float), n_fields)
        return cls(float(v[0]), *(tuple(float(x) for x in g) for g in groups))


# Found by `python -m sim.tune_scripted TASK ...` (cross-entropy search, noise-free evaluation):
#   cheetah-run --iterations 25 --episodes 4 --target 450     (open-loop CPG: searched before
#   hopper-hop  --iterations 25 --target 500                   joint_gain/damping existed)
#   walker-walk --population 20 --iterations 15 --episodes 3 --horizon 400 --target 450
# Later searches for hopper-hop (with joint feedback, 4 episodes) and walker-walk (with --noise 0.3)
# generalised no better to unseen seeds. Mean 1000-step returns over seeds 0-9 are in
# SCRIPTED_RETURNS in sim/reference.py.
SCRIPTED_PARAMS: dict[str, CPGParams] = {
    "cheetah-run": CPGParams(
        frequency_hz=2.2418,
        amplitude=(0.9532, 0.8355, 1.0, 0.6081, 0.439, 0.543),
        phase=(1.1, 1.4898, 0.6101, 1.7726, 1.5453, -3.1273),
        bias=(0.4475, -0.4879, -0.3829, -0.6122, 0.5023, -0.1554),
        pitch_gain=(-1.1059, -1.9024, 0.5261, 1.0752, 0.3166, 0.9299),
        pitch_rate_gain=(-0.1215, 0.185, -0.1482, -0.2411, 0.3, -0.0791),
        joint_gain=(0.0,) * 6, joint_damping=(0.0,) * 6),
    "walker-walk": CPGParams(
        frequency_hz=3.4517,
        amplitude=(0.8609, 0.4968, 0.704, 0.5589, 0.5418, 0.686),
        phase=(3.1416, 1.8495, -0.9223, 0.7482, 2.6528, -2.1851),
        bias=(0.9913, 0.7507, 0.917, -0.1593, 0.0654, 0.1727),
        pitch_gain=(-1.3626, -0.7273, 0.2767, -0.022, -0.932, -0.3662),
        pitch_rate_gain=(0.0305, -0.228, -0.0013, -0.1606, -0.0075, 0.2194),
        joint_gain=(2.2096, 2.9913, 2.1448, 1.9878, 4.0, 1.4601),
        joint_damping=(0.2057, 0.139, 0.1444, 0.1627, 0.1633, 0.1459)),
    "hopper-hop": CPGParams(
        frequency_hz=1.8193,
        amplitude=(0.6831, 0.4986, 0.6055, 0.1338),
        phase=(3.1416, -1.9241, -2.8127, -0.607),
        bias=(-0.8584, 0.1754, -0.647, -0.5338),
        pitch_gain=(-0.9698, 0.5854, -1.1195, -0.896),
        pitch_rate_gain=(0.0349, -0.0811, -0.0387, 0.0785),
        joint_gain=(0.0,) * 4, joint_damping=(0.0,) * 4),
}


class RandomPolicy:
    def __init__(self, task: SimTask, seed: int = 0):
        self._low, self._high = task.action_space.low, task.action_space.high
        self._rng = np.random.default_rng(seed)

    def reset(self) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self._rng.uniform(self._low, self._high)


class ScriptedPolicy:
    def __init__(self, task: SimTask, params: CPGParams, noise: float = 0.0, seed: int = 0):
        self._dt = task.control_dt
        self._action_space = task.action_space
        self._params = params
        self._amplitude = np.array(params.amplitude)
        self._phase = np.array(params.phase)
        self._bias = np.array(params.bias)
        self._pitch_gain = np.array(params.pitch_gain)
        self._pitch_rate_gain = np.array(params.pitch_rate_gain)
        self._joint_gain = np.array(params.joint_gain)
        self._joint_damping = np.array(params.joint_damping)
        driven = [task.obs_indices(task.joint_names[j]) for j in task.actuator_joint_ids]
        self._joint_obs, self._joint_rate_obs = (np.array(idx) for idx in zip(*driven))
        self._pitch_obs, self._pitch_rate_obs = task.obs_indices(PITCH_JOINT)
        self._noise = float(noise)
        self._rng = np.random.default_rng(seed)
        self._t = 0

    def reset(self) -> None:
        self._t = 0

    def act(self, obs: np.ndarray) -> np.ndarray:
        p = self._params
        phase = 2.0 * np.pi * p.frequency_hz * self._t * self._dt + self._phase
        action = (self._bias + self._amplitude * np.sin(phase)
                  + self._pitch_gain * obs[self._pitch_obs]
                  + self._pitch_rate_gain * obs[self._pitch_rate_obs]
                  - self._joint_gain * obs[self._joint_obs]
                  - self._joint_damping * obs[self._joint_rate_obs])
        if self._noise > 0:
            action = action + self._noise * self._rng.standard_normal(action.shape)
        self._t += 1
        return self._action_space.to_robot(np.clip(action, -1.0, 1.0))


def make_policy(name: str, task: SimTask, noise: float = 0.3, seed: int = 0):
    """``noise`` is the std of Gaussian action noise of the scripted policy (random ignores it)."""
    if name == "random":
        return RandomPolicy(task, seed=seed)
    if name == "scripted":
        if task.suite_name not in SCRIPTED_PARAMS:
            raise SimError(f"no scripted policy parameters for task {task.name!r}")
        if noise < 0:
            raise SimError(f"noise must be >= 0, got {noise}")
        return ScriptedPolicy(task, SCRIPTED_PARAMS[task.suite_name], noise=noise, seed=seed)
    raise SimError(f"unknown policy {name!r}; choose 'random' or 'scripted'")


def rollout_return(task: SimTask, policy, seed: int, max_steps: int | None = None) -> float:
    """Undiscounted return of one episode from reset(seed)."""
    obs, _ = task.reset(seed=seed)
    policy.reset()
    total = 0.0
    for _ in range(max_steps or task.max_steps):
        obs, reward, terminal, truncated, _ = task.step(policy.act(obs))
        total += reward
        if terminal or truncated:
            break
    return total
