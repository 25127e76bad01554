"""The `robot-stack` command: one small function per verb.

Heavy modules (torch, mujoco, rclpy) are imported inside the verb that needs them, so `--help`
is instant and the core verbs work on a machine without ROS 2.
"""
from __future__ import annotations

import argparse
import json
import sys

from robot_stack.errors import ArgumentParser, RobotStackError, seed_value


def _sim_collect(args: argparse.Namespace) -> int:
    from sim.collect import collect_dataset

    summary = collect_dataset(
        args.task, args.policy, args.episodes, args.out, seed=args.seed, noise=args.noise,
        max_steps=args.max_steps, progress=not args.quiet,
    )
    print(json.dumps(summary, default=str) if args.json else _format_summary(summary))
    return 0


def _format_summary(summary: dict) -> str:
    return "\n".join(f"{key}: {value}" for key, value in summary.items())


def _data_info(args: argparse.Namespace) -> int:
    from robot_stack.data.check import format_info, info

    summary = info(args.path)
    print(json.dumps(summary, default=str) if args.json else format_info(summary))
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from robot_stack.data.check import check

    report = check(args.path, repair=args.repair)
    print(report.format())
    return 0 if report.ok else 1


# The options `train --resume RUN` takes: how long and where it runs, not what it learns.
RESUME_OPTIONS = {"resume", "steps", "dataset", "device", "threads", "compile", "quiet", "func", "verb"}


def _train(args: argparse.Namespace) -> int:
    from robot_stack.learn.trainer import TrainConfig, load_run_config, parse_agent_params, train

    if args.resume:
        cfg = load_run_config(args.resume)
        cfg.out = args.resume  # the run named, also when it was moved or copied from cfg.out
        # A resumed run is the run in its config: an option that would change what it learns
        # is refused, not silently ignored. --dataset names the run's data moved elsewhere
        # (checked against the run's fingerprint and robot).
        changed = sorted(f"--{name.replace('_', '-')}" for name, value in vars(args).items()
                         if value not in (None, False) and name not in RESUME_OPTIONS)
        if changed:
            raise RobotStackError(f"{', '.join(changed)} cannot change a run being resumed (its "
                                  "config keeps them); only --steps, --dataset (the run's data, "
                                  "moved), --device, --threads, --compile and --quiet may be given")
        for name in ("steps", "dataset", "device", "threads", "compile"):
            if getattr(args, name) is not None:
                setattr(cfg, name, getattr(args, name))
    else:
        missing = [flag for flag, value in (("--dataset", args.dataset), ("--out", args.out)) if not value]
        if missing:
            raise RobotStackError(f"train needs {' and '.join(missing)} (or --resume RUN)")
        options = {k: v for k, v in vars(args).items()
                   if k in TrainConfig.__dataclass_fields__ and v is not None}
        options["agent_params"] = parse_agent_params(args.algo or TrainConfig.algo, args.agent_param or [])
        cfg = TrainConfig(**options)
    result = train(cfg, resume=bool(args.resume), progress=not args.quiet)
    print(json.dumps(result, indent=2))
    return 0


