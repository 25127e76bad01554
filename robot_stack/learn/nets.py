"""Network pieces shared by the offline RL agents (td3bc.py, iql.py).

Actors take raw (un-normalised) observations: the dataset's observation mean and std live
inside the actor as buffers, so a saved or ONNX-exported actor carries its own normalisation.
Critics and value functions are internal to training and take already-normalised observations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from robot_stack import compat
from robot_stack.errors import ConfigError

# CORL adds this to the dataset std so that constant observation channels do not divide by 0.
NORMALIZER_STD_EPS = 1e-3


class ObservationNormalizer(nn.Module):
    """(obs - mean) / std with fixed statistics kept as buffers (saved and exported)."""

    def __init__(self, mean: np.ndarray | torch.Tensor, std: np.ndarray | torch.Tensor):
        super().__init__()
        mean = torch.as_tensor(np.asarray(mean), dtype=torch.float32)
        std = torch.as_tensor(np.asarray(std), dtype=torch.float32)
        if mean.ndim != 1 or mean.shape != std.shape:
            raise ValueError(f"mean and std must be 1-D of the same size, got {tuple(mean.shape)} "
                             f"and {tuple(std.shape)}")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.mean) / self.std


def make_normalizer(obs_mean, obs_std, normalize: bool) -> ObservationNormalizer:
    """The dataset-statistics normaliser, or the identity when states are not normalised."""
    if not normalize:
        return ObservationNormalizer(np.zeros(len(obs_mean)), np.ones(len(obs_mean)))
    return ObservationNormalizer(obs_mean, np.asarray(obs_std) + NORMALIZER_STD_EPS)


@contextlib.contextmanager
def seeded_init(seed: int):
    """Seeds the global RNG that module initialisation draws from, restoring it afterwards,
    so that building an agent is reproducible and leaves the caller's RNG stream untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def mlp(in_dim: int, out_dim: int, hidden_dims: Sequence[int]) -> nn.Sequential:
    """Linear layers with ReLU between them and no activation after the last."""
    dims = [in_dim, *hidden_dims]
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(d_in, d_out), nn.ReLU()]
    layers.append(nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*layers)


class TanhMLPActor(nn.Module):
    """a = tanh(MLP(normalise(obs))): the actor trunk of TD3+BC and the mean of IQL's actor.

    forward(obs) is the deterministic action in [-1, 1], the function that gets exported.
    """

    def __init__(self, normalizer: ObservationNormalizer, act_dim: int, hidden_dims: Sequence[int]):
        super().__init__()
        self.normalizer = normalizer
        self.net = mlp(normalizer.mean.shape[0], act_dim, hidden_dims)

    @property
    def obs_dim(self) -> int:
        return self.normalizer.mean.shape[0]

    def forward_normalized(self, obs_normalized: torch.Tensor) -> torch.Tensor:
        # The agents normalise a batch once and feed it to actor and critics alike.
        return torch.tanh(self.net(obs_normalized))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.forward_normalized(self.normalizer(obs))


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag(exp(log_std))^2), summed over the last dimension."""
    z = (x - mean) * torch.exp(-log_std)
    return (-0.5 * z.square() - log_std).sum(-1) - 0.5 * math.log(2 * math.pi) * x.shape[-1]


class VectorizedLinear(nn.Module):
    """n_members independent linear layers applied as one batched matmul (torch.bmm).

    Input (n_members, batch, in_features) -> output (n_members, batch, out_features). Each
    member is initialised like nn.Linear.
    """

    def __init__(self, in_features: int, out_features: int, n_members: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_members, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(n_members, 1, out_features))
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's default init range
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, n_members: int | None = None) -> torch.Tensor:
        # n_members < all: evaluate only the first members (TD3+BC's actor loss uses Q1 only).
        # Slice only then: a slice's backward zero-fills and copies a full-size gradient.
        weight, bias = self.weight, self.bias
        if n_members is not None and n_members < weight.shape[0]:
            weight, bias = weight[:n_members], bias[:n_members]
        # bmm then add, not baddbmm: baddbmm first copies the broadcast bias into its output,
        # while torch.compile fuses this add into the following activation's kernel.
        return torch.bmm(x, weight).add_(bias)


class EnsembleCritic(nn.Module):
    """n_members Q(s, a) MLPs with the same layer sizes, evaluated together.

    One batched matmul per layer replaces n_members separate MLP calls: the same arithmetic
    with a fraction of the per-operation overhead, which dominates at batch 256 on a CPU.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_dims: Sequence[int], n_members: int = 2):
        super().__init__()
        dims = [obs_dim + act_dim, *hidden_dims, 1]
        self.n_members = n_members
        self.layers = nn.ModuleList(
            VectorizedLinear(d_in, d_out, n_members) for d_in, d_out in zip(dims[:-1], dims[1:])
        )

    def forward(self, obs_normalized: torch.Tensor, action: torch.Tensor,
                n_members: int | None = None) -> torch.Tensor:
        """Q values of shape (n_members, batch); n_members limits it to the first members."""
        n = self.n_members if n_members is None else n_members
        x = torch.cat([obs_normalized, action], dim=-1)
        x = x.unsqueeze(0).expand(n, *x.shape)
        for layer in self.layers[:-1]:
            x = layer(x, n).relu_()  # in place: the fresh matmul output is not needed again
        return self.layers[-1](x, n).squeeze(-1)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging target <- (1 - tau) * target + tau * source, one fused call."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


