"""Continuity of recorded episodes: is an episode one sequence of samples?

A recorded sample is taken on a sample clock: the source stamp of the stream the recorder
samples on (`data/stamp/<stream>`; for a headerless command topic, the stamp of the state it
answered), or the recorder clock (`data/timestamp`) when it samples on a timer. Consecutive
samples of an episode are contiguous when that clock advances by more than zero and less than
max_step_s: 1.5 control periods on a timer (a longer step is a dropped tick), and for a stamped
stream the larger of that and the stream's stale timeout (a source that stamps with wall time,
such as a lockstep sim waiting for a command, is late by a few periods now and then without
losing anything; a stream silent for longer is stale by the spec's own rule). A step of zero or
less means the samples are not one sequence (a repeated state, or rows of two episodes stitched
together), a longer one that samples are missing (a stall, a burst, a queue overflow). Losses
shorter than that the recorder finds otherwise: from its own drops and the messages' sequence
numbers (robot_stack/recording.py). Training reads each gap as one transition, so the recorder
splits or cuts episodes there and `data check` reports any that remain.
"""

from __future__ import annotations

import numpy as np

from robot_stack.errors import ConfigError
from robot_stack.spec import JOINT_STATE, spec_from_dict

# Late or early samples within half a period still count as the next one; the same bound
# counts a timer's dropped ticks.
GAP_PERIODS = 1.5
REPORTED_GAPS = 3  # gaps named in `data check`'s problem line


def sample_clock(spec, sample_on: str | None) -> str:
    """The dataset key that holds the sample clock of a recording of `spec` sampled on
    `sample_on` (a stream name, or None for a timer)."""
    if sample_on is None:
        return "timestamp"
    stream = spec.streams[sample_on]
    if stream.role != "action" or stream.msg_type == JOINT_STATE:  # stamped at its source
        return f"stamp/{sample_on}"
    # A headerless command answers the newest state: the state's stamp is its clock.
    state = next((s.name for s in spec.streams.values()
                  if s.role == "observation" and s.required), sample_on)
    return f"stamp/{state}"


def max_step_s(spec, clock_key: str) -> float:
    """The longest sample-clock step between contiguous samples (see the module doc)."""
    step = GAP_PERIODS / spec.rate_hz
    stream = clock_key.removeprefix("stamp/")
    return max(step, spec.streams[stream].stale_timeout_s) if stream in spec.streams else step


def contiguous(step_s: float, max_step: float) -> bool:
    """Whether a sample-clock step between two consecutive samples keeps them contiguous."""
    return 0.0 < step_s < max_step


def missing_samples(step_s: float, period_s: float) -> int:
    """Samples missing in a forward step of the sample clock (0 for a backward one)."""
    return max(0, int(round(step_s / period_s)) - 1)


def episode_gaps(clock: np.ndarray, max_step: float) -> np.ndarray:
    """Rows (within one episode) whose sample is not contiguous with the row before."""
    steps = np.diff(np.asarray(clock, dtype=np.float64))
    return np.flatnonzero(~((steps > 0.0) & (steps < max_step))) + 1


def check_store(store, problem) -> None:
    """`data check`: report episodes whose samples are not contiguous by the recording's own
    spec and rate (stored in the dataset's robot description), via problem(text). Datasets
    without stamps (collected in-process, synthetic) have nothing to check; a recording (it has
    stamps) whose spec is gone cannot be checked, which is a problem, not a pass."""
    robot = store.robot
    if not any(k.startswith("stamp/") for k in store.keys):
        return
    if "spec" not in robot:
        problem("cannot check continuity: the dataset has data/stamp/* keys but its robot attribute "
                "holds no recording spec")
        return
    try:
        spec = spec_from_dict(robot["spec"], origin="the dataset's recording spec")
    except ConfigError as e:
        problem(f"cannot check continuity: {e}")
        return
    key = sample_clock(spec, spec.sample_on)
    if key not in store.keys:
        problem(f"cannot check continuity: the sample clock data/{key} is missing")
        return
    max_step = max_step_s(spec, key)
    clock = store.read(key)
    ends = store.episode_ends
    found = []
    for index, (start, end) in enumerate(zip(np.concatenate([[0], ends[:-1]]), ends)):
        rows = episode_gaps(clock[start:end], max_step)
        found += [(index, int(row), float(clock[start + row] - clock[start + row - 1]))
                  for row in rows]
    if found:
        named = ", ".join(f"episode {i} at step {row} ({step:+.3f} s)"
                          for i, row, step in found[:REPORTED_GAPS])
        episodes = len({i for i, _, _ in found})
        problem(f"{len(found)} gap(s) in {episodes} episode(s): data/{key} steps outside "
                f"(0, {max_step:g}) s, so the samples around them are not one transition: "
                f"{named}" + (", ..." if len(found) > REPORTED_GAPS else ""))
