"""The executor-free control loop of the policy node, with real rclpy entities over DDS."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.context import Context  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from std_msgs.msg import Int64  # noqa: E402

from ros_nodes.control_loop import ControlLoop  # noqa: E402
from tests.rosutil import release_domain_id, unique_domain_id  # noqa: E402


@pytest.fixture
def context():
    domain = unique_domain_id()
    context = Context()
    rclpy.init(context=context, domain_id=domain)
    yield context
    rclpy.try_shutdown(context=context)
    release_domain_id(domain)


def control_node(context: Context, name: str) -> Node:
    return Node(name, context=context, start_parameter_services=False,
                parameter_overrides=[Parameter("start_type_description_service", value=False)])


# True: the fallback through rclpy's public executor API, used where rcl's wait set is missing.
@pytest.mark.parametrize("public_api_only", [False, True])
def test_loop_serves_every_message_in_order_and_accounts_for_every_deadline(context, public_api_only):
    node = control_node(context, "control")
    received: list[int] = []
    node.create_subscription(Int64, "numbers", lambda msg: received.append(msg.data), 100)
    ticks: list[tuple[float, float, int]] = []  # (time, the next deadline, missed so far)
    period = 0.005
    loop = ControlLoop(node, period, lambda: ticks.append(
        (time.monotonic(), loop.schedule.deadline, loop.schedule.missed)))
    sender = Node("sender", context=context)
    publisher = sender.create_publisher(Int64, "numbers", 100)

    thread = threading.Thread(target=loop.run, kwargs={"public_api_only": public_api_only})
    thread.start()
    deadline = time.monotonic() + 10
    while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    for i in range(50):
        publisher.publish(Int64(data=i))
        time.sleep(0.002)
    while len(received) < 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    loop.stop()
    thread.join(timeout=5)

    assert not thread.is_alive(), "stop() did not end run()"
    assert received == list(range(50))
    assert len(ticks) >= 10
    # No tick runs before its deadline (one period before the next one it set)...
    assert all(now >= next_deadline - period for now, next_deadline, _ in ticks)
    # ...and each deadline between the first and the last tick was ticked or counted missed.
    (_, first_next, first_missed), (_, last_next, last_missed) = ticks[0], ticks[-1]
    assert round((last_next - first_next) / period) == len(ticks) - 1 + last_missed - first_missed
    node.destroy_node()
    sender.destroy_node()


def test_idle_task_runs_at_its_period_and_never_just_before_a_tick(context):
    node = control_node(context, "control")
    period, idle_period = 0.2, 0.05  # the task may run only in the first half of a period
    calls: list[tuple[float, float]] = []  # (time, time left to the next deadline)
    loop = ControlLoop(node, period, lambda: None, idle_task=lambda: calls.append(
        (time.monotonic(), loop.schedule.deadline - time.monotonic())), idle_period=idle_period)
    thread = threading.Thread(target=loop.run)
    thread.start()
    time.sleep(1.2)
    loop.stop()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert len(calls) >= 6  # it also wakes the loop for the task, not only at deadlines
    assert np.diff([t for t, _ in calls]).min() >= idle_period - 0.005
    assert all(left >= period / 2 - 0.02 for _, left in calls)
    node.destroy_node()


@pytest.mark.parametrize("public_api_only", [False, True])
def test_loop_returns_when_the_context_shuts_down(context, public_api_only):
    node = control_node(context, "control")
    loop = ControlLoop(node, 10.0, lambda: None)  # no deadline within the test
    thread = threading.Thread(target=loop.run, kwargs={"public_api_only": public_api_only})
    thread.start()
    time.sleep(0.2)
    rclpy.try_shutdown(context=context)
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_loop_refuses_a_node_with_timers(context):
    node = control_node(context, "control")
    node.create_timer(0.1, lambda: None)
    with pytest.raises(ValueError, match="subscriptions only"):
        ControlLoop(node, 0.01, lambda: None)
    node.destroy_node()