def _train_generator(args: argparse.Namespace) -> int:
    import torch

    if args.threads < 1:
        raise RobotStackError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    if args.kind == "diffusion":
        from robot_stack.learn.edm import DiffusionConfig, fit_diffusion

        cfg = DiffusionConfig(horizon=args.horizon, train_steps=args.steps, seed=args.seed,
                              sample_steps=args.sample_steps)
        generator = fit_diffusion(args.dataset, args.out, cfg, log=print, log_every=max(1, args.steps // 20),
                                  reward=args.reward)
    else:
        from robot_stack.learn.world_model import WorldModelConfig, fit_world_model

        generator = fit_world_model(args.dataset, args.out,
                                    WorldModelConfig(rollout_horizon=args.rollout_horizon, seed=args.seed),
                                    log=print, reward=args.reward)
    print(json.dumps({"generator": args.out, "kind": generator.kind, "source": generator.source},
                     indent=2, default=str))
    return 0


def _generate(args: argparse.Namespace) -> int:
    from robot_stack.learn.guidance import GuidanceConfig
    from robot_stack.learn.synthetic import generate, load_generator
    from robot_stack.learn.trainer import load_policy

    generator = load_generator(args.generator)
    policy = None
    if args.policy:
        agent = load_policy(args.policy, generator.action_space)
        # Diffusion guidance needs the actor's log_prob; world-model rollouts its actions.
        policy = agent.actor if generator.kind == "diffusion" else agent.act
    guidance = GuidanceConfig(lam=args.guidance if policy is not None else 0.0,
                              normalize=args.guidance_normalize)
    store = generate(generator, policy, guidance, episodes=args.episodes, out=args.out, seed=args.seed,
                     dataset=args.dataset, policy_name=args.policy)
    print(json.dumps({"out": args.out, "episodes": store.n_episodes, "steps": store.n_steps,
                      "generator": store.generator}, indent=2, default=str))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from sim.validate import plot_error_by_horizon, validate_datasets

    policy = None
    if args.policy:
        from robot_stack.learn.trainer import load_policy
        from sim import make_task

        # its log-likelihood is of the data's actions normalised with the task's bounds
        policy = load_policy(args.policy, make_task(args.task).action_space).actor
    result = validate_datasets(args.data, args.task, policy, max_samples=args.max_samples)
    if args.plot:
        plot_error_by_horizon(result, args.plot)
    if args.json:
        print(json.dumps(result))
        return 0
    for report in result["datasets"]:
        line = (f"{report['path']}: {report['transitions']} transitions, dynamics MSE "
                f"{report['dynamics_mse']:.4g}, reward MSE {report['reward_mse']}")
        if "policy_log_likelihood" in report:
            line += f", policy log-likelihood {report['policy_log_likelihood']:.3f}"
        print(line)
    print(f"(errors normalised by the {result['normalised_by']})")
    return 0


def _export(args: argparse.Namespace) -> int:
    from robot_stack.deploy.export import export_policy

    result = export_policy(args.run, args.out, dataset=args.dataset, samples=args.parity_samples)
    print(f"exported {result['path']} (parity: max |torch - onnxruntime| = "
          f"{result['parity_max_abs_diff']:.2e} over {result['parity_samples']} dataset observations)")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from robot_stack.deploy.evaluate import evaluate_onnx

    result = evaluate_onnx(args.policy, args.task, args.episodes, seed=args.seed, provider=args.provider)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.policy} on {args.task} ({result['provider']}): mean return {result['mean_return']:.1f} "
              f"+- {result['std_return']:.1f} over {args.episodes} episodes, "
              f"normalised {result['normalized_return']:.1f}")
    return 0


# Verbs that start a ROS 2 node: their arguments go untouched to the node's own `main(argv)`,
# which parses them (and answers --help), so the CLI and `ros2 run` share one option set.
NODE_VERBS = {
    ("sim", "serve"): ("ros_nodes.sim_node", "run a task as a ROS 2 robot (the sim node)"),
    ("teleop",): ("ros_nodes.teleop_node", "publish commands from keyboard, joystick or script"),
    ("record",): ("ros_nodes.recorder_node", "record robot topics into a dataset"),
    ("deploy",): ("ros_nodes.policy_node", "drive a robot with an exported ONNX policy"),
}


