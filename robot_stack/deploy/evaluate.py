"""`robot-stack eval`: an exported policy in the MuJoCo task, through the deployment runtime."""
from __future__ import annotations

from robot_stack.deploy.runtime import OnnxPolicy, check_compatible
from robot_stack.errors import ConfigError


def evaluate_onnx(policy_path: str, task: str, episodes: int = 5, seed: int = 0,
                  max_steps: int | None = None, provider: str = "auto") -> dict:
    """evaluate_policy of the ONNX model (ConfigError when it was not made for `task`'s robot);
    the result adds the model path and the onnxruntime provider that ran it."""
    from robot_stack.learn.evaluate import evaluate_policy, is_sim_task
    from sim import make_task

    policy = OnnxPolicy(policy_path, provider=provider)
    if is_sim_task(task):  # evaluate_policy names the problem otherwise
        robot = make_task(task).robot_description()
        meta = policy.metadata
        check_compatible(meta, robot, f"task {task}")
        # The task and robot the model was trained for, not only a layout that fits.
        if (meta.task, meta.raw.get("robot_name", meta.task)) != (task, robot["name"]):
            raise ConfigError(f"{policy_path} was trained for task {meta.task} (robot "
                              f"{meta.raw.get('robot_name', meta.task)}), not {task}")
    result = evaluate_policy(policy, task, episodes, seed=seed, max_steps=max_steps)
    return {**result, "policy": str(policy_path), "provider": policy.provider}
