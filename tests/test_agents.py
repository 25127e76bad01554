"""Offline agents (TD3+BC, IQL) and their transition data, on real MuJoCo cheetah-run data.

The dataset: 20 episodes of 200 steps of the scripted (CPG) behaviour policy with action noise
0.3, collected into a real episode store. Agents are evaluated by their return over 200 steps
of the real simulator against the random policy's.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from robot_stack.data import EpisodeStore, standard_keys
from robot_stack.errors import ConfigError, DatasetError
from robot_stack.learn.iql import IQL, IQLConfig, expectile_loss
from robot_stack.learn.nets import FusedAdam
from robot_stack.learn.replay import ReplaySampler, TransitionBuffer
from robot_stack.learn.td3bc import TD3BC, TD3BCConfig
from sim import make_task
from sim.collect import collect_dataset
from sim.policies import make_policy, rollout_return

TASK = "cheetah-run"
EPISODES, HORIZON = 20, 200
EVAL_SEEDS = (1000, 1001)
# Smaller than the reference 256x2 to keep the learning tests fast; the resume and log_prob
# tests use the reference size.
SMALL = (128, 128)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("agents") / "cheetah.zarr"
    collect_dataset(TASK, "scripted", EPISODES, path, seed=0, noise=0.3, max_steps=HORIZON,
                    progress=False)
    store = EpisodeStore.open(path, mode="r")
    yield store
    store.close()


@pytest.fixture(scope="module")
def buffer(dataset):
    return TransitionBuffer.from_store(dataset)


def make_agent(agent_cls, dataset, seed=0, **config):
    config_cls = TD3BCConfig if agent_cls is TD3BC else IQLConfig
    stats = dataset.stats()["observation"]
    return agent_cls(len(dataset.stats()["action"]["mean"]), stats["mean"], stats["std"],
                     config=config_cls(**config), seed=seed)


class AgentPolicy:
    """The agent's deterministic action, with the sim.policies interface."""

    def __init__(self, agent):
        self.agent = agent

    def reset(self):
        pass

    def act(self, obs):
        return self.agent.act(obs)


def mean_return(task, policy) -> float:
    return float(np.mean([rollout_return(task, policy, seed=s, max_steps=HORIZON) for s in EVAL_SEEDS]))


def train(agent, buffer, steps, seed=0):
    sampler = ReplaySampler(buffer, seed=seed)
    for _ in range(steps):
        log = agent.update(sampler.sample(256))
    return {k: v.item() for k, v in log.items()}


# --- transition data --------------------------------------------------------------------------

def test_transitions_pair_each_step_with_its_successor_within_episodes(dataset, buffer):
    assert len(buffer) == dataset.n_steps - dataset.n_episodes  # no terminals in cheetah-run
    batch = buffer.all()
    row = 0
    for i in range(dataset.n_episodes):
        ep = dataset.episode(i)
        n = len(ep["action"]) - 1
        np.testing.assert_array_equal(batch.observations[row:row + n].numpy(), ep["observation"][:-1])
        np.testing.assert_array_equal(batch.next_observations[row:row + n].numpy(), ep["observation"][1:])
        np.testing.assert_array_equal(batch.actions[row:row + n].numpy(), ep["action"][:-1])
        np.testing.assert_array_equal(batch.rewards[row:row + n].numpy(), ep["reward"][:-1])
        row += n
    np.testing.assert_allclose(buffer.episode_returns[0], dataset.episode(0)["reward"][:-1].sum(),
                               rtol=1e-5)


ONE_ACTUATOR = {"name": "slider", "action_low": [-1.0], "action_high": [1.0]}


def write_store(path, episodes):
    keys = standard_keys(obs_dim=2, act_dim=1)
    store = EpisodeStore.create(path, keys, task="slider", robot=ONE_ACTUATOR)
    for ep in episodes:
        store.append_episode(ep, source="teleop")
    return store


def episode(length, start, terminal_last=False):
    obs = np.stack([np.arange(start, start + length), np.zeros(length)], 1).astype(np.float32)
    terminal = np.zeros(length, dtype=bool)
    terminal[-1] = terminal_last
    return {"observation": obs, "action": np.full((length, 1), 0.5, np.float32),
            "reward": np.ones(length, np.float32), "terminal": terminal,
            "timestamp": np.arange(length, dtype=np.float64)}


