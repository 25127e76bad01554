"""Damaged, incomplete and unwritable datasets: every verb names the problem in one line, never
certifies damage, and repair never turns damage into data.

Damage is real: chunk files deleted or truncated, arrays and attributes rewritten with plain
zarr, a full or read-only tmpfs, writers killed with SIGKILL. Verbs run as `robot-stack`
subprocesses, as a user runs them.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec

from robot_stack.data import EpisodeStore, KeySpec, check, standard_keys
from robot_stack.errors import DatasetError
from sim.collect import collect_dataset

from faults import tmpfs

CLI = [sys.executable, "-m", "robot_stack.cli"]
TASK, EPISODES, STEPS = "cheetah-run", 3, 40


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("robot-stack: error:")
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("integrity") / "cheetah.zarr"
    collect_dataset(TASK, "scripted", EPISODES, path, seed=0, max_steps=STEPS, progress=False, start_time=1e9)
    return path


@pytest.fixture
def dataset(collected, tmp_path) -> Path:
    path = tmp_path / "ds.zarr"
    shutil.copytree(collected, path)
    return path


@pytest.fixture(scope="module")
def trained_run(collected, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run") / "run"
    proc = cli("train", "--dataset", collected, "--out", run_dir, "--steps", "2", "--eval-every", "1000",
               "--eval-episodes", "1", "--quiet")
    assert proc.returncode == 0, proc.stderr
    return run_dir


def replace_array(path: Path, name: str, values: np.ndarray, **options) -> None:
    """Rewrite one array of the dataset with plain zarr (same chunk length along time)."""
    root = zarr.open_group(path, mode="r+")
    chunk_len = root[name].chunks[0]
    del root[name]
    root.create_array(name, shape=values.shape, dtype=values.dtype, chunks=(chunk_len, *values.shape[1:]),
                      **options)[...] = values


# ---- lost and damaged chunks -----------------------------------------------------------------
def test_deleted_chunk_is_named_and_never_repaired_into_zeros(tmp_path):
    path = tmp_path / "ds.zarr"
    keys = {k: KeySpec(s.shape, s.dtype, chunk_steps=16) for k, s in standard_keys(17, 6).items()}
    rng = np.random.default_rng(0)
    with EpisodeStore.create(path, keys, task=TASK, robot={"name": "test"}) as store:
        for i in range(3):
            store.append_episode({"observation": rng.normal(size=(30, 17)).astype(np.float32),
                                  "action": rng.uniform(-1, 1, (30, 6)).astype(np.float32),
                                  "reward": rng.normal(size=30).astype(np.float32),
                                  "terminal": np.zeros(30, bool), "timestamp": np.arange(30.0)}, source="sim")
    (path / "data/observation/c/2/0").unlink()  # rows 32-47, inside episode 1
    before = snapshot(path)

    with pytest.raises(DatasetError, match="data/observation/c/2/0"):
        EpisodeStore.open(path)
    repair = cli("data", "check", path, "--repair")
    assert repair.returncode == 1 and "data/observation/c/2/0" in repair.stdout, repair.stdout
    assert ": OK (" not in repair.stdout and "not repaired" in repair.stdout
    assert snapshot(path) == before
    assert_one_line_error(cli("data", "info", path), "data/observation/c/2/0", "missing")


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_damaged_chunk_is_named_in_one_line_by_every_verb(dataset, trained_run, tmp_path, damage):
    chunk = dataset / "data/observation/c/0/0"
    chunk.write_bytes(b"" if damage == "empty" else chunk.read_bytes()[: chunk.stat().st_size // 2])
    before = snapshot(dataset)
    name = "data/observation/c/0/0"

    assert_one_line_error(cli("data", "info", dataset), name)
    report = cli("data", "check", dataset, "--repair")
    assert report.returncode == 1 and name in report.stdout and "Traceback" not in report.stderr, report.stdout
    assert snapshot(dataset) == before
    assert_one_line_error(cli("train", "--dataset", dataset, "--out", tmp_path / "run", "--steps", "2",
                              "--quiet"), name)
    if damage == "truncated":  # found only when decoded: by the verbs that read the data
        assert_one_line_error(cli("validate", "--data", dataset, "--task", TASK), name)
        assert_one_line_error(cli("export", trained_run, "--out", tmp_path / "p.onnx", "--dataset", dataset),
                              name)
        assert not (tmp_path / "p.onnx").exists()


@pytest.mark.parametrize("chunk", ["data/observation/c/0/0", "meta/episode_task/c/0"])
def test_an_append_to_a_dataset_whose_last_chunk_is_damaged_is_one_line_and_writes_nothing(dataset, chunk):
    # a commit rewrites the chunk holding the last committed rows, so it must decode first
    damaged = dataset / chunk
    damaged.write_bytes(damaged.read_bytes()[:-5])
    before = snapshot(dataset)
    assert_one_line_error(cli("sim", "collect", "--task", TASK, "--episodes", "1", "--max-steps", "5",
                              "--out", dataset, "--quiet"), chunk)
    assert snapshot(dataset) == before


def test_a_flipped_bit_is_caught_by_the_chunk_checksum(dataset):
    chunk = dataset / "data/action/c/0/0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x10  # silent corruption: same size, still a valid-looking file
    chunk.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="data/action/c/0/0 is damaged.*checksum"):
        EpisodeStore.open(dataset).read("action")


def test_dataset_without_checksums_reads_as_before_and_names_a_truncated_chunk(dataset):
    observation = EpisodeStore.open(dataset).read("observation")
    # as written before chunks carried a crc32c: zarr's default codecs
    replace_array(dataset, "data/observation", observation, compressors=[ZstdCodec(level=0)])
    assert check(dataset).ok
    np.testing.assert_array_equal(EpisodeStore.open(dataset).read("observation"), observation)

    chunk = dataset / "data/observation/c/0/0"
    chunk.write_bytes(chunk.read_bytes()[:-20])
    assert_one_line_error(cli("data", "info", dataset), "data/observation/c/0/0")


# ---- structure -------------------------------------------------------------------------------
def test_episode_ends_with_a_hole_is_reported_and_nothing_is_trimmed(dataset):
    zarr.open_array(dataset / "meta/episode_ends", mode="r+")[1] = -1  # [40, -1, 120]
    before = snapshot(dataset)
    report = cli("data", "check", dataset, "--repair")
    assert report.returncode == 1 and "committed-looking" in report.stdout, report.stdout
    assert snapshot(dataset) == before
    assert_one_line_error(cli("data", "info", dataset), "episode_ends")


def _decreasing_ends(path):
    zarr.open_array(path / "meta/episode_ends", mode="r+")[:] = [40, 30, 120]


def _action_float64(path):
    replace_array(path, "data/action", EpisodeStore.open(path).read("action").astype(np.float64))


def _observation_int32(path):
    replace_array(path, "data/observation", EpisodeStore.open(path).read("observation").astype(np.int32))


def _observation_too_narrow(path):
    replace_array(path, "data/observation", EpisodeStore.open(path).read("observation")[:, :16])


def _schema_and_array_say_action_float64(path):
    _action_float64(path)
    root = zarr.open_group(path, mode="r+")
    schema = root.attrs["schema"]
    schema["action"]["dtype"] = "float64"
    root.attrs["schema"] = schema


def _stats_a_string(path):
    zarr.open_group(path, mode="r+").attrs["stats"] = "not statistics"


def _planned_episodes_a_string(path):
    zarr.open_group(path, mode="r+").attrs["planned_episodes"] = "200"


def _control_rate_a_string(path):
    root = zarr.open_group(path, mode="r+")
    root.attrs["robot"] = {**root.attrs["robot"], "control_rate_hz": "100 Hz"}


def _task_attribute_deleted(path):
    del zarr.open_group(path, mode="r+").attrs["task"]


def _meta_chunk_deleted(path):
    (path / "meta/episode_length/c/0").unlink()


def _data_group_metadata_deleted(path):
    (path / "data/zarr.json").unlink()


def _attributes_a_list(path):
    metadata = json.loads((path / "zarr.json").read_text())
    (path / "zarr.json").write_text(json.dumps({**metadata, "attributes": ["not", "a", "dict"]}))


STRUCTURE_DAMAGE = {
    "decreasing episode_ends": (_decreasing_ends, "episode_ends"),
    "action float64": (_action_float64, "data/action"),
    "observation int32": (_observation_int32, "data/observation"),
    "observation too narrow": (_observation_too_narrow, "data/observation"),
    "schema says action float64": (_schema_and_array_say_action_float64, "action"),
    "stats a string": (_stats_a_string, "stats"),
    "task attribute deleted": (_task_attribute_deleted, "task"),
    "planned_episodes a string": (_planned_episodes_a_string, "planned_episodes"),
    "robot control rate a string": (_control_rate_a_string, "control_rate_hz"),
    "meta chunk deleted": (_meta_chunk_deleted, "meta/episode_length/c/0"),
    "data group zarr.json deleted": (_data_group_metadata_deleted, "group data"),
    "attributes a list": (_attributes_a_list, "not a readable dataset"),
}


@pytest.mark.parametrize("damage", STRUCTURE_DAMAGE)
def test_structural_damage_is_refused_by_every_reader_in_one_line(dataset, tmp_path, damage):
    edit, words = STRUCTURE_DAMAGE[damage]
    edit(dataset)
    with pytest.raises(DatasetError, match=words):
        EpisodeStore.open(dataset)
    with pytest.raises(DatasetError, match=words):
        EpisodeStore.open(dataset, mode="a")
    assert_one_line_error(cli("train", "--dataset", dataset, "--out", tmp_path / "run", "--steps", "2",
                              "--quiet"), words)
    report = cli("data", "check", dataset)
    assert report.returncode in (1, 2) and words in report.stdout + report.stderr
    assert "Traceback" not in report.stderr


def test_repair_rebuilds_a_malformed_stats_attribute_from_the_data(dataset, collected):
    _stats_a_string(dataset)
    assert cli("data", "check", dataset, "--repair").returncode == 0
    repaired, original = EpisodeStore.open(dataset).stats(), EpisodeStore.open(collected).stats()
    for key, stats in original.items():
        for name, value in stats.items():
            np.testing.assert_allclose(repaired[key][name], value, rtol=1e-12)


# ---- read-only and full file systems --------------------------------------------------------
def test_read_only_dataset_is_read_and_refuses_writes_in_one_line(collected, trained_run, tmp_path):
    with tmpfs(tmp_path / "ro", "16m") as mount:
        path = mount / "ds.zarr"
        shutil.copytree(collected, path)
        with EpisodeStore.open(path, mode="a") as store:  # a crash leftover, for --repair to trim
            writer = store.begin_episode("sim")
            writer.add_steps({k: v[:5] for k, v in store.episode(0).items()})
            writer.flush()
        before = snapshot(path)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)

        assert cli("data", "info", path).returncode == 0
        assert_one_line_error(cli("data", "check", path, "--repair"), "Read-only file system")
        assert_one_line_error(cli("sim", "collect", "--task", TASK, "--episodes", "1", "--max-steps", "5",
                                  "--out", path, "--quiet"), "Read-only file system")
        assert_one_line_error(cli("sim", "collect", "--task", TASK, "--episodes", "1", "--max-steps", "5",
                                  "--out", mount / "new.zarr", "--quiet"), "Read-only file system")
        assert_one_line_error(cli("train", "--dataset", path, "--out", mount / "run", "--steps", "2", "--quiet"),
                              "Read-only file system", str(mount / "run"))
        assert_one_line_error(cli("export", trained_run, "--out", mount / "p.onnx", "--dataset", path),
                              "Read-only file system")
        assert snapshot(path) == before


def test_disk_full_during_collect_is_one_line_and_keeps_every_committed_episode(tmp_path):
    with tmpfs(tmp_path / "small", "160k") as mount:
        path = mount / "ds.zarr"
        proc = cli("sim", "collect", "--task", TASK, "--episodes", "60", "--max-steps", "100", "--seed", "5",
                   "--out", path, "--quiet")
        assert_one_line_error(proc, "No space left on device")
        store = EpisodeStore.open(path)
        n = store.n_episodes
        assert 0 < n < 60 and store.incomplete
        collect_dataset(TASK, "scripted", n, tmp_path / "reference.zarr", seed=5, max_steps=100, progress=False)
        reference = EpisodeStore.open(tmp_path / "reference.zarr")
        for i in range(n):
            got, expected = store.episode(i), reference.episode(i)
            for key in ("observation", "action", "reward", "terminal"):
                np.testing.assert_array_equal(got[key], expected[key])


def test_a_full_disk_at_any_write_of_a_commit_reports_the_commit_as_it_is_on_disk(tmp_path):
    # The disk fills up at a different write of the commit for each size (data chunks, shapes,
    # meta, episode_ends, stats): an episode reported failed must not be on disk, and one
    # reported committed must be.
    rng = np.random.default_rng(0)
    episode = {"observation": rng.normal(size=(300, 17)).astype(np.float32),
               "action": rng.uniform(-1, 1, (300, 6)).astype(np.float32),
               "reward": rng.normal(size=300).astype(np.float32), "terminal": np.zeros(300, bool),
               "timestamp": np.arange(300.0)}
    for size_kib in range(96, 160, 4):
        with tmpfs(tmp_path / f"disk{size_kib}", f"{size_kib}k") as mount:
            reported = 0
            with EpisodeStore.create(mount / "ds.zarr", standard_keys(17, 6), task=TASK,
                                     robot={"name": "test"}) as store:
                with contextlib.suppress(DatasetError):
                    while True:
                        store.append_episode(episode, source="sim")
                        reported += 1
            assert EpisodeStore.open(mount / "ds.zarr").n_episodes == reported, f"{size_kib} KiB"


# ---- collect appends -------------------------------------------------------------------------
def test_collect_appends_to_a_matching_dataset_and_refuses_another_task(tmp_path):
    path, whole = tmp_path / "ds.zarr", tmp_path / "whole.zarr"
    collect_dataset(TASK, "scripted", 2, path, seed=7, max_steps=20, progress=False)
    appended = cli("sim", "collect", "--task", TASK, "--episodes", "2", "--max-steps", "20", "--seed", "7",
                   "--out", path, "--quiet")
    assert appended.returncode == 0, appended.stderr
    collect_dataset(TASK, "scripted", 4, whole, seed=7, max_steps=20, progress=False)
    store, expected = EpisodeStore.open(path), EpisodeStore.open(whole)
    assert store.n_episodes == 4 and store.planned_episodes == 4 and check(path).ok
    for key in ("observation", "action", "reward"):
        np.testing.assert_array_equal(store.read(key), expected.read(key))

    before = snapshot(path)
    assert_one_line_error(cli("sim", "collect", "--task", "walker-walk", "--episodes", "1", "--out", path,
                              "--quiet"), "cheetah-run")
    assert snapshot(path) == before


# ---- writers killed before they finished ----------------------------------------------------
GENERATE = textwrap.dedent("""
    import sys, numpy as np
    from robot_stack.action_space import ActionSpace
    from robot_stack.learn.synthetic import write_synthetic_dataset
    rng = np.random.default_rng(0)
    n, length = 200, 400
    steps = {"observation": rng.normal(size=(n, length, 17)).astype(np.float32),
             "action": rng.uniform(-1, 1, (n, length, 6)).astype(np.float32),
             "reward": rng.normal(size=(n, length)).astype(np.float32),
             "terminal": np.zeros((n, length), bool)}
    write_synthetic_dataset(sys.argv[1], steps, task="cheetah-run", robot={"control_rate_hz": 100.0},
                            generator_attrs={"kind": "test"}, action_space=ActionSpace([-1.0] * 6, [1.0] * 6))
