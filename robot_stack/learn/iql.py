"""IQL (Kostrikov, Nair & Levine, "Offline Reinforcement Learning with Implicit Q-Learning", 2022).

Follows CORL's single-file implementation (algorithms/offline/iql.py):
- V(s) regresses the expectile (tau = 0.7) of the target twin-Q minimum over dataset actions;
- Q(s, a) regresses r + gamma * (1 - terminal) * V(s') (V from before this step's update);
- the Gaussian actor (tanh mean, state-independent log-std) does advantage-weighted
  regression: maximise exp(beta * (Q_target - V)) clipped at 100, times log pi(a | s);
- the actor's learning rate follows a cosine schedule over max_steps; evaluation uses the mean.
The three losses are computed from the networks as they were before this step (CORL's order
computes each from pre-update values, with the targets detached), so one backward pass over
their sum gives each network its own gradient and one fused Adam step updates all three.

Actions are normalised into [-1, 1] from the robot's units with the dataset's bounds
(action_space.py); observations are un-normalised at the interface and normalised inside the
actor with the dataset statistics.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

from robot_stack.errors import ConfigError
from robot_stack.learn.nets import (EnsembleCritic, ObservationNormalizer, OfflineAgent,
                                    TanhMLPActor, gaussian_log_prob, make_adam, make_normalizer,
                                    mlp, seeded_init, soft_update)
from robot_stack.learn.replay import Batch


@dataclass
class IQLConfig:
    expectile: float = 0.7        # IQL's tau: the expectile V fits
    beta: float = 3.0             # inverse temperature of the advantage weights
    max_adv_weight: float = 100.0
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    value_lr: float = 3e-4
    max_steps: int = 1_000_000    # length of the actor's cosine learning-rate schedule
    discount: float = 0.99
    tau: float = 0.005            # Polyak rate of the target critic
    hidden_dims: tuple[int, ...] = (256, 256)
    batch_size: int = 256         # for the trainer's sampler; update() takes any batch
    normalize_states: bool = True
    # Rewards are multiplied by this inside update(), so real and synthetic batches get the
    # same scaling. CORL's locomotion setting: return_range_reward_scale(...).
    reward_scale: float = 1.0


LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # CORL's clamp of the actor's log-std


def return_range_reward_scale(episode_returns: np.ndarray, max_episode_steps: int = 1000) -> float:
    """CORL's reward normalisation for locomotion: max_episode_steps / (max return - min return)."""
    spread = float(np.max(episode_returns) - np.min(episode_returns))
    if spread <= 0:
        raise ConfigError("reward scaling by return range needs episodes with different returns")
    return max_episode_steps / spread


class GaussianActor(TanhMLPActor):
    """N(tanh(MLP(normalise(s))), diag(exp(log_std))^2) with a state-independent log_std.

    forward(obs) is the mean: the deterministic action used for evaluation and export.
    """

    def __init__(self, normalizer: ObservationNormalizer, act_dim: int, hidden_dims):
        super().__init__(normalizer, act_dim, hidden_dims)
        self.log_std = torch.nn.Parameter(torch.zeros(act_dim))

    def log_prob_normalized(self, obs_normalized: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        log_std = self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        return gaussian_log_prob(action, self.forward_normalized(obs_normalized), log_std)

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """log pi(action | obs) per sample, shape (B,); obs un-normalised, action normalised.

        Differentiable in action (PGD's guidance gradient) and in the actor's parameters.
        """
        return self.log_prob_normalized(self.normalizer(obs), action)


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Asymmetric L2: |expectile - 1(diff < 0)| * diff^2, averaged."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.square()).mean()


class IQL(OfflineAgent):
    STATEFUL = ("actor", "critic", "critic_target", "value", "optimizer", "scheduler")
    LOSSES = ("losses",)

    def __init__(self, act_dim: int, obs_mean: np.ndarray, obs_std: np.ndarray,
                 config: IQLConfig | None = None, seed: int = 0,
                 device: str | torch.device = "cpu"):
        self.config = config = config or IQLConfig()
        if not 0.0 < config.expectile < 1.0:
            raise ConfigError(f"expectile must be in (0, 1), got {config.expectile}")
        if config.beta < 0 or not 0 < config.tau <= 1:
            raise ConfigError(f"IQL needs beta >= 0 and tau in (0, 1], got {config.beta}, {config.tau}")
        self.device = torch.device(device)
        obs_dim = len(obs_mean)
        normalizer = make_normalizer(obs_mean, obs_std, config.normalize_states)
        with seeded_init(seed):
            self.actor = GaussianActor(normalizer, act_dim, config.hidden_dims).to(device)
            self.critic = EnsembleCritic(obs_dim, act_dim, config.hidden_dims, 2).to(device)
            self.value = mlp(obs_dim, 1, config.hidden_dims).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.optimizer = make_adam([
            {"params": self.value.parameters(), "lr": config.value_lr},
            {"params": self.critic.parameters(), "lr": config.critic_lr},
            {"params": self.actor.parameters(), "lr": config.actor_lr},
        ], lr=config.actor_lr)
        # Per parameter group: constant value and critic rates, cosine-annealed actor rate
        # (the closed form of CORL's CosineAnnealingLR(T_max=max_steps)).
        cosine = lambda step: 0.5 * (1.0 + math.cos(math.pi * step / config.max_steps))  # noqa: E731
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [lambda step: 1.0, lambda step: 1.0, cosine])
        self.total_steps = 0

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One step of value, critic and actor. Returns 0-d loss tensors (no .item() sync)."""
        self.total_steps += 1
        value_loss, critic_loss, actor_loss = self.losses(batch)
        self.optimizer.zero_grad(set_to_none=True)
        (value_loss + critic_loss + actor_loss).backward()
        self.optimizer.step()
        self.scheduler.step()
        soft_update(self.critic_target, self.critic, self.config.tau)
        return {"value_loss": value_loss.detach(), "critic_loss": critic_loss.detach(),
                "actor_loss": actor_loss.detach()}

    def losses(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Expectile value loss, critic MSE to r + gamma V(s'), advantage-weighted actor loss."""
        cfg = self.config
        obs = self.actor.normalizer(batch.observations)
        next_obs = self.actor.normalizer(batch.next_observations)

        with torch.no_grad():
            target_q = self.critic_target(obs, batch.actions).min(dim=0).values
            next_v = self.value(next_obs).squeeze(-1)
            q_target = (batch.rewards * cfg.reward_scale
                        + (1.0 - batch.terminals) * cfg.discount * next_v)

        advantage = target_q - self.value(obs).squeeze(-1)
        value_loss = expectile_loss(advantage, cfg.expectile)

        q = self.critic(obs, batch.actions)
        critic_loss = (q - q_target).square().mean()  # mean of the two critics' MSE, as CORL

        adv_weight = torch.exp(cfg.beta * advantage.detach()).clamp(max=cfg.max_adv_weight)
        actor_loss = -(adv_weight * self.actor.log_prob_normalized(obs, batch.actions)).mean()
        return value_loss, critic_loss, actor_loss