class FusedAdam(torch.optim.Adam):
    """torch.optim.Adam(fused=True) with its per-step Python bookkeeping cut.

    Adam.step() regroups the parameters and their state on each call, at our sizes more time
    than its fused kernel takes. After the first step (which Adam itself takes, creating the
    state) this keeps those lists and calls the same fused kernel on the same state tensors,
    so results and state_dict() are identical to torch.optim.Adam's. That kernel is torch's
    private API (robot_stack/compat.py); where a torch lacks it, every step is Adam's own.
    """

    def __init__(self, params, lr: float):
        super().__init__(params, lr=lr, fused=True)
        self._state_lists: list[tuple] | None = None

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._state_lists = None  # the state tensors were replaced

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._state_lists = None

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("FusedAdam.step takes no closure")
        grads = [[p.grad for p in group["params"]] for group in self.param_groups]
        kernel = compat.torch_fused_adam()
        if kernel is None or self._state_lists is None \
                or any(g is None for gs in grads for g in gs):
            # No private kernel, the first step, or a parameter without a gradient: Adam's own
            # path handles it.
            super().step()
            self._state_lists = self._collect_state_lists()
            return None
        for (group, params, exp_avgs, exp_avg_sqs, steps), group_grads in zip(self._state_lists, grads):
            torch._foreach_add_(steps, 1)
            beta1, beta2 = group["betas"]
            kernel(params, group_grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False,
                   lr=group["lr"], beta1=beta1, beta2=beta2,
                   weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)
        return None

    def _collect_state_lists(self) -> list[tuple] | None:
        """Per group (group, params, exp_avgs, exp_avg_sqs, steps), or None while some parameter
        has no state yet or a group uses an option the fast path leaves to Adam."""
        lists = []
        for group in self.param_groups:
            states = [self.state.get(p) for p in group["params"]]
            if not all(states) or group["amsgrad"] or group["maximize"]:
                return None
            lists.append((group, group["params"], [s["exp_avg"] for s in states],
                          [s["exp_avg_sq"] for s in states], [s["step"] for s in states]))
        return lists


def make_adam(params, lr: float) -> torch.optim.Adam:
    """Adam with one fused kernel for all parameters: same arithmetic, far fewer ops per step."""
    return FusedAdam(params, lr=lr)


class OfflineAgent:
    """What TD3BC and IQL share around their update(): acting and exact checkpoints.

    Subclasses set self.config (a dataclass), self.actor, self.total_steps, and name in
    STATEFUL the attributes (modules, optimisers, schedulers, generators) whose state a
    bit-exact resume needs.
    """

    STATEFUL: tuple[str, ...] = ()
    # Methods computing losses from a batch: pure tensor code that compile_losses() can fuse.
    LOSSES: tuple[str, ...] = ()

    def compile_losses(self) -> None:
        """torch.compile the loss methods (forward and backward), leaving the optimiser steps
        eager. On a CPU this fuses the elementwise work around the matmuls, about 15% more TD3+BC
        updates/s at batch 256 (benchmarks/train_throughput.py), for ~10 s of compiling at the
        first update. Inductor builds C++ kernels on a CPU, so it needs a C++ compiler there."""
        if self.device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            raise ConfigError("compiling the losses on a CPU needs a C++ compiler (g++ or clang++) "
                              "on PATH; install one or train without --compile")
        # The modules' Python attributes never change during training, so their guards (checked
        # on every call, ~50 us) are skipped; the tensor guards on the batch stay.
        options = {"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
        for name in self.LOSSES:
            setattr(self, name, torch.compile(getattr(self, name), options=options))

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic action(s) in [-1, 1] for un-normalised observation(s) (obs_dim,) or
        (B, obs_dim), as numpy."""
        device = next(self.actor.parameters()).device
        obs_t = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=device)
        return self.actor(obs_t).cpu().numpy()

    def state_dict(self) -> dict:
        state = {"config": dataclasses.asdict(self.config), "total_steps": self.total_steps}
        for name in self.STATEFUL:
            obj = getattr(self, name)
            state[name] = obj.get_state() if isinstance(obj, torch.Generator) else obj.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a state_dict() into an agent built with the same hyperparameters."""
        current = dataclasses.asdict(self.config)
        saved = {k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()}
        if saved != current:
            changed = sorted(k for k in current.keys() | saved.keys() if saved.get(k) != current.get(k))
            raise ConfigError(f"checkpoint hyperparameters differ from the agent's in: {', '.join(changed)}")
        for name in self.STATEFUL:
            obj = getattr(self, name)
            if isinstance(obj, torch.Generator):
                obj.set_state(state[name])
            else:
                obj.load_state_dict(state[name])
        self.total_steps = state["total_steps"]
