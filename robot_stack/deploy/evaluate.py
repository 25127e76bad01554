"""`robot-stack eval`: an exported policy in the MuJoCo task, through the deployment runtime."""
from __future__ import annotations

from robot_stack.deploy.runtime import OnnxPolicy, check_compatible


def evaluate_onnx(policy_path: str, task: str, episodes: int = 5, seed: int = 0,
                  max_steps: int | None = None, provider: str = "auto") -> dict:
    """evaluate_policy of the ONNX model (ConfigError when it was not made for `task`'s robot);
    the result adds the model path and the onnxruntime provider that ran it."""
    from robot_stack.learn.evaluate import evaluate_policy, is_sim_task
    from sim import make_task

    policy = OnnxPolicy(policy_path, provider=provider)
    if is_sim_task(task):  # evaluate_policy names the problem otherwise
        check_compatible(policy.metadata, make_task(task).robot_description(), f"task {task}")
    result = evaluate_policy(policy, task, episodes, seed=seed, max_steps=max_steps)
    return {**result, "policy": str(policy_path), "provider": policy.provider}
