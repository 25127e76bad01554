"""Throughput measurements of the diffusion generator, each beside a plain implementation.

benchmarks/train_throughput.py calls these and prints the rows. The weights are freshly
initialised: speed does not depend on them. Each function times our batched path and a
straightforward per-window / per-row implementation of the same computation in the same run.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from robot_stack.action_space import ActionSpace
from robot_stack.learn.edm import (
    EMA,
    DiffusionConfig,
    DiffusionGenerator,
    EDMDenoiser,
    edm_loss,
    edm_sample,
    train_step,
)
from robot_stack.learn.guidance import GuidanceConfig, PolicyGuidance
from robot_stack.learn.trajectories import ChannelNormalizer, TrajectoryLayout
from robot_stack.learn.unet1d import UNet1D


class RowByRowGuidance(PolicyGuidance):
    """The guidance step computed one window and one time step at a time (the plain version)."""

    def direction(self, windows: torch.Tensor) -> torch.Tensor:
        g = torch.zeros_like(windows[..., self.layout.action])
        for i in range(windows.shape[0]):
            for t in range(windows.shape[1]):
                row = windows[i : i + 1, t : t + 1]
                with torch.enable_grad():
                    action = row[..., self.layout.action].detach().requires_grad_(True)
                    logp = self._log_likelihood(row[..., self.layout.obs], action)
                    g[i, t] = torch.autograd.grad(logp.sum(), action)[0][0, 0]
        if self.cfg.normalize:
            g = g / (g.flatten(1).norm(dim=1)[:, None, None] + 1e-8)
        return g


def _identity_generator(obs_dim: int, act_dim: int, cfg: DiffusionConfig) -> DiffusionGenerator:
    layout = TrajectoryLayout(obs_dim, act_dim)
    normalizer = ChannelNormalizer(np.zeros(layout.channels), np.ones(layout.channels))
    return DiffusionGenerator(cfg, layout, normalizer, ActionSpace(-np.ones(act_dim), np.ones(act_dim)))


def bench_diffusion_train(obs_dim: int = 17, act_dim: int = 6, cfg: DiffusionConfig | None = None,
                          steps: int = 10, plain_windows: int = 16, seed: int = 0) -> list[dict]:
    """Training steps/s of the batched EDM step vs a per-window gradient-accumulation loop."""
    cfg = cfg or DiffusionConfig()
    torch.manual_seed(seed)
    channels = obs_dim + act_dim + 2
    denoiser = EDMDenoiser(UNet1D(channels, cfg.unet), cfg.sigma_data)
    ema = EMA(denoiser, cfg.ema_decay)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=cfg.lr)
    batch = torch.randn(cfg.batch_size, cfg.horizon, channels)
    params = sum(p.numel() for p in denoiser.parameters())
    train_step(denoiser, ema, optimizer, batch, cfg)  # warm-up: first calls pick conv kernels

    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(denoiser, ema, optimizer, batch, cfg)
    batched_s = (time.perf_counter() - t0) / steps

    # Plain: one window per forward/backward, gradients accumulated, then the same update.
    t0 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for i in range(plain_windows):
        (edm_loss(denoiser, batch[i : i + 1], cfg) / plain_windows).backward()
    optimizer.step()
    ema.update(denoiser)
    plain_s_per_window = (time.perf_counter() - t0) / plain_windows

    common = {"params": params, "batch": cfg.batch_size, "horizon": cfg.horizon,
              "threads": torch.get_num_threads()}
    return [
        {"name": "diffusion train step, batched (ours)", **common,
         "steps_per_s": 1.0 / batched_s, "windows_per_s": cfg.batch_size / batched_s},
        {"name": "diffusion train, per-window loop (plain)", **common,
         "steps_per_s": 1.0 / (plain_s_per_window * cfg.batch_size), "windows_per_s": 1.0 / plain_s_per_window},
    ]


def bench_guided_sampling(policy, obs_dim: int, act_dim: int, cfg: DiffusionConfig | None = None,
                          n_windows: int | None = None, plain_windows: int = 2,
                          guidance: GuidanceConfig | None = None, seed: int = 0) -> list[dict]:
    """Guided transitions/s: batched windows + batched guidance vs a per-window sampling loop
    with row-by-row guidance; plus unguided batched sampling to show the guidance cost.

    `policy` has log_prob(obs, action) (an agent's actor).
    """
    cfg = cfg or DiffusionConfig()
    guidance = guidance or GuidanceConfig(lam=1.0)
    n_windows = n_windows or cfg.sample_batch
    torch.manual_seed(seed)
    gen = _identity_generator(obs_dim, act_dim, cfg)
    batched_guide = PolicyGuidance(policy, gen.layout, gen.normalizer, guidance)
    plain_guide = RowByRowGuidance(policy, gen.layout, gen.normalizer, guidance)
    per_window = cfg.horizon - 1
    gen.sample_windows(min(8, n_windows), guide=batched_guide)  # warm-up

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    guided_s = timed(lambda: gen.sample_windows(n_windows, guide=batched_guide, seed=seed))
    unguided_s = timed(lambda: gen.sample_windows(n_windows, seed=seed))
    shape = (1, cfg.horizon, gen.layout.channels)
    plain_s = timed(lambda: [edm_sample(gen.denoiser, shape, cfg, guide=plain_guide) for _ in range(plain_windows)])

    common = {"params": gen.n_params, "sample_steps": cfg.sample_steps, "horizon": cfg.horizon,
              "lam": guidance.lam, "threads": torch.get_num_threads()}
    return [
        {"name": f"PGD sampling, {n_windows} windows per call, batched guidance (ours)", **common,
         "windows": n_windows, "transitions_per_s": n_windows * per_window / guided_s},
        {"name": f"unguided sampling, {n_windows} windows per call", **common,
         "windows": n_windows, "transitions_per_s": n_windows * per_window / unguided_s},
        {"name": "PGD sampling, per-window loop, row-by-row guidance (plain)", **common,
         "windows": plain_windows, "transitions_per_s": plain_windows * per_window / plain_s},
    ]
