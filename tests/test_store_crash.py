"""Crash safety: a writer process is SIGKILLed at many points, including inside commits.

After every kill the dataset must hold exactly the episodes whose commit completed, bit-identical
to what was written (regenerated from the seed), report or trim the uncommitted tail, and accept
appends again.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from robot_stack.data import EpisodeStore, check
from store_crash_writer import episode_data, episode_meta, write_episodes

WRITER = Path(__file__).with_name("store_crash_writer.py")
SEED, N_EPISODES = 3, 4
N_SPREAD_CASES, N_TIMED_CASES = 10, 3
COMMIT_CASES = [(-1, "after"), (0, "before"), (0, "mid"), (0, "after")]  # around an ends write
N_COMMITS_AIMED = 3
N_CASES = N_SPREAD_CASES + len(COMMIT_CASES) * N_COMMITS_AIMED + N_TIMED_CASES


def start_writer(path, kill_at=0, mode="after", n_episodes=N_EPISODES) -> subprocess.Popen:
    env = {**os.environ, "KILL_AT_WRITE": str(kill_at), "KILL_MODE": mode}
    return subprocess.Popen([sys.executable, str(WRITER), str(path), str(SEED), str(n_episodes)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def commits_seen(stdout: str) -> int:
    return sum(line.startswith("ENDS ") for line in stdout.splitlines())


@pytest.fixture(scope="module")
def ends_writes(tmp_path_factory) -> list[int]:
    """Store write numbers of the episode_ends chunk writes of an uninterrupted run."""
    proc = start_writer(tmp_path_factory.mktemp("full") / "ds.zarr")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    ends = [int(line.split()[1]) for line in out.splitlines() if line.startswith("ENDS ")]
    assert len(ends) == N_EPISODES
    return ends


def kill_case(case: int, ends: list[int]) -> tuple[int, str] | None:
    """(write number, mode) for instrumented cases, None for a kill after a random delay."""
    if case < N_SPREAD_CASES:  # spread over create, streaming, append_episode and commits
        write = int(np.linspace(1, ends[-1] + 1, N_SPREAD_CASES).round()[case])
        return write, ("after", "before", "mid")[case % 3]
    case -= N_SPREAD_CASES
    if case < len(COMMIT_CASES) * N_COMMITS_AIMED:
        offset, mode = COMMIT_CASES[case % len(COMMIT_CASES)]
        return ends[case // len(COMMIT_CASES)] + offset, mode
    return None


def assert_committed_intact(path: Path, n_expected: int) -> EpisodeStore | None:
    if n_expected == 0 and not (path / "zarr.json").exists():
        return None  # killed before create finished: no dataset, which is a consistent state
    store = EpisodeStore.open(path, "r")
    assert store.n_episodes == n_expected
    meta = store.episode_meta
    for i in range(store.n_episodes):
        expected = episode_data(SEED, i)
        got = store.episode(i)
        for key, values in expected.items():
            assert got[key].dtype == values.dtype and np.array_equal(got[key], values), (i, key)
        assert meta["length"][i] == len(expected["timestamp"])
        assert meta["source"][i] == episode_meta(i)["source"]
        assert meta["start_time"][i] == episode_meta(i)["start_time"]
        assert meta["success"][i] == {None: -1, True: 1, False: 0}[episode_meta(i)["success"]]
    return store


@pytest.mark.parametrize("case", range(N_CASES))
def test_kill_writer_then_reopen_trim_and_append(case, ends_writes, tmp_path):
    path = tmp_path / "ds.zarr"
    aim = kill_case(case, ends_writes)
    if aim is None:
        proc = start_writer(path)
        time.sleep(np.random.default_rng(case).uniform(0.4, 1.0))
        proc.send_signal(signal.SIGKILL)
    else:
        proc = start_writer(path, *aim)
    out, err = proc.communicate(timeout=120)
    if aim is not None:
        assert proc.returncode == -signal.SIGKILL, err
    committed = commits_seen(out)

    store = assert_committed_intact(path, committed)
    if store is not None:
        uncommitted = store.uncommitted_steps
        store.close()
        if case % 2 == 0:  # trim before appending; odd cases append over the tail directly
            report = check(path, repair=True)
            assert report.ok, report.problems  # crash leftovers only, all repaired
            with EpisodeStore.open(path, "r") as trimmed:
                assert trimmed.uncommitted_steps == 0 and trimmed.uncommitted_episodes_meta == 0
        else:
            report = check(path)
            assert report.problems == report.repairable, report.problems
            assert report.uncommitted_steps == uncommitted
        assert bool(uncommitted) == any("uncommitted rows" in p for p in report.repaired + report.problems)

    write_episodes(path, SEED, N_EPISODES + 1)
    assert_committed_intact(path, N_EPISODES + 1).close()
    report = check(path, repair=True)  # odd cases may still hold *.partial files
    assert report.ok, report.problems


def test_reader_sees_only_committed_episodes_while_writer_appends(tmp_path):
    path = tmp_path / "ds.zarr"
    write_episodes(path, SEED, 1)
    proc = start_writer(path, n_episodes=15)
    long_lived = EpisodeStore.open(path, "r")
    counts = []
    while proc.poll() is None:
        long_lived.refresh()
        for store in (long_lived, EpisodeStore.open(path, "r")):
            n = store.n_episodes
            counts.append(n)
            for i in {0, n // 2, n - 1}:
                expected, got = episode_data(SEED, i), store.episode(i)
                assert all(np.array_equal(got[k], v) for k, v in expected.items()), i
            assert store.read("action").shape[0] == store.n_steps == store.episode_ends[-1]
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert counts == sorted(counts)  # committed episodes never disappear
    assert any(1 < n < 15 for n in counts)  # the reader ran while episodes were being added
    assert_committed_intact(path, 15).close()
