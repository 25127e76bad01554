"""Generators for synthetic experience: trajectory diffusion (PGD) and the world-model baseline.

Real MuJoCo data (short scripted cheetah-run episodes), real training, dynamics checked against
the simulator. Models are tiny so the whole file stays well under the suite's time budget.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from robot_stack.data import EpisodeStore
from robot_stack.errors import ConfigError, DatasetError
from robot_stack.learn.edm import DiffusionConfig, DiffusionGenerator, fit_diffusion
from robot_stack.learn.generator_bench import RowByRowGuidance, bench_diffusion_train, bench_guided_sampling
from robot_stack.learn.guidance import GuidanceConfig, PolicyGuidance, guidance_weight
from robot_stack.learn.iql import GaussianActor
from robot_stack.learn.nets import ObservationNormalizer
from robot_stack.learn.replay import TransitionBuffer
from robot_stack.learn.synthetic import generate, load_generator, synthetic_transitions
from robot_stack.learn.trajectories import (
    ChannelNormalizer,
    TrajectoryLayout,
    decode_windows,
    encode_rows,
    load_windows,
    window_starts,
    windows_to_transitions,
)
from robot_stack.learn.unet1d import UNet1D, UNet1DConfig
from robot_stack.learn.world_model import WorldModelConfig, fit_world_model, store_transitions
from sim.collect import collect_dataset
from sim.validate import dynamics_error

TASK = "cheetah-run"
SMALL_DIFFUSION = DiffusionConfig(horizon=16, stride=4, unet=UNet1DConfig(base_channels=32, channel_mults=(1, 2)),
                                  train_steps=600, batch_size=64, lr=1e-3, sample_steps=16, seed=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "real"
    collect_dataset(TASK, "scripted", episodes=4, out=path, seed=0, max_steps=200, progress=False)
    return path


@pytest.fixture(scope="module")
def generator_dir(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "diffusion"
    fit_diffusion(dataset, out, SMALL_DIFFUSION)
    return out


def obs_std(dataset) -> np.ndarray:
    return EpisodeStore.open(str(dataset)).stats()["observation"]["std"]


def test_windows_never_cross_episodes():
    ends = np.array([5, 5, 40, 41, 100])  # includes an empty and a 1-step episode
    starts = window_starts(ends, horizon=8, stride=3)
    episode_of = np.searchsorted(ends, np.arange(100), side="right")
    assert len(starts) > 0
    for s in starts:
        assert episode_of[s] == episode_of[s + 7]
    # every in-episode start on the stride grid is present: 35 steps -> 10, 59 steps -> 18
    assert len(starts) == len(range(0, 35 - 8 + 1, 3)) + len(range(0, 59 - 8 + 1, 3))


def test_encode_decode_round_trip(dataset):
    store = EpisodeStore.open(str(dataset))
    data = load_windows(store, horizon=16, stride=4)
    steps = decode_windows(data.windows, data.layout, data.normalizer)
    starts = window_starts(store.episode_ends, 16, 4)
    rows = starts[:, None] + np.arange(16)
    np.testing.assert_allclose(steps["observation"], store.read("observation")[rows], atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(steps["action"], np.clip(store.read("action")[rows], -0.999, 0.999), atol=1e-5)
    np.testing.assert_allclose(steps["reward"], store.read("reward")[rows], atol=1e-5)
    np.testing.assert_array_equal(steps["terminal"], store.read("terminal")[rows])

    transitions = windows_to_transitions(steps)
    assert len(transitions["observations"]) == len(starts) * 15
    np.testing.assert_array_equal(transitions["next_observations"][:15], steps["observation"][0, 1:])


def test_decoding_ends_a_window_at_its_terminal():
    normalizer = ChannelNormalizer(mean=np.zeros(5), std=np.ones(5))
    rows = encode_rows(np.arange(6.0)[:, None], np.zeros((6, 2)), np.ones(6), [0, 0, 1, 0, 0, 0])
    steps = decode_windows(normalizer.normalize(rows)[None], TrajectoryLayout(obs_dim=1, act_dim=2), normalizer)
    transitions = windows_to_transitions(steps)
    # transitions 0, 1 and the terminal one (2); steps after the terminal are dropped
    np.testing.assert_array_equal(transitions["observations"][:, 0], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(transitions["terminals"], [False, False, True])

    # a channel constant in the data (terminals of a task that never ends) decodes to its constant
    never_ends = ChannelNormalizer.fit(encode_rows(np.arange(6.0)[:, None], np.zeros((6, 2)), np.ones(6), [0] * 6))
    noisy = np.full((1, 6, 5), 3.0, dtype=np.float32)
    steps = decode_windows(noisy, TrajectoryLayout(obs_dim=1, act_dim=2), never_ends)
    assert not steps["terminal"].any() and len(windows_to_transitions(steps)["observations"]) == 5


def test_unet_pads_horizons_that_are_not_powers_of_two():
    net = UNet1D(7, UNet1DConfig(base_channels=16, channel_mults=(1, 2, 4)))
    for horizon in (32, 12, 7):
        out = net(torch.randn(3, horizon, 7), torch.zeros(3))
        assert out.shape == (3, horizon, 7)
    with pytest.raises(ConfigError):
        UNet1DConfig(base_channels=12, channel_mults=(1, 2), groups=8).validate()


def test_diffusion_fits_real_trajectories(dataset, generator_dir):
    generator = load_generator(generator_dir)
    assert isinstance(generator, DiffusionGenerator)
    # weighted EDM loss of unit-variance data starts near 1
    assert generator.source["final_loss"] < 0.75

    untrained = DiffusionGenerator(generator.cfg, generator.layout, generator.normalizer,
                                   generator.action_space)
    std = obs_std(dataset)
    errors = {}
    for name, gen in (("trained", generator), ("untrained", untrained)):
        t = windows_to_transitions(gen.sample_decoded(24, seed=1))
        errors[name] = dynamics_error(TASK, t["observations"], t["actions"], t["next_observations"],
                                      t["rewards"], state_std=std)["mean"]
    assert errors["trained"] < 0.5 * errors["untrained"], errors


def target_policy(act_dim: int, dataset) -> GaussianActor:
    """A real Gaussian policy (IQL's actor, random weights) that acts unlike the behaviour."""
    torch.manual_seed(3)
    stats = EpisodeStore.open(str(dataset)).stats()["observation"]
    actor = GaussianActor(ObservationNormalizer(stats["mean"], stats["std"]), act_dim, (64, 64))
    with torch.no_grad():
        actor.log_std.fill_(np.log(0.3))
    return actor


def unit_normalizer(obs_dim: int) -> ObservationNormalizer:
    return ObservationNormalizer(np.zeros(obs_dim), np.ones(obs_dim))


def mean_log_likelihood(policy, transitions) -> float:
    with torch.no_grad():
        return policy.log_prob(torch.as_tensor(transitions["observations"]),
                               torch.as_tensor(transitions["actions"])).mean().item()


def test_guidance_raises_target_policy_likelihood(dataset, generator_dir):
    generator = load_generator(generator_dir)
    policy = target_policy(generator.layout.act_dim, dataset)
    unguided = synthetic_transitions(generator, 16, seed=5)
    zero = synthetic_transitions(generator, 16, policy=policy, guidance=GuidanceConfig(lam=0.0), seed=5)
    np.testing.assert_array_equal(unguided["actions"], zero["actions"])  # lambda 0 is unguided

    guided = synthetic_transitions(generator, 16, policy=policy, guidance=GuidanceConfig(lam=0.05), seed=5)
    at_clean = synthetic_transitions(generator, 16, policy=policy, seed=5,
                                     guidance=GuidanceConfig(lam=0.05, at_clean_estimate=True))
    normalized = synthetic_transitions(generator, 16, policy=policy, seed=5,
                                       guidance=GuidanceConfig(lam=2.0, normalize=True))
    assert len(TransitionBuffer(**guided)) == 16 * (SMALL_DIFFUSION.horizon - 1)  # the agents' buffer
    base = mean_log_likelihood(policy, unguided)
    for name, t in (("guided", guided), ("at_clean", at_clean), ("normalized", normalized)):
        assert mean_log_likelihood(policy, t) > base + 0.5, (name, mean_log_likelihood(policy, t), base)


def test_batched_guidance_equals_the_row_by_row_computation(dataset, generator_dir):
    generator = load_generator(generator_dir)
    policy = target_policy(generator.layout.act_dim, dataset)
    windows = torch.randn(3, generator.cfg.horizon, generator.layout.channels)
    for cfg in (GuidanceConfig(), GuidanceConfig(normalize=True)):
        batched = PolicyGuidance(policy, generator.layout, generator.normalizer, cfg).direction(windows)
        plain = RowByRowGuidance(policy, generator.layout, generator.normalizer, cfg).direction(windows)
        torch.testing.assert_close(batched, plain, rtol=1e-4, atol=1e-5)
        assert batched.abs().sum() > 0


def test_guidance_weight_schedule():
    n = 8
    weights = [guidance_weight(k, n, lam=2.0, c_cos=0.3) for k in range(n)]
    assert weights[-1] == 0.0
    assert weights[0] == pytest.approx(2.0 * (1.0 + 0.3 * np.sin(np.pi / n)))
    assert all(guidance_weight(k, n, lam=0.0, c_cos=0.3) == 0.0 for k in range(n))


def test_generate_writes_a_synthetic_dataset(dataset, generator_dir, tmp_path):
    generator = load_generator(generator_dir)
    policy = target_policy(generator.layout.act_dim, dataset)
    store = generate(generator, policy=policy, guidance=GuidanceConfig(lam=0.05), episodes=3,
                     out=tmp_path / "synthetic", policy_name="iql-random")
    reopened = EpisodeStore.open(str(tmp_path / "synthetic"))
    assert reopened.n_episodes == 3 and reopened.n_steps == 3 * SMALL_DIFFUSION.horizon
    assert list(reopened.episode_meta["source"]) == ["synthetic"] * 3
    attrs = reopened.generator
    assert attrs["kind"] == "diffusion" and attrs["settings"]["guidance"]["lam"] == 0.05
    assert attrs["source_dataset"]["fingerprint"] == generator.source["fingerprint"]
    assert reopened.task == TASK and store.robot == EpisodeStore.open(str(dataset)).robot

    with pytest.raises(DatasetError):  # never overwrite an existing dataset
        generate(generator, episodes=1, out=tmp_path / "synthetic")
    assert EpisodeStore.open(str(tmp_path / "synthetic")).n_episodes == 3


def test_mismatched_shapes_are_clear_errors(dataset, generator_dir, tmp_path):
    generator = load_generator(generator_dir)
    wrong_policy = GaussianActor(unit_normalizer(generator.layout.obs_dim + 1),
                                 generator.layout.act_dim, (8,))
    with pytest.raises(ConfigError, match="obs_dim"):
        PolicyGuidance(wrong_policy, generator.layout, generator.normalizer, GuidanceConfig())
    with pytest.raises(ConfigError, match="needs a policy"):
        synthetic_transitions(generator, 2, guidance=GuidanceConfig(lam=1.0))

    other = tmp_path / "hopper"
    collect_dataset("hopper-hop", "random", episodes=1, out=other, max_steps=20, progress=False)
    with pytest.raises(DatasetError, match="shapes"):
        generate(generator, episodes=1, out=tmp_path / "x", dataset=other)
    with pytest.raises(ConfigError, match="not a generator directory"):
        load_generator(tmp_path)


def test_world_model_beats_mean_prediction_and_rolls_out(dataset, tmp_path):
    cfg = WorldModelConfig(max_epochs=80, patience=10, rollout_horizon=4, seed=0)
    model = fit_world_model(dataset, tmp_path / "wm", cfg)
    model = load_generator(tmp_path / "wm")
    assert len(model.elites) == 5

    held_out = tmp_path / "held_out"
    collect_dataset(TASK, "scripted", episodes=1, out=held_out, seed=100, max_steps=200, progress=False)
    test = store_transitions(EpisodeStore.open(str(held_out)))
    train = store_transitions(EpisodeStore.open(str(dataset)))
    next_obs, reward, _ = model.predict(test["observations"], test["actions"])
    train_delta = train["next_observations"] - train["observations"]
    # errors in units of each dimension's spread of state changes, so no dimension dominates
    model_mse = (((next_obs.mean(axis=0) - test["next_observations"]) / train_delta.std(axis=0)) ** 2).mean()
    mean_mse = (((test["observations"] + train_delta.mean(axis=0) - test["next_observations"])
                 / train_delta.std(axis=0)) ** 2).mean()
    assert model_mse < 0.5 * mean_mse, (model_mse, mean_mse)
    assert ((reward.mean(axis=0) - test["rewards"]) ** 2).mean() < test["rewards"].var()

    policy = target_policy(model.act_dim, dataset)
    act = lambda obs: policy(torch.as_tensor(obs)).detach().numpy()  # noqa: E731
    store = generate(model, policy=act, episodes=4, out=tmp_path / "rollouts", seed=2)
    assert store.n_episodes == 4 and store.n_steps == 4 * (cfg.rollout_horizon + 1)
    assert store.generator["kind"] == "world_model"
    steps = {k: store.read(k).reshape(4, cfg.rollout_horizon + 1, *store.read(k).shape[1:])
             for k in ("observation", "action", "reward", "terminal")}
    t = windows_to_transitions(steps)
    err = dynamics_error(TASK, t["observations"], t["actions"], t["next_observations"], state_std=obs_std(dataset))
    assert err["n_invalid"] == 0 and np.isfinite(err["mean"])

    penalised = model.rollout(act, test["observations"][:8], horizon=3, mopo_lambda=1.0, seed=0)
    plain = model.rollout(act, test["observations"][:8], horizon=3, mopo_lambda=0.0, seed=0)
    np.testing.assert_allclose(plain["reward"] - penalised["reward"], plain["uncertainty"], rtol=1e-5, atol=1e-6)


def test_throughput_benchmarks_time_both_implementations():
    cfg = DiffusionConfig(horizon=8, unet=UNet1DConfig(base_channels=16, channel_mults=(1, 2)),
                          batch_size=4, sample_steps=3, sample_batch=4)
    policy = GaussianActor(unit_normalizer(5), 2, (8,))
    train_rows = bench_diffusion_train(obs_dim=5, act_dim=2, cfg=cfg, steps=2, plain_windows=2)
    sample_rows = bench_guided_sampling(policy, obs_dim=5, act_dim=2, cfg=cfg, plain_windows=1)
    assert [r["name"].endswith("(ours)") for r in train_rows] == [True, False]
    assert [r["name"].endswith("(plain)") for r in sample_rows] == [False, False, True]
    assert all(r.get("steps_per_s", r.get("transitions_per_s")) > 0 for r in train_rows + sample_rows)
