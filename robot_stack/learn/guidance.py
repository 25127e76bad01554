"""Policy guidance for trajectory diffusion (Jackson et al. 2024, "Policy-Guided Diffusion").

Before each sampler step k the action channels of the noisy windows move along the gradient of
the target policy's log-likelihood of the window's actions given its states:

    g = d/da sum_t log pi(tanh(unnormalise(a_t)) | unnormalise(s_t)),   a <- a + lambda_k g

with a the normalised pre-tanh actions, states detached, and
lambda_k = lambda * ((1 - k/N) + c_cos * sin(pi (k+1) / N)), zero at the final step.

The policy is any object with `log_prob(obs, action) -> (B,)` on torch tensors (obs in
environment units, action normalised into [-1, 1] as the windows' actions are, see
action_space.py); the agents' actors provide it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Protocol

import torch

from robot_stack.errors import ConfigError
from robot_stack.learn.trajectories import ChannelNormalizer, TrajectoryLayout


class LogProbPolicy(Protocol):
    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor: ...


@dataclass
class GuidanceConfig:
    lam: float = 1.0  # lambda; 0 = unguided sampling
    c_cos: float = 0.3
    at_clean_estimate: bool = False  # take g at the denoiser's clean estimate, not the noisy x
    normalize: bool = False  # divide g by its norm over each window's whole action block

    def to_dict(self) -> dict:
        return asdict(self)


def guidance_weight(k: int, n_steps: int, lam: float, c_cos: float) -> float:
    """lambda_k for sampler step k of n_steps; zero at the final step."""
    if k >= n_steps - 1:
        return 0.0
    return lam * ((1.0 - k / n_steps) + c_cos * math.sin(math.pi * (k + 1) / n_steps))


def check_policy(policy: LogProbPolicy, layout: TrajectoryLayout) -> None:
    """Fail early, with the shapes named, when a policy does not fit the generator's layout."""
    if not hasattr(policy, "log_prob"):
        raise ConfigError("guidance policy must have a log_prob(obs, action) method")
    obs = torch.zeros(2, layout.obs_dim)
    act = torch.zeros(2, layout.act_dim)
    try:
        with torch.no_grad():
            out = policy.log_prob(obs, act)
    except (RuntimeError, ValueError, IndexError) as e:
        raise ConfigError(
            f"guidance policy does not accept the generator's shapes (obs_dim {layout.obs_dim}, "
            f"act_dim {layout.act_dim}): {e}"
        ) from e
    if tuple(out.shape) != (2,):
        raise ConfigError(
            f"policy.log_prob must return one log density per sample, shape (2,) here, got {tuple(out.shape)}"
        )


class PolicyGuidance:
    """Sampler hook (see edm.GuidanceHook) that applies policy guidance to the action channels."""

    def __init__(self, policy: LogProbPolicy, layout: TrajectoryLayout, normalizer: ChannelNormalizer,
                 cfg: GuidanceConfig | None = None):
        check_policy(policy, layout)
        self.policy = policy
        self.layout = layout
        self.cfg = cfg or GuidanceConfig()
        f32 = dict(dtype=torch.float32)
        self.obs_mean = torch.as_tensor(normalizer.mean[layout.obs], **f32)
        self.obs_std = torch.as_tensor(normalizer.std[layout.obs], **f32)
        self.act_mean = torch.as_tensor(normalizer.mean[layout.action], **f32)
        self.act_std = torch.as_tensor(normalizer.std[layout.action], **f32)

    def log_likelihood(self, windows: torch.Tensor) -> torch.Tensor:
        """sum_t log pi(tanh(unnormalise(a_t)) | unnormalise(s_t)) per normalised window, (B,)."""
        return self._log_likelihood(windows[..., self.layout.obs], windows[..., self.layout.action])

    def _log_likelihood(self, obs_norm: torch.Tensor, act_norm: torch.Tensor) -> torch.Tensor:
        b, h, _ = obs_norm.shape
        obs = obs_norm.detach() * self.obs_std + self.obs_mean
        action = torch.tanh(act_norm * self.act_std + self.act_mean)
        logp = self.policy.log_prob(obs.reshape(b * h, -1), action.reshape(b * h, -1))
        return logp.reshape(b, h).sum(dim=1)

    def direction(self, windows: torch.Tensor) -> torch.Tensor:
        """g: gradient of the log-likelihood over the normalised pre-tanh actions, (B, H, act_dim)."""
        with torch.enable_grad():
            actions = windows[..., self.layout.action].detach().requires_grad_(True)
            logp = self._log_likelihood(windows[..., self.layout.obs], actions)
            (g,) = torch.autograd.grad(logp.sum(), actions)
        if self.cfg.normalize:
            g = g / (g.flatten(1).norm(dim=1)[:, None, None] + 1e-8)
        return g

    def __call__(self, x: torch.Tensor, k: int, n_steps: int, sigma: float,
                 denoise: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        lam_k = guidance_weight(k, n_steps, self.cfg.lam, self.cfg.c_cos)
        if lam_k == 0.0:
            return x
        at = denoise(x) if self.cfg.at_clean_estimate else x
        x = x.clone()
        x[..., self.layout.action] += lam_k * self.direction(at)
        return x
