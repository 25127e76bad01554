"""dm_control suite locomotion tasks behind one small gymnasium-like interface.

Observation = full physics state without the root x position: qpos minus the root-x joint,
then qvel, float64, unclipped. Root x does not enter dynamics or rewards of these tasks (the
floor is an infinite plane), so this state is Markov and ``step_from`` is the ground truth that
learned or synthetic transitions are validated against.

Determinism: MuJoCo's constraint solver warm-starts from the previous step's accelerations,
which makes a step depend on history and not only on (qpos, qvel, action). We disable the
warmstart (mjDSBL_WARMSTART) on the model, so one control step is a pure function of the state
and the action; episodes therefore differ slightly from stock dm_control episodes.
"""

from __future__ import annotations

import ctypes.util
import math
import os
import weakref

# Headless rendering: MuJoCo picks its GL backend when first imported. EGL works on a GPU and
# with Mesa's software device; an explicit MUJOCO_GL, a display or a missing libEGL wins.
if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY") and ctypes.util.find_library("EGL"):
    os.environ["MUJOCO_GL"] = "egl"

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from absl import logging as absl_logging  # noqa: E402
from dm_control import suite  # noqa: E402
from dm_control.rl.control import PhysicsError  # noqa: E402

from robot_stack.action_space import ActionSpace  # noqa: E402
from robot_stack.errors import RobotStackError  # noqa: E402

# task name -> (dm_control domain, dm_control task)
_SUITE_TASKS = {
    "cheetah-run": ("cheetah", "run"),
    "walker-walk": ("walker", "walk"),
    "hopper-hop": ("hopper", "hop"),
}
# Suite tasks commanded in other units: the same body, dynamics and reward, but each actuator
# takes commands in its own, asymmetric range (as a real robot's gripper in m and joints in rad
# do), mapped affinely onto the suite's [-1, 1] inside the task.
# name -> (suite task, action_low, action_high)
_RESCALED_TASKS = {
    "cheetah-run-scaled": ("cheetah-run", (0.0, -2.9, -0.5, 0.0, -2.9, -0.5),
                           (0.04, 2.9, 2.0, 0.04, 2.9, 2.0)),
}
TASK_NAMES = tuple(_SUITE_TASKS) + tuple(_RESCALED_TASKS)
ROOT_X_JOINT = "rootx"  # the horizontal slide joint of every planar suite body
MAX_EPISODE_STEPS = 1000  # the suite's 1000-step time limit; these tasks never terminate early


class SimError(RobotStackError):
    """A task name, state or action given to the simulator is invalid."""


def suite_task(name: str) -> str:
    """The suite task a task runs (itself, or the one a rescaled task commands in other units)."""
    return _RESCALED_TASKS[name][0] if name in _RESCALED_TASKS else name


def make_task(name: str) -> "SimTask":
    return SimTask(name)


