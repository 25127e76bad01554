"""Training throughput: our implementations next to a plain baseline timed in the same run.

Rows (each "ours" beside its same-run baseline, with the ratio):
- TD3+BC updates/s at batch 256 (robot_stack.learn.td3bc vs a plain CORL-style update below)
- IQL updates/s at batch 256 (robot_stack.learn.iql vs a plain CORL-style update below)
Other stages add rows with register(BenchmarkEntry(...)) before main() runs, e.g. diffusion
training steps/s or guided-sampling transitions/s.

Data: a synthetic random dataset of cheetah shape (17-dim observations, 6-dim actions, 100k
transitions), so the script needs no collection. Only speed is measured here: the data's
values do not change the arithmetic.

Ours and baseline alternate in rounds and each row reports the median round, which keeps a
load change on a shared machine from favouring either side.

    .venv/bin/python benchmarks/train_throughput.py [--seconds 3] [--rounds 3] [--threads N]

The printed load average says how busy the machine was. With other processes on the cores,
2 intra-op threads that spin-wait for each other can run several times slower than 1 thread;
compare --threads 1, or set OMP_WAIT_POLICY=PASSIVE.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robot_stack.learn.iql import IQL, IQLConfig
from robot_stack.learn.replay import ReplaySampler, TransitionBuffer
from robot_stack.learn.td3bc import TD3BC, TD3BCConfig

OBS_DIM, ACT_DIM, N_TRANSITIONS, BATCH_SIZE = 17, 6, 100_000, 256

# A setup function builds everything a row needs and returns a step function; one call of the
# step function does `items` units of work (e.g. one update = 1 item, a sampled batch = 256).
StepFn = Callable[[], int]
Setup = Callable[[], StepFn]


@dataclass
class BenchmarkEntry:
    name: str
    unit: str
    ours: Setup
    baseline: Setup | None = None
    baseline_name: str = ""


ENTRIES: list[BenchmarkEntry] = []


def register(entry: BenchmarkEntry) -> BenchmarkEntry:
    ENTRIES.append(entry)
    return entry


def random_dataset(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(N_TRANSITIONS, OBS_DIM)).astype(np.float32)
    return {
        "observations": obs,
        "actions": rng.uniform(-1, 1, size=(N_TRANSITIONS, ACT_DIM)).astype(np.float32),
        "rewards": rng.normal(size=N_TRANSITIONS).astype(np.float32),
        "next_observations": obs + 0.1 * rng.normal(size=obs.shape).astype(np.float32),
        "terminals": np.zeros(N_TRANSITIONS, dtype=np.float32),
    }


def measure(step: StepFn, seconds: float, warmup_steps: int = 20) -> float:
    """Items per second of step() over about `seconds` of wall time, after a warm-up."""
    for _ in range(warmup_steps):
        step()
    items, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        items += step()
    return items / elapsed


def run(entries: list[BenchmarkEntry], seconds: float, rounds: int) -> list[tuple]:
    rows = []
    for entry in entries:
        ours_step = entry.ours()
        base_step = entry.baseline() if entry.baseline else None
        gc.freeze()  # as the trainer does before its loop; both sides run with it
        ours, base = [], []
        for _ in range(rounds):
            ours.append(measure(ours_step, seconds))
            if base_step:
                base.append(measure(base_step, seconds))
        rows.append((entry, statistics.median(ours), statistics.median(base) if base else None))
    return rows


def print_table(rows: list[tuple]) -> None:
    print(f"{'benchmark':<34} {'unit':<16} {'ours':>10} {'baseline':>10} {'ratio':>7}  baseline is")
    for entry, ours, base in rows:
        base_s = f"{base:10.1f}" if base is not None else f"{'-':>10}"
        ratio_s = f"{ours / base:7.2f}" if base else f"{'-':>7}"
        print(f"{entry.name:<34} {entry.unit:<16} {ours:10.1f} {base_s} {ratio_s}  {entry.baseline_name}")


# --- ours -------------------------------------------------------------------------------------

def ours_setup(agent_cls, config, compile_losses: bool = False) -> Setup:
    def setup() -> StepFn:
        data = random_dataset()
        buffer = TransitionBuffer(**data)
        sampler = ReplaySampler(buffer, seed=0)
        agent = agent_cls(ACT_DIM, data["observations"].mean(0), data["observations"].std(0),
                          config=config, seed=0)
        if compile_losses:
            agent.compile_losses()  # compiles at the first update, in the warm-up

        def step() -> int:
            agent.update(sampler.sample(BATCH_SIZE))
            return 1
        return step
    return setup


# --- plain baseline: the same computations written simply, CORL-style --------------------------
# Separate MLPs per critic, one unfused Adam per network, parameter-loop Polyak updates,
# numpy index sampling from five tensors, states normalised in the dataset beforehand.

def plain_mlp(in_dim: int, out_dim: int, out_act: nn.Module | None = None) -> nn.Sequential:
    layers = [nn.Linear(in_dim, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, out_dim)]
    return nn.Sequential(*layers, *([out_act] if out_act else []))


def plain_soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    for t, s in zip(target.parameters(), source.parameters()):
        t.data.copy_((1 - tau) * t.data + tau * s.data)


class PlainData:
    def __init__(self):
        data = random_dataset()
        obs, next_obs = data["observations"], data["next_observations"]
        mean, std = obs.mean(0), obs.std(0) + 1e-3
        self.tensors = [torch.from_numpy(x) for x in ((obs - mean) / std, data["actions"],
                        data["rewards"][:, None], (next_obs - mean) / std, data["terminals"][:, None])]

    def sample(self):
        idx = np.random.randint(0, N_TRANSITIONS, size=BATCH_SIZE)
        return [t[idx] for t in self.tensors]


def plain_td3bc_setup() -> StepFn:
    cfg = TD3BCConfig()
    data = PlainData()
    actor = plain_mlp(OBS_DIM, ACT_DIM, nn.Tanh())
    critic_1, critic_2 = plain_mlp(OBS_DIM + ACT_DIM, 1), plain_mlp(OBS_DIM + ACT_DIM, 1)
    actor_t, critic_1_t, critic_2_t = (copy.deepcopy(m) for m in (actor, critic_1, critic_2))
    actor_opt = torch.optim.Adam(actor.parameters(), lr=cfg.actor_lr)
    critic_1_opt = torch.optim.Adam(critic_1.parameters(), lr=cfg.critic_lr)
    critic_2_opt = torch.optim.Adam(critic_2.parameters(), lr=cfg.critic_lr)
    total_it = 0

    def step() -> int:
        nonlocal total_it
        total_it += 1
        state, action, reward, next_state, done = data.sample()
        with torch.no_grad():
            noise = (torch.randn_like(action) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            next_action = (actor_t(next_state) + noise).clamp(-1, 1)
            next_sa = torch.cat([next_state, next_action], 1)
            target_q = torch.min(critic_1_t(next_sa), critic_2_t(next_sa))
            target_q = reward + (1 - done) * cfg.discount * target_q
        sa = torch.cat([state, action], 1)
        critic_loss = F.mse_loss(critic_1(sa), target_q) + F.mse_loss(critic_2(sa), target_q)
        critic_1_opt.zero_grad()
        critic_2_opt.zero_grad()
        critic_loss.backward()
        critic_1_opt.step()
        critic_2_opt.step()
        if total_it % cfg.policy_freq == 0:
            pi = actor(state)
            q = critic_1(torch.cat([state, pi], 1))
            actor_loss = -cfg.alpha / q.abs().mean().detach() * q.mean() + F.mse_loss(pi, action)
            actor_opt.zero_grad()
            actor_loss.backward()
            actor_opt.step()
            plain_soft_update(critic_1_t, critic_1, cfg.tau)
            plain_soft_update(critic_2_t, critic_2, cfg.tau)
            plain_soft_update(actor_t, actor, cfg.tau)
        return 1
    return step


def plain_iql_setup() -> StepFn:
    cfg = IQLConfig()
    data = PlainData()
    q_1, q_2 = plain_mlp(OBS_DIM + ACT_DIM, 1), plain_mlp(OBS_DIM + ACT_DIM, 1)
    q_1_t, q_2_t = copy.deepcopy(q_1), copy.deepcopy(q_2)
    value = plain_mlp(OBS_DIM, 1)
    actor_mean = plain_mlp(OBS_DIM, ACT_DIM, nn.Tanh())
    log_std = nn.Parameter(torch.zeros(ACT_DIM))
    q_opt = torch.optim.Adam([*q_1.parameters(), *q_2.parameters()], lr=cfg.critic_lr)
    v_opt = torch.optim.Adam(value.parameters(), lr=cfg.value_lr)
    actor_opt = torch.optim.Adam([*actor_mean.parameters(), log_std], lr=cfg.actor_lr)
    actor_sched = torch.optim.lr_scheduler.CosineAnnealingLR(actor_opt, cfg.max_steps)

    def step() -> int:
        obs, act, rew, next_obs, done = data.sample()
        with torch.no_grad():
            next_v = value(next_obs)
            sa = torch.cat([obs, act], 1)
            target_q = torch.min(q_1_t(sa), q_2_t(sa))
        adv = target_q - value(obs)
        diff_weight = torch.abs(cfg.expectile - (adv < 0).float())
        v_loss = torch.mean(diff_weight * adv**2)
        v_opt.zero_grad()
        v_loss.backward()
        v_opt.step()
        targets = rew + (1.0 - done) * cfg.discount * next_v.detach()
        q_loss = (F.mse_loss(q_1(sa), targets) + F.mse_loss(q_2(sa), targets)) / 2
        q_opt.zero_grad()
        q_loss.backward()
        q_opt.step()
        plain_soft_update(q_1_t, q_1, cfg.tau)
        plain_soft_update(q_2_t, q_2, cfg.tau)
        exp_adv = torch.exp(cfg.beta * adv.detach()).clamp(max=cfg.max_adv_weight).squeeze(-1)
        dist = torch.distributions.Normal(actor_mean(obs), log_std.clamp(-20, 2).exp())
        actor_loss = torch.mean(exp_adv * -dist.log_prob(act).sum(-1))
        actor_opt.zero_grad()
        actor_loss.backward()
        actor_opt.step()
        actor_sched.step()
        return 1
    return step


register(BenchmarkEntry("TD3+BC update (batch 256)", "updates/s",
                        ours_setup(TD3BC, TD3BCConfig()), plain_td3bc_setup,
                        "plain CORL-style TD3+BC"))
register(BenchmarkEntry("IQL update (batch 256)", "updates/s",
                        ours_setup(IQL, IQLConfig()), plain_iql_setup, "plain CORL-style IQL"))
register(BenchmarkEntry("TD3+BC update, --compile", "updates/s",
                        ours_setup(TD3BC, TD3BCConfig(), compile_losses=True), plain_td3bc_setup,
                        "plain CORL-style TD3+BC"))
register(BenchmarkEntry("IQL update, --compile", "updates/s",
                        ours_setup(IQL, IQLConfig(), compile_losses=True), plain_iql_setup,
                        "plain CORL-style IQL"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per round and side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", default="", help="run only rows whose name contains this")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds x {args.seconds:.1f} s per side, median round shown, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    entries = [e for e in ENTRIES if args.only.lower() in e.name.lower()]
    print_table(run(entries, args.seconds, args.rounds))
    if not args.only:
        print_generator_rows()


def print_generator_rows() -> None:
    """Diffusion training and PGD sampling at the trainer's defaults, each beside a plain
    per-window implementation of the same computation (robot_stack.learn.generator_bench)."""
    from robot_stack.learn.edm import DiffusionConfig
    from robot_stack.learn.generator_bench import bench_diffusion_train, bench_guided_sampling
    from robot_stack.learn.nets import make_normalizer
    from robot_stack.learn.td3bc import DeterministicActor

    cfg = DiffusionConfig()
    train_rows = bench_diffusion_train(OBS_DIM, ACT_DIM, cfg, steps=10)
    actor = DeterministicActor(make_normalizer(np.zeros(OBS_DIM), np.ones(OBS_DIM), False), ACT_DIM, (256, 256))
    sample_rows = bench_guided_sampling(actor, OBS_DIM, ACT_DIM, cfg)
    print(f"\ndiffusion: U-Net {train_rows[0]['params'] / 1e6:.2f}M parameters, horizon {cfg.horizon}, "
          f"batch {cfg.batch_size}, {cfg.sample_steps} sampler steps")
    for row in train_rows:
        print(f"{row['name']:<62} {row['steps_per_s']:10.2f} steps/s {row['windows_per_s']:10.1f} windows/s")
    for row in sample_rows:
        print(f"{row['name']:<62} {row['transitions_per_s']:10.1f} transitions/s")
    ours, plain = sample_rows[0]["transitions_per_s"], sample_rows[-1]["transitions_per_s"]
    print(f"100k PGD-guided transitions: {100_000 / ours:.0f} s (goal <= 300 s); "
          f"batched/plain sampling ratio {ours / plain:.1f}")


if __name__ == "__main__":
    main()