""")


@pytest.mark.parametrize("writer", ["sim collect", "generate"])
def test_a_writer_killed_early_leaves_a_dataset_that_says_it_is_incomplete(tmp_path, writer):
    path = tmp_path / "ds.zarr"
    command = (CLI + ["sim", "collect", "--task", TASK, "--episodes", "200", "--max-steps", "200",
                      "--out", str(path), "--quiet"] if writer == "sim collect"
               else [sys.executable, "-c", GENERATE, str(path)])
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(DatasetError):
                if EpisodeStore.open(path).n_episodes >= 2:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, f"the writer ended before it was killed: {proc.stderr.read()}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    committed = EpisodeStore.open(path).n_episodes
    assert 2 <= committed < 200

    report = cli("data", "check", path)
    assert report.returncode == 1 and f"incomplete: {committed} of 200 planned episodes" in report.stdout
    info = cli("data", "info", path)
    assert info.returncode == 0 and f"incomplete: {committed} of 200" in info.stdout


def test_resume_of_a_run_killed_before_its_first_checkpoint_is_one_line(collected, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(CLI + ["train", "--dataset", str(collected), "--out", str(run_dir), "--steps",
                                   "1000000", "--checkpoint-every", "1000000", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "config.json").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (run_dir / "config.json").exists() and not (run_dir / "checkpoint.pt").exists()
    assert_one_line_error(cli("train", "--resume", run_dir), "no checkpoint", str(run_dir))


def test_a_truncated_run_or_generator_file_is_one_line(collected, trained_run, tmp_path):
    run_dir, generator = tmp_path / "run", tmp_path / "generator"
    shutil.copytree(trained_run, run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    proc = cli("train-generator", "--kind", "diffusion", "--dataset", collected, "--out", generator,
               "--steps", "2", "--horizon", "8")
    assert proc.returncode == 0, proc.stderr
    for saved in (run_dir / "checkpoint.pt", generator / "weights.pt"):
        saved.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])  # as a kill mid-copy leaves it

    assert_one_line_error(cli("train", "--resume", run_dir), "checkpoint.pt", "truncated")
    assert_one_line_error(cli("export", run_dir, "--out", tmp_path / "p.onnx"), "checkpoint.pt", "truncated")
    assert_one_line_error(cli("generate", "--generator", generator, "--episodes", "2", "--out",
                              tmp_path / "synthetic.zarr"), "weights.pt", "truncated")
    (run_dir / "config.json").write_text(json.dumps(config)[:40])
    assert_one_line_error(cli("train", "--resume", run_dir), "config.json", "not a run configuration")


def test_resume_continues_the_run_it_names_not_the_one_a_copy_was_made_from(trained_run, tmp_path):
    copy = tmp_path / "copied-run"
    shutil.copytree(trained_run, copy)
    original = snapshot(trained_run)
    proc = cli("train", "--resume", copy, "--steps", "3", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert snapshot(trained_run) == original
    assert json.loads((copy / "result.json").read_text())["steps"] == 3