class SimTask:
    def __init__(self, name: str):
        if name not in TASK_NAMES:
            raise SimError(f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}")
        self.suite_name = suite_task(name)
        domain, task_name = _SUITE_TASKS[self.suite_name]
        # The suite's models use a compiler attribute MuJoCo 3.x deprecates; its warning, logged
        # through absl on every load, says nothing actionable to our users.
        verbosity = absl_logging.get_verbosity()
        absl_logging.set_verbosity(absl_logging.ERROR)
        try:
            env = suite.load(domain, task_name)
        finally:
            absl_logging.set_verbosity(verbosity)
        self.name = name
        self._physics = env.physics
        self._task = env.task
        model = self._physics.model
        model.opt.disableflags |= mujoco.mjtDisableBit.mjDSBL_WARMSTART
        self.control_dt = float(env.control_timestep())
        self._n_sub_steps = int(round(self.control_dt / model.opt.timestep))
        self.max_steps = MAX_EPISODE_STEPS

        self.joint_names = [model.joint(j).name for j in range(model.njnt)]
        if [model.jnt_qposadr[j] for j in range(model.njnt)] != list(range(model.nq)):
            raise SimError(f"{name}: expected one qpos entry per joint, in joint order")
        self.root_x_index = int(model.joint(ROOT_X_JOINT).qposadr[0])
        self._qpos_kept = np.array([i for i in range(model.nq) if i != self.root_x_index])
        self.actuator_names = [model.actuator(a).name for a in range(model.nu)]
        if not np.all(model.actuator_trntype == mujoco.mjtTrn.mjTRN_JOINT):
            raise SimError(f"{name}: expected every actuator to drive one joint")
        # Motors (no bias term) apply force = gain * control: the commands are efforts, and
        # the robot description says so (the policy node stops an effort robot with zeros).
        if not np.all(model.actuator_biastype == mujoco.mjtBias.mjBIAS_NONE):
            raise SimError(f"{name}: expected motor (effort) actuators only")
        self.actuator_joint_ids = model.actuator_trnid[:, 0].copy()
        self.act_dim = int(model.nu)
        # Actions are given in the task's units; MuJoCo's actuators take the suite's [-1, 1].
        bounds = _RESCALED_TASKS[name][1:] if name in _RESCALED_TASKS else ([-1.0] * self.act_dim,
                                                                            [1.0] * self.act_dim)
        self.action_space = ActionSpace(*bounds)
        self.obs_dim = len(self._qpos_kept) + int(model.nv)

        # step_from runs on its own MjData so that it never disturbs the running episode.
        self._scratch = self._physics.copy(share_model=True)
        self._t = None  # control steps since reset; None before the first reset
        self._renderers = {}

    # ----- state conversion -----
    def obs_indices(self, joint_name: str) -> tuple[int | None, int]:
        """Observation indices of a joint's position (None for root x) and velocity."""
        j = self.joint_names.index(joint_name)  # one qpos and one qvel entry per joint
        n_kept = len(self._qpos_kept)
        position = None if j == self.root_x_index else j - (j > self.root_x_index)
        return position, n_kept + j

    def _obs(self, physics) -> np.ndarray:
        return np.concatenate([physics.data.qpos[self._qpos_kept], physics.data.qvel])

    def _load_state(self, physics, state) -> None:
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (self.obs_dim,):
            raise SimError(f"{self.name}: state must have shape ({self.obs_dim},), got {state.shape}")
        if not np.isfinite(state).all():
            raise SimError(f"{self.name}: state contains NaN or inf")
        n_kept = len(self._qpos_kept)
        physics.data.qpos[self.root_x_index] = 0.0
        physics.data.qpos[self._qpos_kept] = state[:n_kept]
        physics.data.qvel[:] = state[n_kept:]
        # dm_control's step finishes the previous step with mj_step2 and expects the position and
        # velocity stages of the current state done (mj_step1), as after any of its steps.
        # MuJoCo resets the data on absurd values (|qvel| > 1e10): that must not pass silently.
        try:
            with physics.check_invalid_state():
                mujoco.mj_step1(physics.model.ptr, physics.data.ptr)
        except PhysicsError as err:
            raise SimError(f"{self.name}: MuJoCo rejected the state: {err}") from err

    def _clip_action(self, action) -> np.ndarray:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (self.act_dim,):
            raise SimError(f"{self.name}: action must have shape ({self.act_dim},), got {action.shape}")
        # Clipped to the bounds and mapped onto the actuators' [-1, 1] (the identity for suite
        # tasks); NaN stays NaN (caught by the sum below), +-inf goes to the bounds.
        action = self.action_space.normalize(action)
        if not math.isfinite(action.sum()):
            raise SimError(f"{self.name}: action contains NaN")
        return action

    def _advance(self, physics, action) -> float:
        # The same sequence as dm_control's control.Environment.step, minus the observation dict.
        self._task.before_step(action, physics)
        try:
            physics.step(self._n_sub_steps)
        except PhysicsError as err:
            raise SimError(f"{self.name}: the simulation diverged: {err}") from err
        self._task.after_step(physics)
        return float(self._task.get_reward(physics))

    # ----- episode interface -----
    def reset(self, seed: int | None = None):
        if seed is not None:
            # dm_control tasks draw initial states from their own RandomState; reseeding it is
            # the only way to choose the episode without rebuilding the task.
            self._task._random = np.random.RandomState(seed)
        with self._physics.reset_context():
            self._task.initialize_episode(self._physics)
        self._t = 0
        return self._obs(self._physics), {"step": 0}

    def step(self, action):
        if self._t is None or self._t >= self.max_steps:
            raise SimError(f"{self.name}: call reset() before stepping (episode not running)")
        reward = self._advance(self._physics, self._clip_action(action))
        self._t += 1
        truncated = self._t >= self.max_steps
        return self._obs(self._physics), reward, False, truncated, {"step": self._t}

    def get_state(self) -> np.ndarray:
        return self._obs(self._physics)

    def set_state(self, state) -> None:
        """Sets the running episode's state; root x becomes 0. The step counter is unchanged."""
        self._load_state(self._physics, state)

    def qpos_qvel(self):
        return self._physics.data.qpos.copy(), self._physics.data.qvel.copy()

    def step_from(self, state, action):
        """One control step from ``state``: a pure function of (state, clipped action)."""
        self._load_state(self._scratch, state)
        reward = self._advance(self._scratch, self._clip_action(action))
        return self._obs(self._scratch), reward

    def step_from_batch(self, states, actions):
        """Loops step_from over rows: (N, obs_dim), (N, act_dim) -> (N, obs_dim), (N,)."""
        states = np.asarray(states, dtype=np.float64)
        actions = np.asarray(actions, dtype=np.float64)
        if states.ndim != 2 or actions.ndim != 2 or len(states) != len(actions):
            raise SimError(f"{self.name}: need (N, {self.obs_dim}) states and (N, {self.act_dim}) "
                           f"actions, got {states.shape} and {actions.shape}")
        next_states = np.empty_like(states)
        rewards = np.empty(len(states))
        for i in range(len(states)):
            next_states[i], rewards[i] = self.step_from(states[i], actions[i])
        return next_states, rewards

    # ----- rendering and description -----
    def render(self, height: int = 480, width: int = 640, camera_id: int = 0) -> np.ndarray:
        model = self._physics.model.ptr
        key = (height, width)
        if key not in self._renderers:
            model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
            model.vis.global_.offheight = max(model.vis.global_.offheight, height)
            try:
                renderer = mujoco.Renderer(model, height, width)
            except Exception as err:  # GL backends fail with many exception types
                raise SimError(
                    f"cannot create an OpenGL context for rendering ({type(err).__name__}: {err}); "
                    "set MUJOCO_GL=egl (GPU or Mesa) or MUJOCO_GL=osmesa before importing mujoco"
                ) from err
            # Closing the GL context before interpreter teardown avoids EGL errors at exit.
            weakref.finalize(self, renderer.close)
            self._renderers[key] = renderer
        renderer = self._renderers[key]
        renderer.update_scene(self._physics.data.ptr, camera=camera_id)
        return renderer.render()

    def robot_description(self) -> dict:
        model = self._physics.model
        slide = mujoco.mjtJoint.mjJNT_SLIDE
        layout = []
        for prefix, units in (("qpos", ("m", "rad")), ("qvel", ("m/s", "rad/s"))):
            for j, joint in enumerate(self.joint_names):
                if prefix == "qpos" and j == self.root_x_index:
                    continue
                layout.append({"name": f"{prefix}/{joint}", "size": 1,
                               "unit": units[0] if model.jnt_type[j] == slide else units[1]})
        return {
            "name": self.name,
            "simulator": f"mujoco {mujoco.__version__}, dm_control suite {_SUITE_TASKS[self.suite_name]}",
            "joint_names": list(self.joint_names),
            "actuator_names": list(self.actuator_names),
            "control_rate_hz": 1.0 / self.control_dt,
            **self.action_space.to_dict(),
            "command_interface": "effort",
            "max_episode_steps": self.max_steps,
            "observation_layout": layout,
        }