def _run_node_verb(module: str, node_args: list[str]) -> int:
    import importlib

    try:
        node_main = importlib.import_module(module).main
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in {"rclpy", "std_msgs", "sensor_msgs", "std_srvs",
                                                   "diagnostic_msgs", "rosgraph_msgs"}:
            raise RobotStackError(
                f"this verb needs ROS 2 ({exc.name} is not importable): source a ROS 2 install "
                "or `pip install 'robot_stack[ros]'`"
            ) from exc
        raise
    return node_main(node_args) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="robot-stack",
        description="Record ROS 2 demonstrations to Zarr, train offline RL with policy-guided "
        "diffusion, deploy ONNX policies.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    sim = verbs.add_parser("sim", help="MuJoCo tasks: collect datasets, serve as a ROS 2 robot")
    sim_verbs = sim.add_subparsers(dest="sim_verb", required=True, metavar="SIM_VERB")
    collect = sim_verbs.add_parser("collect", help="collect a dataset in-process (no ROS)")
    collect.add_argument("--task", required=True, help="cheetah-run | walker-walk | hopper-hop")
    collect.add_argument("--policy", choices=["random", "scripted"], default="scripted")
    collect.add_argument("--episodes", type=int, required=True)
    collect.add_argument("--out", required=True, help="dataset path (created, or appended to)")
    collect.add_argument("--seed", type=seed_value, default=0)
    collect.add_argument("--noise", type=float, default=0.3,
                         help="std of the Gaussian action noise of the scripted policy")
    collect.add_argument("--max-steps", type=int, default=None,
                         help="cut episodes short (default: the task's 1000 steps)")
    collect.add_argument("--json", action="store_true", help="print the summary as JSON")
    collect.add_argument("--quiet", action="store_true", help="no progress bar")
    collect.set_defaults(func=_sim_collect)
    sim_verbs.add_parser("serve", help=NODE_VERBS[("sim", "serve")][1] + " (ROS 2; see --help)")

    data = verbs.add_parser("data", help="inspect and check episode datasets")
    data_verbs = data.add_subparsers(dest="data_verb", required=True, metavar="DATA_VERB")
    info = data_verbs.add_parser("info", help="episodes, steps, keys, sources, size")
    info.add_argument("path")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=_data_info)
    check = data_verbs.add_parser("check", help="verify the dataset's invariants")
    check.add_argument("path")
    check.add_argument("--repair", action="store_true",
                       help="trim an uncommitted tail and recompute stale statistics")
    check.set_defaults(func=_data_check)

    train = verbs.add_parser("train", help="train an offline RL agent, optionally with synthetic data")
    train.add_argument("--dataset", help="episode-store dataset to train on")
    train.add_argument("--out", help="run folder (config, checkpoints, metrics, plots)")
    train.add_argument("--resume", metavar="RUN", help="continue the run in RUN from its checkpoint")
    train.add_argument("--algo", choices=["td3bc", "iql"])
    train.add_argument("--synthetic", choices=["none", "diffusion", "pgd", "world-model"])
    train.add_argument("--steps", type=int, help="agent updates in total")
    train.add_argument("--seed", type=seed_value)
    train.add_argument("--eval-task", help="sim task to evaluate in (default: the dataset's task)")
    train.add_argument("--eval-every", type=int)
    train.add_argument("--eval-episodes", type=int)
    train.add_argument("--log-every", type=int)
    train.add_argument("--checkpoint-every", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--reward", metavar="success|MODULE:FUNCTION",
                       help="rewards for data without them: 'success' (1 on the final step of each "
                       "episode labelled successful) or a function (obs, action, next_obs) -> "
                       "(reward, terminal)")
    train.add_argument("--agent-param", action="append", metavar="NAME=VALUE",
                       help="set an agent hyperparameter (repeatable): td3bc alpha, tau, policy_noise, "
                       "noise_clip, ...; iql expectile, beta, tau, ...; hidden_dims=256,256")
    train.add_argument("--synthetic-fraction", type=float, help="synthetic share of each batch")
    train.add_argument("--regen-every", type=int, help="agent steps between synthetic regenerations")
    train.add_argument("--synthetic-size", type=int, help="windows or rollouts per synthetic buffer")
    train.add_argument("--guidance", type=float, help="policy-guidance coefficient lambda (pgd)")
    train.add_argument("--guidance-normalize", action="store_const", const=True,
                       help="normalise the guidance gradient over each window's actions")
    train.add_argument("--horizon", type=int, help="diffusion window length")
    train.add_argument("--sample-steps", type=int, help="EDM sampler steps")
    train.add_argument("--rollout-horizon", type=int, help="world-model rollout length")
    train.add_argument("--generator", help="a trained generator directory (else one is trained)")
    train.add_argument("--generator-steps", type=int, help="diffusion training steps when training one")
    train.add_argument("--device", help="torch device (cpu, cuda)")
    train.add_argument("--threads", type=int, help="torch CPU threads (default 1)")
    train.add_argument("--compile", action="store_const", const=True,
                       help="torch.compile the agent's losses (faster; needs a C++ compiler on a CPU)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)

    fit = verbs.add_parser("train-generator", help="fit a trajectory diffusion model or world model")
    fit.add_argument("--kind", choices=["diffusion", "world-model"], required=True)
    fit.add_argument("--dataset", required=True)
    fit.add_argument("--out", required=True, help="generator directory")
    fit.add_argument("--steps", type=int, default=20_000, help="diffusion training steps")
    fit.add_argument("--horizon", type=int, default=32)
    fit.add_argument("--sample-steps", type=int, default=16)
    fit.add_argument("--rollout-horizon", type=int, default=5)
    fit.add_argument("--seed", type=seed_value, default=0)
    fit.add_argument("--reward", metavar="success|MODULE:FUNCTION",
                     help="the rewards the generator learns, as train's --reward (default: the dataset's)")
    fit.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    fit.set_defaults(func=_train_generator)

    gen = verbs.add_parser("generate", help="sample a synthetic dataset from a generator")
    gen.add_argument("--generator", required=True, help="generator directory")
    gen.add_argument("--policy", metavar="RUN", help="training run whose policy guides / rolls out")
    gen.add_argument("--guidance", type=float, default=1.0, help="lambda (diffusion with --policy)")
    gen.add_argument("--guidance-normalize", action="store_true")
    gen.add_argument("--episodes", type=int, required=True, help="windows or rollouts to generate")
    gen.add_argument("--out", required=True, help="synthetic dataset path")
    gen.add_argument("--dataset", help="source dataset (default: the one the generator was fit on)")
    gen.add_argument("--seed", type=seed_value, default=0)
    gen.set_defaults(func=_generate)

    val = verbs.add_parser("validate", help="check transition datasets against MuJoCo's dynamics")
    val.add_argument("--data", action="append", required=True, metavar="PATH",
                     help="dataset (repeat for several: real, diffusion, PGD, world model)")
    val.add_argument("--task", required=True, help="sim task giving the true dynamics")
    val.add_argument("--policy", metavar="RUN", help="report the actions' mean log-likelihood under it")
    val.add_argument("--max-samples", type=int, default=20_000, help="transitions checked per dataset")
    val.add_argument("--json", action="store_true", help="print one JSON object")
    val.add_argument("--plot", metavar="FILE", help="PNG of error against horizon")
    val.set_defaults(func=_validate)

    export = verbs.add_parser("export", help="export a run's policy to ONNX, parity-checked")
    export.add_argument("run", help="training run folder")
    export.add_argument("--out", required=True, help="ONNX file to write")
    export.add_argument("--dataset", help="dataset for the parity check (default: the run's)")
    export.add_argument("--parity-samples", type=int, default=1000)
    export.set_defaults(func=_export)

    evaluate = verbs.add_parser("eval", help="evaluate an ONNX policy in a MuJoCo task (no ROS)")
    evaluate.add_argument("--policy", required=True, help="ONNX file from robot-stack export")
    evaluate.add_argument("--task", required=True)
    evaluate.add_argument("--episodes", type=int, default=5)
    evaluate.add_argument("--seed", type=seed_value, default=0)
    evaluate.add_argument("--provider", default="auto", help="auto | tensorrt | cuda | cpu")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(func=_eval)

    for words, (_, text) in NODE_VERBS.items():
        if len(words) == 1:
            verbs.add_parser(words[0], help=text + " (ROS 2; see --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        for words, (module, _) in NODE_VERBS.items():
            if tuple(argv[: len(words)]) == words:
                return _run_node_verb(module, argv[len(words):])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except RobotStackError as exc:
        print(f"robot-stack: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # Where a verb writes its outputs (run folder, ONNX file, plots) the file system can be
        # read-only or full: the system's own reason and the path say all there is to say.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"robot-stack: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
