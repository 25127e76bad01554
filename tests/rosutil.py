"""Helpers for tests that start real nodes: separate processes, real DDS, one domain per test.

Import after `pytest.importorskip("rclpy")` so that the tests skip on machines without ROS 2.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile

REPO = Path(__file__).resolve().parent.parent
DOMAIN_LOCKS = Path(tempfile.gettempdir()) / "robot_stack_ros_domains"
MAX_DOMAIN_ID = 101  # above, DDS ports can clash with Linux ephemeral ports
_held_domains: dict[int, object] = {}


def unique_domain_id() -> int:
    """A ROS_DOMAIN_ID (1..101) that no other test of any test run on this machine holds.

    Each id is claimed with an exclusive lock on a file, kept until release_domain_id or the
    end of this process, so concurrent runs (other checkouts, other helpers) never put their
    nodes on our domain.
    """
    DOMAIN_LOCKS.mkdir(exist_ok=True)
    first = os.getpid() % MAX_DOMAIN_ID  # spread concurrent runs over the range
    for offset in range(MAX_DOMAIN_ID):
        domain = 1 + (first + offset) % MAX_DOMAIN_ID
        if domain in _held_domains:
            continue
        lock = open(DOMAIN_LOCKS / f"{domain}.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        _held_domains[domain] = lock
        return domain
    raise RuntimeError(f"all ROS domain ids 1..{MAX_DOMAIN_ID} are held by running tests")


def release_domain_id(domain: int) -> None:
    """Frees a domain once every node on it has stopped."""
    _held_domains.pop(domain).close()  # closing the file drops the lock


class NodeProcess:
    """A `robot-stack` node verb in its own process, its output kept in a file."""

    def __init__(self, args: list[str], domain_id: int, stdin=None):
        self.log = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "robot_stack.cli", *args], cwd=REPO,
                                     env=env, stdin=stdin, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self, sig=signal.SIGINT, timeout: float = 15.0) -> int:
        """Sends `sig` and returns the exit status (killing the process if it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"node did not stop on {sig!r}:\n{self.output()}")
        return self.proc.returncode


class Probe:
    """An rclpy node in the test process, on its own context and domain."""

    def __init__(self, domain_id: int, name: str = "probe"):
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def collect(self, msg_type, topic: str, latched: bool = False) -> list:
        """Subscribes and returns the list that received messages are appended to."""
        received = []
        qos = QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL if latched
                         else DurabilityPolicy.VOLATILE)
        self.node.create_subscription(msg_type, topic, received.append, qos)
        return received

    def spin_until(self, condition, timeout: float, what: str, process: NodeProcess | None = None):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                log = f"\nnode output:\n{process.output()}" if process else ""
                raise AssertionError(f"timed out after {timeout} s waiting for {what}{log}")
            if process is not None and process.proc.poll() is not None:
                raise AssertionError(f"node exited ({process.proc.returncode}) while waiting for "
                                     f"{what}:\n{process.output()}")
            self.executor.spin_once(timeout_sec=0.02)

    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.02)

    def call(self, srv_type, name: str, request, timeout: float = 20.0):
        client = self.node.create_client(srv_type, name)
        self.spin_until(client.service_is_ready, timeout, f"service {name}")
        future = client.call_async(request)
        self.spin_until(future.done, timeout, f"the response of {name}")
        return future.result()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture
def ros():
    """(probe, start) on a fresh domain: a probe node in the test process, and start(*args,
    stdin=None) that runs a `robot-stack` verb in its own process; all stopped afterwards."""
    domain = unique_domain_id()
    probe = Probe(domain)
    processes = []

    def start(*args, stdin=None):
        process = NodeProcess(list(args), domain, stdin=stdin)
        processes.append(process)
        return process

    yield probe, start
    probe.close()
    for process in processes:
        if process.proc.poll() is None:
            process.stop(signal.SIGKILL)
    release_domain_id(domain)


def last_status(status_msgs: list) -> dict:
    return json.loads(status_msgs[-1].data)
