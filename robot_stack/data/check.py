"""Dataset verification (`data check`) and summary (`data info`) for the CLI."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import zarr

from robot_stack.data.continuity import check_store as check_continuity
from robot_stack.data.store import (META_CHUNK, PARTIAL_FILE, SOURCES, EpisodeStore, _block_rows, _is_url,
                                    read_rows)
from robot_stack.errors import DatasetError

STATS_RTOL = 1e-9  # relative to the largest magnitude of a key's values


@dataclass
class CheckReport:
    """Result of `check`: `problems` left in the dataset, `repaired` what repair=True fixed.

    `repairable` problems are crash leftovers and derived data (stats) that repair rebuilds;
    `damage` the ones it cannot fix (lost, damaged or inconsistent committed data): while there
    is any, repair changes nothing. An incomplete dataset (fewer episodes than its writer
    planned) is a problem of neither kind.
    """

    path: str
    episodes: int
    steps: int
    uncommitted_steps: int
    problems: list[str] = field(default_factory=list)
    repairable: list[str] = field(default_factory=list)
    damage: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    repair_refused: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}

    def format(self) -> str:
        """Text for `data check`: a verdict line, then one line per problem and repair."""
        verdict = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        lines = [f"{self.path}: {verdict} ({self.episodes} episodes, {self.steps} steps, "
                 f"{self.uncommitted_steps} uncommitted steps)"]
        lines += [f"  repaired: {text}" for text in self.repaired]
        lines += [f"  problem{' (repairable with --repair)' if text in self.repairable else ''}: {text}"
                  for text in self.problems]
        if self.repair_refused:
            lines.append("  not repaired: nothing was changed, because --repair cannot fix the problems above")
        return "\n".join(lines)


def _partial_files(path) -> list[str]:
    if _is_url(path):
        return []
    return [os.path.join(d, f) for d, _, files in os.walk(path) for f in files if PARTIAL_FILE.search(f)]


def incompleteness(store: EpisodeStore) -> str | None:
    """A line saying the dataset holds fewer episodes than its writer planned, else None."""
    if not store.incomplete:
        return None
    return (f"incomplete: {store.n_episodes} of {store.planned_episodes} planned episodes committed "
            "(its writer stopped early)")


def damaged_chunks(store: EpisodeStore) -> list[str]:
    """One line per block of committed rows (whole chunks) that does not decode, naming its
    first bad chunk. Reads every committed chunk once."""
    damaged = []
    arrays = [(store._data[key], store.n_steps, _block_rows(spec)) for key, spec in store.keys.items()]
    arrays += [(arr, store.n_episodes, META_CHUNK) for arr in [*store._meta.values(), store._ends_array]]
    for arr, rows, block in arrays:
        for lo in range(0, rows, block):
            try:
                read_rows(arr, lo, min(lo + block, rows), store.path)
            except DatasetError as exc:
                damaged.append(str(exc).removeprefix(f"{store.path}: "))
    return damaged


def _inspect(store: EpisodeStore, report: CheckReport) -> None:
    """Fill report.problems: .repairable the ones trim/stats recomputation fixes, .damage those
    it cannot."""
    def problem(text: str, repairable: bool = False):
        report.problems.append(text)
        (report.repairable if repairable else report.damage).append(text)

    for found in store.problems:  # what opening found: structure, chunk listing, stats attribute
        problem(found.text, found.repairable)
    incomplete = incompleteness(store)
    if incomplete:
        report.problems.append(incomplete)
    extra = sorted(set(_array_names(store._root["data"])) - set(store.keys))
    if extra:
        problem(f"arrays under data/ not in the schema: {extra}")
    if report.damage:
        return  # the data cannot be trusted to be where the metadata says
    for text in damaged_chunks(store):
        problem(text)
    if report.damage:
        return
    ends, n_steps = store.episode_ends, store.n_steps
    meta = store.episode_meta
    if not np.array_equal(meta["length"], np.diff(np.concatenate([[0], ends]))):
        problem("meta/episode_length does not match the differences of episode_ends")
    if not np.isin(meta["success"], (-1, 0, 1)).all():
        problem("meta/episode_success has values other than -1, 0, 1")
    if not np.isin(meta["source"], SOURCES).all():
        problem(f"meta/episode_source has values outside {SOURCES}")
    finite = True
    for key, spec in store.keys.items():
        if np.dtype(spec.dtype).kind == "f":
            bad = sum(int((~np.isfinite(rows)).sum()) for rows in store.iter_blocks(key))
            if bad:
                problem(f"data/{key}: {bad} NaN/inf values in committed steps")
                finite = False
    timestamps = store.read("timestamp")
    backwards = np.flatnonzero(np.diff(timestamps) < 0) + 1
    backwards = backwards[~np.isin(backwards, ends)]  # a new episode may restart its clock
    if len(backwards):
        problem(f"data/timestamp goes backwards within an episode at step {int(backwards[0])}")
    check_continuity(store, problem)
    if store._stored_stats is None:
        pass  # the stats attribute is malformed: reported above
    elif not store.stats_fresh():
        problem(f"stats cover {store._stats_steps} steps, dataset has {n_steps} (stale)", True)
    elif finite and n_steps:  # stats of non-finite data are meaningless; NaN is reported above
        stored = store.stats()
        for key, fresh in store.compute_stats().items():
            # float64 rounding of the values themselves (e.g. epoch timestamps) bounds agreement
            tolerance = STATS_RTOL * np.maximum(np.abs(fresh.min), np.abs(fresh.max)) + 1e-9
            if not all((np.abs(stored[key][s] - v) <= tolerance).all() for s, v in fresh.summary().items()):
                problem(f"stats of {key!r} do not match the data", True)
    partial = _partial_files(store.path)
    if partial:
        problem(f"{len(partial)} temporary *.partial files from an interrupted write", True)


def _array_names(group, prefix: str = "") -> list[str]:
    names = []
    for name, node in group.members():
        if isinstance(node, zarr.Array):
            names.append(prefix + name)
        else:
            names.extend(_array_names(node, prefix + name + "/"))
    return names


def check(path, repair: bool = False) -> CheckReport:
    """Verify a dataset's invariants; with repair, trim the uncommitted tail and fix stats.

    Raises DatasetError if path is not a dataset at all. Problems repair cannot fix (missing,
    damaged or inconsistent committed data, NaN, schema mismatches) stay in the returned report's
    `problems`, and while there is one, repair changes nothing at all.
    """
    with EpisodeStore.open(path, "r", raise_problems=False) as store:
        report = CheckReport(str(path), store.n_episodes, store.n_steps, store.uncommitted_steps)
        _inspect(store, report)
    if repair and report.damage:
        report.repair_refused = True
        return report
    if not (repair and report.repairable):
        return report
    with EpisodeStore.open(path, "a", raise_problems=False) as store:
        store.trim_uncommitted()
        store.recompute_stats()
    repaired = check(path)
    repaired.repaired = report.repairable
    return repaired


def info(path) -> dict:
    """Summary of a dataset for `data info`: sizes, keys, sources, task, bytes on disk.

    Raises DatasetError naming the first problem when the dataset cannot be read (see
    EpisodeStore.open) or a committed chunk does not decode (every chunk is read once).
    """
    with EpisodeStore.open(path, "r") as store:
        damaged = damaged_chunks(store)
        if damaged:
            more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
            raise DatasetError(f"{path}: {damaged[0]}{more}; `robot-stack data check` lists them")
        meta = store.episode_meta
        lengths = meta["length"]
        local = not _is_url(path)
        return {
            "path": str(path),
            "episodes": store.n_episodes,
            "steps": store.n_steps,
            "uncommitted_steps": store.uncommitted_steps,
            "task": store.task,
            "robot": store.robot.get("name"),
            "generator": store.generator,
            "keys": {k: {"shape": list(s.shape), "dtype": s.dtype, "chunk_steps": s.chunk_len}
                     for k, s in store.keys.items()},
            "sources": dict(Counter(meta["source"].tolist())),
            "tasks": dict(Counter(meta["task"].tolist())),
            "success": {"success": int((meta["success"] == 1).sum()), "failure": int((meta["success"] == 0).sum()),
                        "unknown": int((meta["success"] == -1).sum())},
            "episode_length": ({"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())}
                               if len(lengths) else None),
            "stats_fresh": store.stats_fresh(),
            "planned_episodes": store.planned_episodes,
            "incomplete": incompleteness(store),
            "size_bytes": (sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if local else None),
        }


def format_info(summary: dict) -> str:
    """Text for `data info` from the dict `info` returns."""
    lines = [f"{summary['path']}: {summary['episodes']} episodes, {summary['steps']} steps, task {summary['task']!r}"
             f", robot {summary['robot']!r}"]
    if summary["incomplete"]:
        lines.append(f"  {summary['incomplete']}")
    if summary["uncommitted_steps"]:
        lines.append(f"  {summary['uncommitted_steps']} uncommitted steps (crash leftovers; `data check --repair`)")
    if summary["episode_length"]:
        lines.append("  episode length: min {min}, mean {mean:.1f}, max {max}".format(**summary["episode_length"]))
    lines.append(f"  sources: {summary['sources']}; success: {summary['success']}")
    for key, spec in summary["keys"].items():
        lines.append(f"  data/{key}: {spec['dtype']} {tuple(spec['shape'])} ({spec['chunk_steps']} steps/chunk)")
    if summary["generator"]:
        lines.append(f"  generator: {summary['generator']}")
    if summary["size_bytes"] is not None:
        lines.append(f"  size on disk: {summary['size_bytes'] / 1e6:.3f} MB")
    lines.append(f"  stats: {'fresh' if summary['stats_fresh'] else 'stale (`data check --repair`)'}")
    return "\n".join(lines)
