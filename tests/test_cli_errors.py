"""Every verb of `robot-stack`, given bad arguments, answers in one line: exit code 2, exactly
one line on stderr, no traceback. Each case runs the CLI as a user does, in its own process;
the cases that need data share one small dataset. Most of a case's time is importing what its
verb needs (torch, MuJoCo, zarr, rclpy), so the processes run two at a time, all before the
first case is checked. Node verbs refused at start-up share a ROS domain of their own."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
import sys
import textwrap

import pytest
import torch
import yaml

from robot_stack.cli import NODE_VERBS, build_parser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_ROS = importlib.util.find_spec("rclpy") is not None
CHEETAH_SPEC = os.path.join(REPO, "config", "robot_cheetah_sim.yaml")

# (verb words, arguments after them, words the error line must contain)
CASES = [
    ([], [], "required: VERB"),
    (["sim"], [], "required: SIM_VERB"),
    (["sim", "collect"], ["--task", "cheetah-run", "--episodes", "0", "--out", "{tmp}/d.zarr"],
     "episodes must be a whole number >= 1, got 0"),
    (["sim", "collect"], ["--task", "cheetah-run", "--episodes", "1", "--noise", "nan",
                          "--out", "{tmp}/d.zarr"], "noise must be a finite number >= 0, got nan"),
    (["sim", "collect"], ["--task", "cheetah-run", "--episodes", "two", "--out", "x"],
     "argument --episodes: invalid int value"),
    (["sim", "serve"], ["--task", "moon-walk"], "unknown task 'moon-walk'"),
    (["data"], [], "required: DATA_VERB"),
    (["data", "info"], ["{tmp}/missing.zarr"], "missing.zarr"),
    (["data", "check"], ["{tmp}/missing.zarr"], "missing.zarr"),
    (["train"], ["--dataset", "{dataset}", "--out", "{tmp}/run", "--reward", "bad_rewards:bare"],
     "must return a pair (reward, terminal or None), got ndarray"),
    (["train"], ["--dataset", "{dataset}", "--out", "{tmp}/run", "--reward", "bad_rewards:boom"],
     "bad_rewards:boom raised RuntimeError: no reward here"),
    (["train"], ["--dataset", "{dataset}", "--out", "{tmp}/run", "--reward", "bad_rewards:huge"],
     "bad_rewards:huge returned NaN or infinite rewards (or beyond float32's range)"),
    (["train"], ["--dataset", "{dataset}", "--out", "{tmp}/run", "--synthetic", "pgd",
                 "--guidance", "nan"], "guidance lam must be a finite number, got nan"),
    (["train"], ["--dataset", "{dataset}", "--out", "{tmp}/run", "--synthetic", "pgd",
                 "--generator-steps", "0"], "train_steps, batch_size and sample_batch must be >= 1"),
    (["train-generator"], ["--kind", "diffusion", "--dataset", "{dataset}", "--out", "{tmp}/gen",
                           "--threads", "0"], "--threads must be >= 1, got 0"),
    (["sim", "collect"], ["--task", "cheetah-run", "--episodes", "1", "--seed", "-1",
                          "--out", "{tmp}/d.zarr"], "argument --seed: must be a whole number >= 0"),
    (["teleop"], ["--source", "scripted", "--task", "cheetah-run", "--seed", "-1"],
     "argument --seed: must be a whole number >= 0"),
    (["teleop"], ["--source", "scripted", "--task", "cheetah-run", "--noise", "nan"],
     "noise must be a finite number >= 0, got nan"),
    (["train"], ["--dataset", "{dataset}", "--out", "{tmp}/run", "--device", "bogus"],
     "--device 'bogus' cannot be used here"),
    (["train"], ["--dataset", "{dataset}", "--out", "{tmp}/run", "--device", "cuda"],
     "--device 'cuda' cannot be used here"),
    (["train"], ["--steps", "many"], "argument --steps: invalid int value"),
    (["train-generator"], ["--kind", "gan", "--dataset", "x", "--out", "y"],
     "argument --kind: invalid choice"),
    (["generate"], ["--generator", "{tmp}/nothing", "--episodes", "1", "--out", "{tmp}/g.zarr"],
     "nothing"),
    (["validate"], ["--data", "{dataset}", "--task", "cheetah-run", "--max-samples", "0"],
     "max_samples must be a whole number >= 1, got 0"),
    (["validate"], ["--data", "{dataset}", "--task", "walker-walk"],
     "holds cheetah-run data, not walker-walk"),
    (["export"], ["{tmp}/run", "--out", "{tmp}/p.onnx", "--parity-samples", "0"],
     "parity samples must be a whole number >= 1, got 0"),
    (["export"], ["{tmp}", "--out", "{tmp}/p.onnx"], "not a training run"),
    (["eval"], ["--policy", "{tmp}/missing.onnx", "--task", "cheetah-run"], "does not exist"),
    (["eval"], ["--policy", "p.onnx", "--task", "cheetah-run", "--episodes", "x"],
     "argument --episodes: invalid int value"),
    (["eval"], ["--policy", "{tmp}/scaled.onnx", "--task", "cheetah-run"],
     "does not match task cheetah-run: action bounds"),
    (["eval"], ["--policy", "{tmp}/five_bounds.onnx", "--task", "cheetah-run-scaled"],
     "metadata action bounds must be finite and of one size"),
    (["teleop"], ["--source", "joy", "--publish-rate", "0"],
     "publish_rate must be a positive number (finite and > 0), got 0.0"),
    (["teleop"], ["--source", "mouse"], "argument --source: invalid choice: 'mouse'"),
    (["record"], ["--spec", "{tmp}/rate_inf.yaml", "--out", "{tmp}/r.zarr"],
     "rate_hz must be a positive number (finite and > 0), got inf"),
    (["record"], ["--spec", "{tmp}/size.yaml", "--out", "{tmp}/r.zarr"],
     "size must be a whole number >= 1, got 6.7"),
    (["deploy"], ["--policy", "{tmp}/p.onnx", "--spec", CHEETAH_SPEC, "--rate-hz", "-5"],
     "rate_hz must be a positive number (finite and > 0), got -5.0"),
    (["deploy"], ["--policy", "{tmp}/p.onnx", "--spec", CHEETAH_SPEC, "--rate-hz", "inf"],
     "rate_hz must be a positive number (finite and > 0), got inf"),
    (["deploy"], ["--policy", "{tmp}/p.onnx", "--spec", "{tmp}/rate_inf.yaml"],
     "rate_hz must be a positive number (finite and > 0), got inf"),
    (["deploy"], ["--safe-action", "hold"], "unrecognized arguments: --safe-action"),
    (["deploy"], ["--policy", "{tmp}/p.onnx", "--spec", "{tmp}/no_interface.yaml"],
     "action.command_interface must be one of ('position', 'velocity', 'effort'), got None"),
    (["deploy"], ["--policy", "{tmp}/p.onnx", "--spec", "{tmp}/position_blind.yaml"],
     "no JointState position part of the observation has ['ffoot']"),
]


def verbs(parser=None, words=()) -> set[tuple[str, ...]]:
    """Every verb and sub-verb `--help` lists, as word tuples (with () for the bare command)."""
    parser = parser or build_parser()
    found = {tuple(words)}
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        for name, sub in action.choices.items():
            found |= verbs(sub, (*words, name))
    return found


def test_the_cases_cover_every_verb():
    assert verbs() <= {tuple(words) for words, _, _ in CASES}


@pytest.fixture(scope="module")
def domain():
    """A ROS domain of its own for the node verbs, which join a graph before refusing."""
    if not HAS_ROS:
        yield 0
        return
    from rosutil import release_domain_id, unique_domain_id

    domain = unique_domain_id()
    yield domain
    release_domain_id(domain)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    from sim.collect import collect_dataset

    tmp = tmp_path_factory.mktemp("cli_errors")
    dataset = tmp / "cheetah.zarr"
    collect_dataset("cheetah-run", "scripted", 1, str(dataset), max_steps=30, progress=False)
    (tmp / "bad_rewards.py").write_text(textwrap.dedent("""
        import numpy as np

        def bare(obs, act, next_obs):
            return np.zeros(len(obs))

        def boom(obs, act, next_obs):
            raise RuntimeError("no reward here")

        def huge(obs, act, next_obs):  # finite in float64, infinite in float32
            return np.full(len(obs), 1e300), None
    """))
    def position_blind(spec):  # a position robot whose observation lacks a joint's position
        spec["action"]["command_interface"] = "position"
        spec["observation"][0]["joints"].remove("ffoot")

    for name, edit in (("rate_inf", lambda s: s.update(rate_hz=float("inf"))),
                       ("size", lambda s: s["action"].update(size=6.7)),
                       ("no_interface", lambda s: s["action"].pop("command_interface")),
                       ("position_blind", position_blind)):
        spec = yaml.safe_load(open(CHEETAH_SPEC))
        edit(spec)
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    write_linear_policy(tmp / "scaled.onnx", {})
    write_linear_policy(tmp / "five_bounds.onnx", {"action_low": [0.0, -2.9, -0.5, 0.0, -2.9]})
    return {"tmp": str(tmp), "dataset": str(dataset)}


def write_linear_policy(path, metadata_edits: dict) -> None:
    """A linear ONNX policy for cheetah-run-scaled, with metadata as export writes it, edited:
    what `eval` reads, without training a run."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from robot_stack.deploy.runtime import FORMAT_VERSION, INPUT_NAME, OUTPUT_NAME
    from sim import make_task

    robot = make_task("cheetah-run-scaled").robot_description()
    weights = numpy_helper.from_array(np.zeros((17, 6), np.float32), "weights")
    graph = helper.make_graph(
        [helper.make_node("MatMul", [INPUT_NAME, "weights"], [OUTPUT_NAME])], "linear",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 17])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 6])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    metadata = {"robot_stack_format": FORMAT_VERSION, "task": robot["name"],
                "robot_name": robot["name"], "command_interface": robot["command_interface"],
                "obs_dim": 17, "act_dim": 6, "observation_layout": robot["observation_layout"],
                "joint_names": robot["joint_names"], "action_low": robot["action_low"],
                "action_high": robot["action_high"], "control_rate_hz": robot["control_rate_hz"],
                "training_run": "none", "dataset": "none", "dataset_fingerprint": "none",
                **metadata_edits}
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    onnx.save(model, str(path))


