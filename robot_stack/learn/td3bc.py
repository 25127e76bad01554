"""TD3+BC (Fujimoto & Gu, "A Minimalist Approach to Offline Reinforcement Learning", 2021).

Follows CORL's single-file implementation (algorithms/offline/td3_bc.py): twin critics with
target policy smoothing, a delayed actor trained on -lambda * Q1(s, pi(s)) + (pi(s) - a)^2 with
lambda = alpha / mean|Q1|, Polyak-averaged targets updated with the actor. Differences that do
not change the arithmetic: the twin critics are one EnsembleCritic (batched matmul), Adam is
fused, and the actor's loss is backpropagated into the actor's parameters only.

Actions are normalised into [-1, 1] (max_action = 1) from the robot's units with the dataset's
bounds (action_space.py); observations are un-normalised at the interface and normalised inside
the actor with the dataset statistics.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from robot_stack.errors import ConfigError
from robot_stack.learn.nets import (EnsembleCritic, OfflineAgent, TanhMLPActor, gaussian_log_prob,
                                    make_adam, make_normalizer, seeded_init, soft_update)
from robot_stack.learn.replay import Batch


@dataclass
class TD3BCConfig:
    alpha: float = 2.5            # weight of the Q term against behaviour cloning
    policy_noise: float = 0.2     # std of the target policy smoothing noise
    noise_clip: float = 0.5
    policy_freq: int = 2          # actor and target updates every policy_freq critic updates
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    discount: float = 0.99
    tau: float = 0.005            # Polyak rate of the target networks
    hidden_dims: tuple[int, ...] = (256, 256)
    batch_size: int = 256         # for the trainer's sampler; update() takes any batch
    normalize_states: bool = True


class DeterministicActor(TanhMLPActor):
    """pi(s) = tanh(MLP(normalise(s))), with a unit-Gaussian log_prob for PGD's guidance."""

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """log N(action; pi(obs), I) per sample, shape (B,).

        obs is un-normalised, action normalised into [-1, 1] (action_space.py). Differentiable in action: its
        gradient, pi(obs) - action, pulls guided actions towards the actor's choice.
        """
        return gaussian_log_prob(action, self(obs), torch.zeros((), device=action.device))


class TD3BC(OfflineAgent):
    STATEFUL = ("actor", "critic", "actor_target", "critic_target", "actor_optimizer",
                "critic_optimizer", "noise_generator")
    LOSSES = ("critic_loss", "actor_loss")

    def __init__(self, act_dim: int, obs_mean: np.ndarray, obs_std: np.ndarray,
                 config: TD3BCConfig | None = None, seed: int = 0,
                 device: str | torch.device = "cpu"):
        self.config = config = config or TD3BCConfig()
        if config.policy_freq < 1:
            raise ConfigError(f"policy_freq must be >= 1, got {config.policy_freq}")
        if min(config.alpha, config.policy_noise, config.noise_clip) < 0 or not 0 < config.tau <= 1:
            raise ConfigError(f"TD3+BC needs alpha, policy_noise, noise_clip >= 0 and tau in (0, 1], got "
                              f"{config.alpha}, {config.policy_noise}, {config.noise_clip}, {config.tau}")
        self.device = torch.device(device)
        obs_dim = len(obs_mean)
        normalizer = make_normalizer(obs_mean, obs_std, config.normalize_states)
        with seeded_init(seed):
            self.actor = DeterministicActor(normalizer, act_dim, config.hidden_dims).to(device)
            self.critic = EnsembleCritic(obs_dim, act_dim, config.hidden_dims, 2).to(device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_optimizer = make_adam(self.actor.parameters(), config.actor_lr)
        self.critic_optimizer = make_adam(self.critic.parameters(), config.critic_lr)
        self.noise_generator = torch.Generator(device=self.device)
        self.noise_generator.manual_seed(seed)
        self.total_steps = 0

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One critic step (and every policy_freq-th call an actor + target step).

        Returns the losses as 0-d tensors; converting them with .item() forces a sync, so the
        caller does it only when it logs.
        """
        cfg = self.config
        self.total_steps += 1
        noise = torch.randn(batch.actions.shape, generator=self.noise_generator, device=self.device)
        critic_loss = self.critic_loss(batch, noise)
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()
        log = {"critic_loss": critic_loss.detach()}

        if self.total_steps % cfg.policy_freq == 0:
            actor_loss = self.actor_loss(batch)
            self.actor_optimizer.zero_grad(set_to_none=True)
            # Only the actor learns from this loss: skip the critic's weight gradients.
            actor_loss.backward(inputs=list(self.actor.parameters()))
            self.actor_optimizer.step()
            soft_update(self.critic_target, self.critic, cfg.tau)
            soft_update(self.actor_target, self.actor, cfg.tau)
            log["actor_loss"] = actor_loss.detach()
        return log

    def critic_loss(self, batch: Batch, noise: torch.Tensor) -> torch.Tensor:
        """Sum over the two critics of their MSE to the clipped double-Q target, as CORL's
        mse(Q1) + mse(Q2); noise ~ N(0, 1) of the actions' shape smooths the target policy."""
        cfg = self.config
        obs = self.actor.normalizer(batch.observations)
        next_obs = self.actor.normalizer(batch.next_observations)
        with torch.no_grad():
            noise = (noise * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            next_actions = (self.actor_target.forward_normalized(next_obs) + noise).clamp(-1.0, 1.0)
            target_q = self.critic_target(next_obs, next_actions).min(dim=0).values
            target_q = batch.rewards + (1.0 - batch.terminals) * cfg.discount * target_q
        q = self.critic(obs, batch.actions)
        return (q - target_q).square().mean(dim=1).sum()

    def actor_loss(self, batch: Batch) -> torch.Tensor:
        """-lambda * Q1(s, pi(s)) + (pi(s) - a)^2 with lambda = alpha / mean|Q1|."""
        obs = self.actor.normalizer(batch.observations)
        pi = self.actor.forward_normalized(obs)
        q1 = self.critic(obs, pi, n_members=1)[0]
        lmbda = self.config.alpha / q1.abs().mean().detach()
        return -lmbda * q1.mean() + F.mse_loss(pi, batch.actions)