def test_terminal_final_steps_are_kept_and_reward_fn_replaces_rewards(tmp_path):
    store = write_store(tmp_path / "t.zarr", [episode(3, 0, terminal_last=True), episode(4, 100)])
    stored = TransitionBuffer.from_store(store).all()
    np.testing.assert_array_equal(stored.rewards.numpy(), [1, 1, 1, 1, 1, 1])

    def reward_fn(obs, act, next_obs):  # progress along x, as a teleop reward would be
        return next_obs[:, 0] - obs[:, 0], None

    batch = TransitionBuffer.from_store(store, reward=reward_fn).all()
    # Episode 1: 3 steps, the last terminal and kept; episode 2: 4 steps, the last dropped.
    np.testing.assert_array_equal(batch.observations[:, 0].numpy(), [0, 1, 2, 100, 101, 102])
    np.testing.assert_array_equal(batch.next_observations[:, 0].numpy(), [1, 2, 2, 101, 102, 103])
    np.testing.assert_array_equal(batch.terminals.numpy(), [0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(batch.rewards.numpy(), [1, 1, 0, 1, 1, 1])
    store.close()


def test_datasets_without_transitions_raise_dataset_error(tmp_path):
    empty = write_store(tmp_path / "empty.zarr", [])
    with pytest.raises(DatasetError, match="no committed episodes"):
        TransitionBuffer.from_store(empty)
    single_steps = write_store(tmp_path / "single.zarr", [episode(1, 0), episode(1, 5)])
    with pytest.raises(DatasetError, match="single step"):
        TransitionBuffer.from_store(single_steps)
    keys = standard_keys(obs_dim=2, act_dim=1)
    keys["observation/joints"] = keys.pop("observation")  # a layout the agents do not read
    no_obs = EpisodeStore.create(tmp_path / "no_obs.zarr", keys, task="slider", robot=ONE_ACTUATOR)
    with pytest.raises(DatasetError, match="'observation'"):
        TransitionBuffer.from_store(no_obs)
    with pytest.raises(DatasetError, match="rewards contain NaN"):
        TransitionBuffer(np.zeros((2, 2)), np.zeros((2, 1)), [0.0, np.nan], np.zeros((2, 2)), [0, 0])


def test_sampler_mixes_synthetic_rows_and_resumes_its_stream(buffer):
    n = 1000
    synthetic = TransitionBuffer(np.zeros((n, buffer.obs_dim)), np.zeros((n, buffer.act_dim)),
                                 np.full(n, -7.0), np.zeros((n, buffer.obs_dim)), np.zeros(n))
    sampler = ReplaySampler(buffer, seed=3)
    batch = sampler.sample(256, synthetic=synthetic, synthetic_fraction=240 / 256)
    assert (batch.rewards == -7.0).sum().item() == 240  # real cheetah rewards are in [0, 1]
    state = sampler.state_dict()
    expected = [sampler.sample(256).observations for _ in range(3)]
    resumed = ReplaySampler(buffer, seed=99)
    resumed.load_state_dict(state)
    for want in expected:
        assert torch.equal(resumed.sample(256).observations, want)
    with pytest.raises(ConfigError, match="synthetic"):
        sampler.sample(256, synthetic=None, synthetic_fraction=0.5)


# --- exact resume -----------------------------------------------------------------------------

def full_state(agent, sampler) -> dict:
    return {"agent": agent.state_dict(), "sampler": sampler.state_dict()}


def assert_same_state(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_state(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}/{i}")
    else:
        assert a == b, where


@pytest.mark.parametrize("agent_cls", [TD3BC, IQL])
def test_resume_from_checkpoint_is_bit_exact(agent_cls, dataset, buffer, tmp_path):
    steps = 30  # odd halves: the resumed TD3+BC starts between two actor updates

    straight = make_agent(agent_cls, dataset, seed=1)
    straight_sampler = ReplaySampler(buffer, seed=5)
    for _ in range(steps):
        straight.update(straight_sampler.sample(256))

    first = make_agent(agent_cls, dataset, seed=1)
    first_sampler = ReplaySampler(buffer, seed=5)
    for _ in range(steps // 2):
        first.update(first_sampler.sample(256))
    torch.save(full_state(first, first_sampler), tmp_path / "ckpt.pt")
    del first, first_sampler

    # Fresh objects built from other seeds: everything must come from the checkpoint.
    resumed = make_agent(agent_cls, dataset, seed=2)
    resumed_sampler = ReplaySampler(buffer, seed=6)
    checkpoint = torch.load(tmp_path / "ckpt.pt")
    resumed.load_state_dict(checkpoint["agent"])
    resumed_sampler.load_state_dict(checkpoint["sampler"])
    for _ in range(steps - steps // 2):
        resumed.update(resumed_sampler.sample(256))

    assert resumed.total_steps == steps
    assert_same_state(full_state(resumed, resumed_sampler), full_state(straight, straight_sampler))


def test_fused_adam_matches_torch_adam_and_survives_a_state_reload():
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
            for _ in range(3)]
    nets[1].load_state_dict(nets[0].state_dict())
    nets[2].load_state_dict(nets[0].state_dict())

    def groups(net):  # two groups with their own rates and weight decay, one scheduled
        params = list(net.parameters())
        return [{"params": params[:2]}, {"params": params[2:], "lr": 1e-2, "weight_decay": 0.1}]

    reference = torch.optim.Adam(groups(nets[0]), lr=3e-3, fused=True)
    fused = FusedAdam(groups(nets[1]), lr=3e-3)
    reloaded = FusedAdam(groups(nets[2]), lr=3e-3)
    optimisers = [reference, fused, reloaded]
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, [lambda s: 1.0, lambda s: 0.9 ** s])
                  for o in optimisers]
    for step in range(12):
        x = torch.randn(32, 5)
        for net, optimiser, scheduler in zip(nets, optimisers, schedulers):
            optimiser.zero_grad(set_to_none=True)
            net(x).square().mean().backward()
            optimiser.step()
            scheduler.step()
        if step == 5:  # new state tensors: the cached ones must not be used afterwards
            reloaded.load_state_dict(copy.deepcopy(reloaded.state_dict()))
    for net in nets[1:]:
        assert_same_state(net.state_dict(), nets[0].state_dict())
    assert_same_state(fused.state_dict(), reference.state_dict())
    assert_same_state(reloaded.state_dict(), reference.state_dict())


@pytest.mark.parametrize("agent_cls", [TD3BC, IQL])
def test_compiled_losses_train_like_the_eager_ones(agent_cls, dataset, buffer):
    eager, compiled = make_agent(agent_cls, dataset, seed=3), make_agent(agent_cls, dataset, seed=3)
    compiled.compile_losses()
    eager_log, compiled_log = train(eager, buffer, 10), train(compiled, buffer, 10)
    # Fused kernels sum in another order: equal up to float32 rounding, not bit for bit.
    for key in eager_log:
        assert compiled_log[key] == pytest.approx(eager_log[key], rel=1e-4, abs=1e-5)
    for (name, p), q in zip(eager.actor.named_parameters(), compiled.actor.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=name)


def test_compiling_without_a_cxx_compiler_names_the_fix(dataset, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no g++, c++ or clang++
    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
        make_agent(TD3BC, dataset).compile_losses()


def test_checkpoint_with_other_hyperparameters_is_refused(dataset):
    state = make_agent(TD3BC, dataset, alpha=2.5).state_dict()
    with pytest.raises(ConfigError, match="alpha"):
        make_agent(TD3BC, dataset, alpha=1.0).load_state_dict(state)


@pytest.mark.parametrize("agent_cls", [TD3BC, IQL])
def test_actor_carries_the_dataset_normalisation(agent_cls, dataset, buffer):
    agent = make_agent(agent_cls, dataset)
    stats = dataset.stats()["observation"]
    actor_state = agent.actor.state_dict()  # what a saved or exported actor takes along
    np.testing.assert_allclose(actor_state["normalizer.mean"].numpy(), stats["mean"], rtol=1e-6)
    np.testing.assert_allclose(actor_state["normalizer.std"].numpy(), stats["std"] + 1e-3, rtol=1e-6)
    obs = buffer.all().observations[:32]
    by_hand = (obs - torch.as_tensor(stats["mean"])) / (torch.as_tensor(stats["std"]) + 1e-3)
    with torch.no_grad():
        torch.testing.assert_close(agent.actor(obs), agent.actor.forward_normalized(by_hand.float()))
    np.testing.assert_allclose(agent.act(obs.numpy()), agent.actor(obs).detach().numpy())


# --- log_prob for policy guidance -------------------------------------------------------------

def test_td3bc_log_prob_is_a_unit_gaussian_peaking_at_the_actor_action(dataset, buffer):
    agent = make_agent(TD3BC, dataset)
    obs = buffer.all().observations[:64]
    with torch.no_grad():
        pi = agent.actor(obs)
    peak = agent.actor.log_prob(obs, pi)
    assert peak.shape == (64,)
    torch.testing.assert_close(peak, torch.full((64,), -0.5 * 6 * math.log(2 * math.pi)))
    action = (pi + 0.3 * torch.randn(pi.shape, generator=torch.Generator().manual_seed(0)))
    action = action.clamp(-1, 1).requires_grad_(True)
    log_prob = agent.actor.log_prob(obs, action)
    assert (log_prob < peak).all()
    log_prob.sum().backward()
    torch.testing.assert_close(action.grad, pi - action.detach())  # gradient points to pi(s)


def test_iql_log_prob_is_the_gaussian_actor_density(dataset, buffer):
    agent = make_agent(IQL, dataset)
    with torch.no_grad():
        agent.actor.log_std.copy_(torch.linspace(-1.0, 0.5, 6))
    batch = buffer.all()
    obs, action = batch.observations[:64], batch.actions[:64].clone().requires_grad_(True)
    log_prob = agent.actor.log_prob(obs, action)
    assert log_prob.shape == (64,)
    reference = torch.distributions.Normal(agent.actor(obs), agent.actor.log_std.exp())
    torch.testing.assert_close(log_prob, reference.log_prob(action).sum(-1))
    log_prob.sum().backward()
    assert action.grad.shape == action.shape and action.grad.abs().sum() > 0


# --- learning on real data --------------------------------------------------------------------

@pytest.fixture(scope="module")
def random_return():
    task = make_task(TASK)
    return mean_return(task, make_policy("random", task, seed=0))


def test_td3bc_beats_the_random_policy_on_cheetah_run(dataset, buffer, random_return):
    agent = make_agent(TD3BC, dataset, hidden_dims=SMALL)
    log = train(agent, buffer, steps=1000)
    assert all(math.isfinite(v) for v in log.values())
    data_return = float(np.mean(buffer.episode_returns))
    learned = mean_return(make_task(TASK), AgentPolicy(agent))
    # The random policy barely moves (return ~1 of 200); behaviour data averages ~35.
    assert learned > random_return + 0.5 * (data_return - random_return), (learned, random_return)


def test_expectile_loss_minimiser_is_the_upper_expectile():
    # Fit a constant v to samples by gradient descent on the loss IQL's value function uses.
    x = torch.randn(4000, generator=torch.Generator().manual_seed(0)).exp()  # skewed samples
    v = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.SGD([v], lr=0.5)
    for _ in range(300):
        optimizer.zero_grad()
        expectile_loss(x - v, 0.7).backward()
        optimizer.step()
    u = x - v.detach()
    # First-order condition of the 0.7-expectile: 0.7 E[u+] = 0.3 E[u-]; it lies above the mean.
    torch.testing.assert_close(0.7 * u.clamp(min=0).mean(), 0.3 * (-u).clamp(min=0).mean(),
                               rtol=1e-3, atol=1e-4)
    assert v > x.mean()


def test_iql_trains_and_imitates_the_better_actions(dataset, buffer, random_return):
    agent = make_agent(IQL, dataset, hidden_dims=SMALL, max_steps=1000)
    batch = buffer.all()
    with torch.no_grad():
        log_prob_before = agent.actor.log_prob(batch.observations, batch.actions).mean()
    log = train(agent, buffer, steps=1000)
    assert all(math.isfinite(v) for v in log.values())
    with torch.no_grad():
        log_prob_after = agent.actor.log_prob(batch.observations, batch.actions).mean()
    assert log_prob_after > log_prob_before + 1.0
    learned = mean_return(make_task(TASK), AgentPolicy(agent))
    data_return = float(np.mean(buffer.episode_returns))
    assert learned > random_return + 0.5 * (data_return - random_return), (learned, random_return)
