"""A control loop for one rclpy node without an executor.

rclpy's executors rebuild a wait set and wrap every callback in a task on each turn: about
0.1-0.2 ms of Python per message, more than the policy's inference, and at 1 kHz enough for
ticks to run a whole period late. This loop keeps one rcl wait set over the node's
subscriptions, calls each subscription's callback straight from the taken message, and runs
`on_tick` at deadlines every `period` (robot_stack.deploy.runtime.TickSchedule); it waits for
whichever comes first: a message, the next deadline or a shutdown. rclpy's own
wait_for_message uses the same wait-set calls. That wait set is rclpy's private API
(robot_stack/compat.py checks it at import); where an rclpy lacks it, the loop waits by spinning a
SingleThreadedExecutor once instead: the same messages, ticks and idle task, at the executor's
cost per message.

The node given here must have only subscriptions (publishers need no waiting): timers,
services and clients belong to a node spun elsewhere.

Periodic work that must not share the GIL with the loop at a deadline (the policy node's
status) can run in this thread as `idle_task`: every `idle_period` seconds, right after the
loop has served what was ready and only while the next deadline is at least half a period
away. In another thread it runs whenever its timer falls: with the status timer's phase next
to the 1 kHz deadlines, one status publish in ten held the GIL across a deadline for over a
millisecond (60 missed ticks in 120 s, every one in phase with the 5 Hz status; measured).
"""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable

from rclpy.executors import SingleThreadedExecutor
from rclpy.guard_condition import GuardCondition
from rclpy.node import Node
from rclpy.signals import SignalHandlerGuardCondition

from robot_stack import compat, realtime
from robot_stack.deploy.runtime import TickSchedule


class ControlLoop:
    def __init__(self, node: Node, period: float, on_tick: Callable[[], None],
                 priority: int = 0, idle_task: Callable[[], None] | None = None,
                 idle_period: float = 1.0, lock_memory: bool = False):
        if any(True for _ in (*node.timers, *node.services, *node.clients)):
            raise ValueError(f"{node.get_name()} has timers, services or clients: the control "
                             "loop serves subscriptions only (create the node with "
                             "start_parameter_services=False and start_type_description_service "
                             "False)")
        self.node = node
        self.on_tick = on_tick
        self.priority = priority
        self.lock_memory = lock_memory
        self.idle_task = idle_task
        self.idle_period = idle_period
        self.schedule = TickSchedule(period, time.monotonic())
        self._stop: GuardCondition | None = GuardCondition(None, None, context=node.context)
        self._stop_lock = threading.Lock()  # stop() may race the end of run()
        self._stopping = False
        self._wake_executor: Callable[[], None] | None = None  # while served by an executor
        node.context.on_shutdown(self.stop)  # a shutdown from any thread wakes the wait

    def stop(self) -> None:
        """Makes run() return soon, from any thread."""
        with self._stop_lock:
            self._stopping = True
            if self._stop is not None:
                self._stop.trigger()
            if self._wake_executor is not None:
                self._wake_executor()

    def run(self, public_api_only: bool = False) -> None:
        """Serves messages and ticks until stop() or the context shuts down (rclpy.shutdown,
        SIGINT, SIGTERM). public_api_only: wait through an executor even where rcl's wait set
        is available (the fallback path, which tests run)."""
        context = self.node.context
        if self.priority > 0:
            self._enter_realtime()
        if self.lock_memory:
            self._lock_memory()
        wait_set_class = None if public_api_only else compat.rcl_wait_set_class()
        signalled = SignalHandlerGuardCondition(context=context)
        try:
            if wait_set_class is None:
                self._serve_by_executor(context)
            else:
                self._serve_by_wait_set(context, wait_set_class, signalled)
        finally:
            signalled.destroy()
            with self._stop_lock:
                self._stop.destroy()
                self._stop = None

    def _serve_by_wait_set(self, context, wait_set_class, signalled: GuardCondition) -> None:
        subscriptions = list(self.node.subscriptions)
        with contextlib.ExitStack() as handles:  # entered handles cannot be destroyed under us
            for sub in subscriptions:
                handles.enter_context(sub.handle)
            wait_set = wait_set_class(len(subscriptions), 2, 0, 0, 0, 0, context.handle)

            def wait(timeout: float) -> None:
                wait_set.clear_entities()
                for sub in subscriptions:
                    wait_set.add_subscription(sub.handle)
                wait_set.add_guard_condition(signalled.handle)
                wait_set.add_guard_condition(self._stop.handle)
                wait_set.wait(int(timeout * 1e9))
                ready = wait_set.get_ready_entities("subscription")
                for sub in subscriptions:
                    if sub.handle.pointer in ready:
                        taken = sub.handle.take_message(sub.msg_type, sub.raw)
                        if taken is not None:
                            sub.callback(taken[0])

            self._serve(context, wait)

    def _serve_by_executor(self, context) -> None:
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(self.node)
        with self._stop_lock:
            self._wake_executor = executor.wake
        try:
            self._serve(context, lambda timeout: executor.spin_once(timeout_sec=timeout))
        finally:
            with self._stop_lock:
                self._wake_executor = None
            executor.remove_node(self.node)
            executor.shutdown()

    def _serve(self, context, wait: Callable[[float], None]) -> None:
        """The loop: wait(timeout) serves the messages that arrive within timeout seconds."""
        self.schedule = TickSchedule(self.schedule.period, time.monotonic())
        idle_due = time.monotonic() + self.idle_period
        while context.ok() and not self._stopping:
            now = time.monotonic()
            timeout = self.schedule.wait_time(now)
            if self.idle_task is not None and idle_due > now:
                timeout = min(timeout, idle_due - now)  # due and held back: the tick first
            try:
                wait(timeout)
            except Exception:
                if context.ok():
                    raise
                return  # the context went down under the wait: a normal stop
            now = time.monotonic()
            if self.schedule.due(now):
                self.schedule.tick(now)
                self.on_tick()
                now = time.monotonic()
            if (self.idle_task is not None and now >= idle_due
                    and self.schedule.wait_time(now) >= self.schedule.period / 2):
                idle_due = now + self.idle_period
                self.idle_task()

    def _enter_realtime(self) -> None:
        """SCHED_FIFO at self.priority for this thread, as ros2_control's controller manager
        does: other processes' threads on the same cores then cannot delay a tick. It needs
        CAP_SYS_NICE (root, or an rtprio limit in /etc/security/limits.conf); without it the
        loop runs under normal scheduling and says so."""
        try:
            realtime.set_fifo(self.priority)
            self.node.get_logger().info(f"control loop runs SCHED_FIFO priority {self.priority}")
        except OSError as e:
            self.node.get_logger().warning(
                f"could not set SCHED_FIFO priority {self.priority} ({e.strerror}): the control "
                "loop runs under normal scheduling; grant rtprio to the user for tighter timing")

    def _lock_memory(self) -> None:
        """The process's pages locked in RAM (robot_stack/realtime.py says why). It needs
        CAP_IPC_LOCK or a memlock limit above the process's size; without it, a warning."""
        try:
            realtime.lock_memory()
            self.node.get_logger().info(
                f"memory locked: {realtime.memory_kb('VmRSS') // 1024} MiB resident")
        except OSError as e:
            self.node.get_logger().warning(f"could not lock memory ({e.strerror}): a page fault "
                                           "can then stall a tick")
