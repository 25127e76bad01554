"""Episode store: round trips, stats, streaming, bad input, locking, plain-zarr readability."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from robot_stack.data import EpisodeStore, KeySpec, check, format_info, info, standard_keys
from robot_stack.data.stats import IMAGE_STATS_STRIDE
from robot_stack.errors import DatasetError

ROBOT = {"name": "cheetah", "joint_names": ["a", "b"], "control_rate_hz": 50.0,
         "action_low": np.array([-1.0, -1.0]), "action_high": [1.0, 1.0],
         "observation_layout": [{"name": "qpos", "size": 4, "unit": "rad"}]}


def make_keys(image=True):
    keys = standard_keys(obs_dim=4, act_dim=2)
    if image:
        keys["camera/rgb"] = KeySpec((12, 16, 3), "uint8")
    keys["observation/joint_pos"] = keys.pop("observation")
    return keys


def make_episode(rng, steps, image=True, t0=1.7e9):
    data = {
        "observation/joint_pos": rng.normal(size=(steps, 4)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(steps, 2)).astype(np.float32),
        "reward": rng.normal(size=steps).astype(np.float32),
        "terminal": np.arange(steps) == steps - 1,
        "timestamp": t0 + 0.02 * np.arange(steps),
    }
    if image:
        data["camera/rgb"] = rng.integers(0, 256, size=(steps, 12, 16, 3), dtype=np.uint8)
    return data


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file of the dataset, to prove a failed call wrote nothing."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def store(tmp_path):
    with EpisodeStore.create(tmp_path / "ds.zarr", make_keys(), task="cheetah-run", robot=ROBOT,
                             generator={"name": "pgd", "guidance": 1.5}) as s:
        yield s


def test_round_trip_images_nested_keys_meta_and_stats(store, tmp_path):
    rng = np.random.default_rng(0)
    episodes = [make_episode(rng, n, t0=1.7e9 + 100 * i) for i, n in enumerate([30, 1, 57])]
    assert store.append_episode(episodes[0], source="teleop", success=True, start_time=5.0) == 0
    writer = store.begin_episode("scripted", start_time=6.0, task="other-task")
    writer.add_step({k: v[0] for k, v in episodes[1].items()})
    assert writer.commit() == 1
    writer = store.begin_episode("synthetic", start_time=7.0)
    writer.add_steps({k: v[:20] for k, v in episodes[2].items()})
    for t in range(20, 57):
        writer.add_step({k: v[t] for k, v in episodes[2].items()})
    assert writer.commit(False) == 2
    store.close()

    with EpisodeStore.open(tmp_path / "ds.zarr") as reader:
        assert (reader.n_episodes, reader.n_steps, reader.uncommitted_steps) == (3, 88, 0)
        np.testing.assert_array_equal(reader.episode_ends, [30, 31, 88])
        assert reader.episode_ends.dtype == np.int64
        for i, expected in enumerate(episodes):
            got = reader.episode(i)
            assert set(got) == set(expected)
            for key in expected:
                assert got[key].dtype == np.dtype(reader.keys[key].dtype)
                np.testing.assert_array_equal(got[key], expected[key])
        np.testing.assert_array_equal(reader.read("action", 30, 31), episodes[1]["action"])
        meta = reader.episode_meta
        np.testing.assert_array_equal(meta["start_time"], [5.0, 6.0, 7.0])
        np.testing.assert_array_equal(meta["length"], [30, 1, 57])
        np.testing.assert_array_equal(meta["success"], [1, -1, 0])
        assert meta["source"].tolist() == ["teleop", "scripted", "synthetic"]
        assert meta["task"].tolist() == ["cheetah-run", "other-task", "cheetah-run"]
        assert reader.task == "cheetah-run" and reader.robot["action_low"] == [-1.0, -1.0]
        assert reader.generator == {"name": "pgd", "guidance": 1.5}

        stats = reader.stats()
        assert reader.stats_fresh()
        for key in ("observation/joint_pos", "action", "reward", "terminal", "timestamp"):
            values = np.concatenate([e[key] for e in episodes]).astype(np.float64)
            for name, fn in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max)):
                np.testing.assert_allclose(stats[key][name], fn(values, axis=0), rtol=1e-7, atol=1e-9)
        pixels = np.concatenate([e["camera/rgb"] for e in episodes])
        pixels = pixels[:, ::IMAGE_STATS_STRIDE, ::IMAGE_STATS_STRIDE].reshape(-1, 3).astype(np.float64)
        np.testing.assert_allclose(stats["camera/rgb"]["mean"], pixels.mean(0), rtol=1e-9)
        np.testing.assert_allclose(stats["camera/rgb"]["std"], pixels.std(0), rtol=1e-9)
    assert check(tmp_path / "ds.zarr").ok


def test_streaming_writes_whole_chunks_before_commit_and_reports_flushed_tail(tmp_path):
    keys = make_keys(image=False)
    keys = {k: KeySpec(s.shape, s.dtype, chunk_steps=8) for k, s in keys.items()}
    path = tmp_path / "ds.zarr"
    store = EpisodeStore.create(path, keys, task="t", robot={})
    store.append_episode(make_episode(np.random.default_rng(1), 5, image=False), source="sim")
    episode = make_episode(np.random.default_rng(2), 40, image=False)
    writer = store.begin_episode("teleop")
    # rows 5..34: the chunks up to row 32 are full and on disk, rows 32..34 wait in memory...
    writer.add_steps({k: v[:30] for k, v in episode.items()})
    assert EpisodeStore.open(path).uncommitted_steps == 27
    writer.flush()  # ...until flushed: then on disk but not committed
    reader = EpisodeStore.open(path)
    assert (reader.n_episodes, reader.n_steps, reader.uncommitted_steps) == (1, 5, 30)
    assert check(path).repairable and not check(path).ok
    writer.add_steps({k: v[30:] for k, v in episode.items()})
    writer.commit()
    reader.refresh()
    assert (reader.n_episodes, reader.n_steps, reader.uncommitted_steps) == (2, 45, 0)
    for key, values in episode.items():
        np.testing.assert_array_equal(reader.episode(1)[key], values)
    np.testing.assert_array_equal(reader.episode(-1)["action"], episode["action"])


def test_crash_leftovers_are_trimmed_and_overwritten(tmp_path):
    path = tmp_path / "ds.zarr"
    rng = np.random.default_rng(3)
    first, abandoned, second = (make_episode(rng, n, image=False) for n in (10, 25, 7))
    store = EpisodeStore.create(path, make_keys(image=False), task="t", robot={})
    store.append_episode(first, source="sim")
    writer = store.begin_episode("sim")
    writer.add_steps(abandoned)
    writer.flush()
    store.close()  # like a crash: the flushed rows stay, uncommitted

    store = EpisodeStore.open(path, "a")
    assert store.uncommitted_steps == 25
    store.append_episode(second, source="sim")  # overwrites the tail
    assert (store.n_steps, store.uncommitted_steps) == (17, 0)
    for key in first:
        np.testing.assert_array_equal(store.episode(1)[key], second[key])
    writer = store.begin_episode("sim")
    writer.add_steps(abandoned)
    writer.flush()
    store.close()
    store = EpisodeStore.open(path, "a")
    assert store.uncommitted_steps == 25
    store.trim_uncommitted()
    assert store.uncommitted_steps == 0 and store.n_steps == 17
    writer = store.begin_episode("sim")
    writer.add_steps(abandoned)
    writer.flush()
    writer.discard()
    assert store.uncommitted_steps == 0 and check(path).ok


def test_plain_zarr_reads_the_dataset_without_robot_stack(store, tmp_path):
    import zarr  # only zarr and numpy below, as in the README snippet

    episodes = [make_episode(np.random.default_rng(i), 5 + i) for i in range(3)]
    for episode in episodes:
        store.append_episode(episode, source="sim")
    root = zarr.open_group(tmp_path / "ds.zarr", mode="r")
    ends = root["meta/episode_ends"][:]
    ends = ends[: np.argmax(ends < 0)] if (ends < 0).any() else ends  # drop an unfinished commit
    i = 2
    start = ends[i - 1] if i else 0
    np.testing.assert_array_equal(root["data/action"][start:ends[i]], episodes[i]["action"])
    np.testing.assert_array_equal(root["data/camera/rgb"][start:ends[i]], episodes[i]["camera/rgb"])
    np.testing.assert_array_equal(root["data/observation/joint_pos"][start:ends[i]],
                                  episodes[i]["observation/joint_pos"])
    assert root["meta/episode_source"][:].tolist() == ["sim"] * 3
    assert root.attrs["stats"]["steps"] == 18 and root.attrs["robot"]["name"] == "cheetah"
    assert root.attrs["schema"]["camera/rgb"] == {"shape": [12, 16, 3], "dtype": "uint8", "chunk_steps": 1}
    assert len(root.attrs["stats"]["keys"]["action"]["mean"]) == 2


def test_fsspec_url_is_readable(store, tmp_path):
    store.append_episode(make_episode(np.random.default_rng(0), 4), source="sim")
    with EpisodeStore.open(f"file://{tmp_path / 'ds.zarr'}") as reader:
        assert reader.n_episodes == 1 and reader.episode(0)["camera/rgb"].shape == (4, 12, 16, 3)
    with pytest.raises(DatasetError, match="local path"):
        EpisodeStore.open(f"file://{tmp_path / 'ds.zarr'}", mode="a")


BAD_STEPS = [
    ({"action": np.zeros(3)}, r"'action' at step 2: shape \(3,\)"),
    ({"action": np.array([np.nan, 0.0])}, r"'action' at step 2: NaN"),
    ({"observation/joint_pos": np.array([0, np.inf, 0, 0])}, r"'observation/joint_pos' at step 2: NaN or inf"),
    ({"observation/joint_pos": np.full(4, 1e39)}, r"too large for float32"),
    ({"terminal": np.int64(1)}, r"'terminal' at step 2: dtype int64 cannot be stored as bool"),
    ({"camera/rgb": np.full((12, 16, 3), 0.5)}, r"'camera/rgb' at step 2: dtype float64"),
    ({"camera/rgb": np.full((12, 16, 3), 300)}, r"'camera/rgb' at step 2: value out of range"),
    ({"timestamp": 0.0}, r"'timestamp' at step 2: time goes backwards"),
    ({"action": "fast"}, r"'action' at step 2"),
]


@pytest.mark.parametrize("change, message", BAD_STEPS)
def test_bad_step_raises_naming_key_and_step_and_writes_nothing(store, tmp_path, change, message):
    rng = np.random.default_rng(0)
    store.append_episode(make_episode(rng, 9), source="sim")
    before = snapshot(tmp_path / "ds.zarr")
    episode = make_episode(rng, 3, t0=2e9)
    writer = store.begin_episode("teleop")
    for t in range(2):
        writer.add_step({k: v[t] for k, v in episode.items()})
    writer.flush()
    flushed = snapshot(tmp_path / "ds.zarr")
    with pytest.raises(DatasetError, match=message):
        writer.add_step({**{k: v[2] for k, v in episode.items()}, **change})
    assert snapshot(tmp_path / "ds.zarr") == flushed and writer.n_steps == 2
    writer.add_step({k: v[2] for k, v in episode.items()})  # the writer is still usable
    writer.discard()
    assert snapshot(tmp_path / "ds.zarr").keys() >= before.keys()
    assert check(tmp_path / "ds.zarr").ok


@pytest.mark.parametrize("change, message", [
    (lambda e: e.pop("reward"), r"missing keys \['reward'\]"),
    (lambda e: e.update(extra=np.zeros(4)), r"unknown keys \['extra'\]"),
    (lambda e: e.update(action=e["action"][:3]), r"different numbers of steps"),
    (lambda e: e["action"].__setitem__((4, 1), np.nan), r"'action' at step 4: NaN"),
    (lambda e: e["timestamp"].__setitem__(5, 0.0), r"'timestamp' at step 5: time goes backwards"),
    (lambda e: e.update(reward=e["reward"][:, None]), r"'reward' at step 0: shape \(6, 1\)"),
])
def test_bad_append_episode_raises_before_writing(store, tmp_path, change, message):
    rng = np.random.default_rng(0)
    store.append_episode(make_episode(rng, 9), source="sim")
    before = snapshot(tmp_path / "ds.zarr")
    episode = make_episode(rng, 6)
    change(episode)
    with pytest.raises(DatasetError, match=message):
        store.append_episode(episode, source="sim")
    assert snapshot(tmp_path / "ds.zarr") == before
    assert store.n_episodes == 1


def test_lossless_and_float_casts_are_accepted(store):
    episode = make_episode(np.random.default_rng(0), 4)
    episode["observation/joint_pos"] = episode["observation/joint_pos"].astype(np.float64)
    episode["action"] = np.ones((4, 2), dtype=np.int32)
    episode["camera/rgb"] = episode["camera/rgb"].astype(np.int64)
    store.append_episode(episode, source="sim")
    got = store.episode(0)
    assert got["action"].dtype == np.float32 and got["camera/rgb"].dtype == np.uint8
    np.testing.assert_array_equal(got["camera/rgb"], episode["camera/rgb"])


def test_bad_metadata_and_empty_episode(store):
    with pytest.raises(DatasetError, match="source 'human'"):
        store.begin_episode("human")
    episode = make_episode(np.random.default_rng(0), 3)
    with pytest.raises(DatasetError, match="success must be"):
        store.append_episode(episode, source="sim", success=2)
    with pytest.raises(DatasetError, match="without steps"):
        store.begin_episode("sim").commit()
    assert store.n_episodes == 0


def test_paths_that_are_not_datasets(tmp_path):
    keys = make_keys()
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("keep me")
    for path in (tmp_path / "file", tmp_path / "full"):
        with pytest.raises(DatasetError, match="not an empty directory"):
            EpisodeStore.create(path, keys, task="t", robot={})
        with pytest.raises(DatasetError, match="not a dataset"):
            EpisodeStore.open(path)
    assert (tmp_path / "full" / "notes.txt").read_text() == "keep me"
    EpisodeStore.create(tmp_path / "ds", keys, task="t", robot={}).close()
    with pytest.raises(DatasetError, match="already holds a dataset"):
        EpisodeStore.create(tmp_path / "ds", keys, task="t", robot={})
    import zarr
    zarr.open_group(tmp_path / "other.zarr", mode="w")
    with pytest.raises(DatasetError, match="not a robot_stack dataset"):
        EpisodeStore.open(tmp_path / "other.zarr")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers


@pytest.mark.parametrize("edit, message", [
    (lambda k: k.pop("timestamp"), "required key 'timestamp'"),
    (lambda k: k.update({"observation/joint_pos/x": KeySpec((1,), "float32")}), "both an array and the group"),
    (lambda k: k.update(terminal=KeySpec((), "int8")), "'terminal' has dtype int8"),
    (lambda k: k.update({"bad key": KeySpec((1,), "float32")}), "'bad key'"),
])
def test_bad_schema(tmp_path, edit, message):
    keys = make_keys()
    edit(keys)
    with pytest.raises(DatasetError, match=message):
        EpisodeStore.create(tmp_path / "ds", keys, task="t", robot={})
    assert not (tmp_path / "ds").exists()


def test_second_writer_is_locked_out_readers_are_not(store, tmp_path):
    with pytest.raises(DatasetError, match="open for writing by another process"):
        EpisodeStore.open(tmp_path / "ds.zarr", "a")
    reader = EpisodeStore.open(tmp_path / "ds.zarr")
    with pytest.raises(DatasetError, match="read-only"):
        reader.begin_episode("sim")
    store.begin_episode("sim")
    with pytest.raises(DatasetError, match="being written"):
        store.begin_episode("sim")
    store.close()
    EpisodeStore.open(tmp_path / "ds.zarr", "a").close()


def test_check_detects_and_repairs_stale_stats_and_info_summarises(store, tmp_path):
    path = tmp_path / "ds.zarr"
    for i, n in enumerate([4, 6]):
        store.append_episode(make_episode(np.random.default_rng(i), n), source=("sim", "teleop")[i])
    store.close()
    import zarr
    root = zarr.open_group(path, mode="r+")
    stats = root.attrs["stats"]
    stats["steps"] = 4  # as if the writer died between episode_ends and the stats update
    stats["keys"]["action"]["mean"] = [9.0, 9.0]
    root.attrs["stats"] = stats
    report = check(path)
    assert not report.ok and any("stale" in p for p in report.problems)
    assert "problem (repairable with --repair): stats cover 4 steps" in report.format()
    with EpisodeStore.open(path) as reader:  # readers catch stale stats up from the data
        assert reader.stats()["action"]["max"].shape == (2,)
    repaired = check(path, repair=True)
    assert repaired.ok and repaired.repaired
    summary = info(path)
    assert summary["episodes"] == 2 and summary["steps"] == 10
    assert summary["sources"] == {"sim": 1, "teleop": 1}
    assert summary["keys"]["camera/rgb"] == {"shape": [12, 16, 3], "dtype": "uint8", "chunk_steps": 1}
    assert summary["size_bytes"] > 0 and summary["stats_fresh"]
    json.dumps(summary)  # the CLI prints it as JSON
    text = format_info(summary)
    assert "2 episodes, 10 steps" in text and "data/camera/rgb: uint8 (12, 16, 3)" in text
    with EpisodeStore.open(path) as reader:
        actions = reader.read("action").astype(np.float64)
        np.testing.assert_allclose(reader.stats()["action"]["mean"], actions.mean(0), rtol=1e-9)


def test_check_reports_nan_written_behind_the_stores_back(store, tmp_path):
    store.append_episode(make_episode(np.random.default_rng(0), 5), source="sim")
    store.close()
    import zarr
    zarr.open_group(tmp_path / "ds.zarr", mode="r+")["data/action"][2, 0] = np.nan
    report = check(tmp_path / "ds.zarr", repair=True)
    assert any("NaN" in p for p in report.problems) and not report.ok
    assert os.path.isdir(tmp_path / "ds.zarr")