def skip_reason(words: list[str], args: list[str]) -> str | None:
    if "cuda" in args and torch.cuda.is_available():
        return "this machine has a GPU: --device cuda is valid"
    if tuple(words) in NODE_VERBS and not HAS_ROS:
        return "a node verb without ROS 2 refuses with another line (test_cli.py)"
    return None


@pytest.fixture(scope="module")
def outcomes(files, domain) -> list[subprocess.CompletedProcess | None]:
    """Every case's finished process (None for a skipped case), in CASES order."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([files["tmp"], REPO]),
               ROS_DOMAIN_ID=str(domain))

    def run(case):
        words, args, _ = case
        if skip_reason(words, args):
            return None
        command = [sys.executable, "-m", "robot_stack.cli", *words,
                   *(a.format(**files) for a in args)]
        try:
            return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=120)
        except subprocess.TimeoutExpired:  # killed; a failure of this case alone
            return subprocess.CompletedProcess(command, None, "", "did not exit within 120 s")

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(run, CASES))


@pytest.mark.parametrize("case", range(len(CASES)),
                         ids=[" ".join(w + a)[:60] or "no verb" for w, a, _ in CASES])
def test_bad_arguments_give_one_line_and_exit_code_2(outcomes, case):
    words, args, message = CASES[case]
    if skip_reason(words, args):
        pytest.skip(skip_reason(words, args))
    proc = outcomes[case]
    lines = proc.stderr.strip().splitlines()
    assert (proc.returncode, len(lines)) == (2, 1), proc.stderr
    assert "Traceback" not in proc.stderr and message in lines[0], proc.stderr
