"""Recorder throughput: does the recorder node keep up with a robot's topics, and at what cost?

Run 1 ("camera"): a publisher process sends sensor_msgs/JointState at 1 kHz, 640x480 RGB images
(a moving pattern) at 30 Hz and Float64MultiArray commands at 100 Hz; the recorder records at
50 Hz (timer). Run 2 ("state"): JointState at 1 kHz and commands at 100 Hz, recorded at 1 kHz on
a timer; run 3 ("state_on_message"): the same, one sample per JointState message (sample_on).
In each run a bare subscriber process that only counts messages runs beside the recorder (the
baseline: what receiving the same topics costs in rclpy). Prints samples recorded vs expected,
drops, latencies and CPU use of recorder and baseline.

Run 4 ("faults") is run 3 with faults injected: at 30% of the window the recorder process is
stopped (SIGSTOP) for --stall seconds, then continued (SIGCONT); at 70% the publisher sends
JointState at 10 kHz for --burst seconds. Next to run 3 (the same without faults) it shows what
the recorder made of them: episodes committed (the one recorded episode split at its gaps),
gaps, samples missing at the gaps, samples dropped, and whether `data check` finds every
committed episode contiguous.

    .venv/bin/python benchmarks/recorder_throughput.py             # 60 s per run
    .venv/bin/python benchmarks/recorder_throughput.py --duration 15
    .venv/bin/python benchmarks/recorder_throughput.py --duration 20 --runs state_on_message,faults
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@dataclass
class Config:
    duration_s: float = 60.0  # recording window per run
    joint_rate_hz: float = 1000.0
    image_rate_hz: float = 30.0
    command_rate_hz: float = 100.0
    camera_record_rate_hz: float = 50.0  # run 1
    state_record_rate_hz: float = 1000.0  # run 2
    n_joints: int = 12
    stall_s: float = 5.0  # run 4: SIGSTOP of the recorder
    burst_s: float = 0.5  # run 4: JointState at burst_rate_hz
    burst_rate_hz: float = 10000.0
    height: int = 480
    width: int = 640
    domain_id: int = 57


def robot_spec(cfg: Config, rate_hz: float, images: bool, sample_on: str | None) -> dict:
    joints = [f"joint_{i}" for i in range(cfg.n_joints)]
    spec = {
        "task": "benchmark-robot",
        "robot": {"name": "benchmark-robot"},
        "rate_hz": rate_hz,
        "sample_on": sample_on,
        "observation": [
            {"name": "qpos", "topic": "joint_states", "type": "JointState", "field": "position",
             "joints": joints, "unit": "rad"},
            {"name": "qvel", "topic": "joint_states", "type": "JointState", "field": "velocity",
             "joints": joints, "unit": "rad/s"},
        ],
        "action": {"topic": "commands", "size": cfg.n_joints, "low": -1.0, "high": 1.0},
    }
    if images:
        spec["images"] = [{"name": "rgb", "topic": "camera/image_raw", "height": cfg.height,
                           "width": cfg.width, "encoding": "rgb8"}]
    return spec


# ----- roles run in child processes -----
def run_publisher(cfg: Config, images: bool) -> None:
    """Publishes the three streams on a drift-free schedule until SIGINT/SIGTERM."""
    import rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float64MultiArray

    from ros_nodes import convert

    rclpy.init()
    node = Node("benchmark_publisher")
    joint_pub = node.create_publisher(JointState, "joint_states", 100)
    command_pub = node.create_publisher(Float64MultiArray, "commands", 100)
    image_pub = node.create_publisher(Image, "camera/image_raw", 5)
    names = [f"joint_{i}" for i in range(cfg.n_joints)]
    # A moving pattern (diagonal stripes and a gradient), compressible like camera frames.
    yy, xx = np.mgrid[0:cfg.height, 0:cfg.width]
    base = np.stack([(xx + yy) % 256, (2 * xx) % 256, yy * 255 // cfg.height], -1).astype(np.uint8)
    periods = {"joint": 1.0 / cfg.joint_rate_hz, "command": 1.0 / cfg.command_rate_hz}
    if images:
        periods["image"] = 1.0 / cfg.image_rate_hz
    start = time.monotonic()
    due = {k: start for k in periods}
    sent = {k: 0 for k in periods}
    stop = []
    burst_until = [0.0]  # SIGUSR1: JointState at burst_rate_hz for burst_s
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGUSR1, lambda *_: burst_until.__setitem__(
        0, time.monotonic() + cfg.burst_s))
    while not stop:
        periods["joint"] = 1.0 / (cfg.burst_rate_hz if time.monotonic() < burst_until[0]
                                  else cfg.joint_rate_hz)
        stream = min(due, key=due.get)
        delay = due[stream] - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t = sent[stream]
        stamp = node.get_clock().now().to_msg()
        if stream == "joint":
            phase = 1e-3 * t
            joint_pub.publish(convert.joint_state_msg(
                names, np.sin(phase + np.arange(cfg.n_joints)), np.cos(phase + np.arange(
                    cfg.n_joints)), stamp))
        elif stream == "command":
            command_pub.publish(convert.command_msg(np.sin(0.01 * t + np.arange(cfg.n_joints))))
        else:
            image_pub.publish(convert.image_msg(np.roll(base, 4 * t, axis=1), "rgb8", stamp))
        sent[stream] += 1
        due[stream] += periods[stream]
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - start}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


def run_counter(images: bool) -> None:
    """Baseline: subscribes to the same topics with the same QoS depths, only counts."""
    import rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float64MultiArray, String

    rclpy.init()
    node = Node("benchmark_counter")
    counts = {"joint": 0, "command": 0, "image": 0}

    def counter(key):
        def count(_msg):
            counts[key] += 1
        return count

    node.create_subscription(JointState, "joint_states", counter("joint"), 100)
    node.create_subscription(Float64MultiArray, "commands", counter("command"), 100)
    if images:
        node.create_subscription(Image, "camera/image_raw", counter("image"), 5)
    status = node.create_publisher(String, "~/counts", 10)
    node.create_timer(0.5, lambda: status.publish(String(data=json.dumps(
        {**counts, "t": time.monotonic()}))))
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        rclpy.try_shutdown()


# ----- the benchmark driver -----
def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(args: list[str], env: dict, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def measure(cfg: Config, name: str, rate_hz: float, images: bool, sample_on: str | None,
            workdir: Path, faults: bool = False) -> dict:
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from std_msgs.msg import String
    from std_srvs.srv import SetBool, Trigger

    from robot_stack.data import EpisodeStore, check

    spec_path, out = workdir / f"{name}.yaml", workdir / f"{name}.zarr"
    spec_path.write_text(yaml.safe_dump(robot_spec(cfg, rate_hz, images, sample_on)))
    env = dict(os.environ, ROS_DOMAIN_ID=str(cfg.domain_id), PYTHONUNBUFFERED="1")
    log = open(workdir / f"{name}.log", "w+")
    script = str(Path(__file__).resolve())
    role_args = ["--duration", str(cfg.duration_s), "--burst", str(cfg.burst_s)] + (
        ["--images"] if images else [])
    recorder = start(["-m", "ros_nodes.recorder_node", "--spec", str(spec_path), "--out",
                      str(out)], env, log)
    counter = start([script, "--role", "counter", *role_args], env, log)
    publisher = start([script, "--role", "publisher", *role_args], env, log)
    context = Context()
    rclpy.init(context=context, domain_id=cfg.domain_id)
    node = Node("benchmark_driver", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    status, counts = [], []
    node.create_subscription(String, "/recorder/status", lambda m: status.append(
        json.loads(m.data)), latched)
    node.create_subscription(String, "/benchmark_counter/counts", lambda m: counts.append(
        json.loads(m.data)), 10)

    def spin_until(condition, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"{name}: timed out waiting for {what}\n{log.read()[-3000:]}")
            executor.spin_once(timeout_sec=0.05)

    def call(srv_type, service: str, request):
        client = node.create_client(srv_type, service)
        spin_until(client.service_is_ready, 30, service)
        future = client.call_async(request)
        spin_until(future.done, 30, f"{service} response")
        return future.result()

    try:
        spin_until(lambda: status and not status[-1]["stale_streams"] and counts, 60,
                   "all streams at the recorder and the counter")
        time.sleep(1.0)  # let the first chunk allocations and discovery settle
        executor.spin_once(timeout_sec=0.05)
        counts_before = dict(counts[-1])
        cpu_before = {p: cpu_seconds(p.pid) for p in (recorder, counter, publisher)}
        t0 = time.monotonic()
        started = call(Trigger, "/recorder/start_episode", Trigger.Request())
        if not started.success:
            raise RuntimeError(f"{name}: {started.message}")
        if faults:
            spin_until(lambda: time.monotonic() - t0 >= 0.3 * cfg.duration_s, cfg.duration_s, "")
            recorder.send_signal(signal.SIGSTOP)
            time.sleep(cfg.stall_s)
            recorder.send_signal(signal.SIGCONT)
            spin_until(lambda: time.monotonic() - t0 >= 0.7 * cfg.duration_s, cfg.duration_s, "")
            publisher.send_signal(signal.SIGUSR1)
        spin_until(lambda: time.monotonic() - t0 >= cfg.duration_s, cfg.duration_s + 5, "")
        stopped = call(SetBool, "/recorder/stop_episode", SetBool.Request(data=True))
        elapsed = time.monotonic() - t0
        cpu = {p: (cpu_seconds(p.pid) - cpu_before[p]) / elapsed
               for p in (recorder, counter, publisher)}
        n_counts = len(counts)
        spin_until(lambda: len(counts) > n_counts, 5, "counter")
        counts_after = counts[-1]
        spin_until(lambda: status[-1]["state"] == "idle" and status[-1]["writer_queue"] == 0,
                   180, "the recorder's commits")  # many after gaps, on a loaded machine
        last = status[-1]
    finally:
        for proc in (publisher, counter, recorder):
            proc.send_signal(signal.SIGINT)
        for proc in (publisher, counter, recorder):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)

    report = check(out)
    store = EpisodeStore.open(out)
    steps = store.n_steps  # every episode committed in the window
    stamp_to_sample_ms = 1e3 * (store.read("timestamp") - store.read("stamp/joint_states"))
    counted_s = counts_after["t"] - counts_before["t"]
    baseline_hz = {k: round((counts_after[k] - counts_before[k]) / counted_s, 1)
                   for k in ("joint", "command", "image")}
    return {
        "run": name, "sampling": f"on {sample_on} messages" if sample_on else f"timer {rate_hz} Hz",
        "window_s": round(elapsed, 2),
        "samples": steps, "expected_samples": round(rate_hz * elapsed),
        "stop_message": stopped.message[-300:],
        "faults": (f"recorder stopped {cfg.stall_s:g} s at 30%, JointState burst "
                   f"{cfg.burst_rate_hz:g} Hz for {cfg.burst_s:g} s at 70%") if faults else "none",
        "episodes_committed": store.n_episodes, "episodes_failed": last["episodes_failed"],
        "episodes_discarded": last["episodes_discarded"], "gaps": last["gaps"],
        "episodes_split_at_gaps": last["episodes_split_at_gaps"],
        "episodes_cut_at_gaps": last["episodes_cut_at_gaps"],
        "samples_missing_at_gaps": last["gap_samples_missing"],
        "short_parts_discarded": last["short_parts_discarded"],
        "samples_discarded_at_gaps": last["samples_discarded_at_gaps"],
        "lost_messages": last["lost_messages"],
        "data_check": "OK" if report.ok else report.problems,
        "dropped_ticks": last["dropped_ticks"], "late_ticks": last["late_ticks"],
        "stale_skipped": last["stale_skipped"], "stale_by_stream": last["stale_skips_by_stream"],
        "queue_dropped": last["queue_dropped"],
        "write_latency_ms_mean_max": (last["write_latency_mean_ms"], last["write_latency_max_ms"]),
        "stamp_to_sample_ms_p50_p99_max": np.percentile(stamp_to_sample_ms, [50, 99, 100]).round(
            2).tolist(),
        "recorder_cpu_cores": round(cpu[recorder], 3),
        "baseline_counter_cpu_cores": round(cpu[counter], 3),
        "publisher_cpu_cores": round(cpu[publisher], 3),
        "baseline_received_hz": baseline_hz,
        "published_hz": {"joint": cfg.joint_rate_hz, "command": cfg.command_rate_hz,
                         "image": cfg.image_rate_hz if images else 0},
        "dataset_mb": round(sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=Config.duration_s,
                        help="recording window per run, seconds (default 60)")
    parser.add_argument("--runs", default="camera,state,state_on_message,faults",
                        help="comma-separated: camera, state (1 kHz timer), state_on_message "
                        "(one sample per 1 kHz JointState), faults (state_on_message with a "
                        "stall and a burst)")
    parser.add_argument("--stall", type=float, default=Config.stall_s,
                        help="faults: seconds the recorder is stopped (default 5)")
    parser.add_argument("--burst", type=float, default=Config.burst_s,
                        help="faults: seconds of 10 kHz JointState (default 0.5)")
    parser.add_argument("--role", choices=("publisher", "counter"), help=argparse.SUPPRESS)
    parser.add_argument("--images", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cfg = Config(duration_s=args.duration, stall_s=args.stall, burst_s=args.burst)
    if args.role == "publisher":
        return run_publisher(cfg, args.images)
    if args.role == "counter":
        return run_counter(args.images)
    print(f"cpu cores: {os.cpu_count()}, load average at start: {os.getloadavg()}")
    runs = {"camera": (cfg.camera_record_rate_hz, True, None),
            "state": (cfg.state_record_rate_hz, False, None),
            "state_on_message": (cfg.joint_rate_hz, False, "joint_states"),
            "faults": (cfg.joint_rate_hz, False, "joint_states")}
    with tempfile.TemporaryDirectory(prefix="recorder_throughput_") as tmp:
        for name in args.runs.split(","):
            result = measure(cfg, name, *runs[name], Path(tmp), faults=name == "faults")
            print(json.dumps(result, indent=1), flush=True)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
