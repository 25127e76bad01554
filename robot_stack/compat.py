"""The private APIs of our dependencies that we use, each checked once with a public fallback.

Each fast path below calls a function its library does not promise to keep. This module is the
only place that names them: it checks once (at import, or at first use for torch and rclpy, which
robot_stack.data must not import) that each is there with the signature we call, and when one is
not (a newer or older release), the public path that does the same job is used instead; every
fallback gives the same result, only slower (tests/test_compat.py and tests/test_control_loop.py
run each fallback against its fast path).

* zarr: `zarr.storage._local._put`, LocalStore's atomic write (temporary file + rename, zarr
  >= 3.1.3), called straight from the image write threads. Public path: `LocalStore.set_sync`,
  which runs the same function after a check of the store (and, where a release lacks set_sync,
  `LocalStore.set` run on an event loop).
  Listing a remote (fsspec) store's keys runs zarr's async listing through
  `zarr.core.sync.sync`, zarr's own event loop; without it, through a new event loop.
* torch: `torch._fused_adam_`, the fused Adam kernel robot_stack.learn.nets.FusedAdam calls on
  its cached state lists. Public path: `torch.optim.Adam(fused=True)`, whose step regroups the
  parameters on every call and then runs that same kernel.
* rclpy: `rclpy.impl.implementation_singleton.rclpy_implementation.WaitSet`, the rcl wait set
  ros_nodes/control_loop.py waits on (rclpy's own wait_for_message uses it). Public path: an
  rclpy SingleThreadedExecutor spun once per wait (see control_loop.py).
"""
from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
from pathlib import Path


def _function_with_parameters(module_name: str, name: str, parameters: tuple[str, ...]):
    """module.name if it is importable and callable with these leading parameter names."""
    try:
        function = getattr(importlib.import_module(module_name), name)
        leading = tuple(inspect.signature(function).parameters)[: len(parameters)]
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    return function if leading == parameters else None


# ---- zarr ----------------------------------------------------------------------------------
ZARR_PRIVATE_PUT = _function_with_parameters("zarr.storage._local", "_put", ("path", "value")) is not None


def zarr_buffer(data: bytes):
    """Bytes as the Buffer zarr's stores take."""
    from zarr.buffer import default_buffer_prototype

    return default_buffer_prototype().buffer.from_bytes(data)


def put_local(store, key: str, data: bytes) -> None:
    """Write `data` under `key` of a zarr LocalStore atomically (temporary file, then rename)."""
    if not ZARR_PRIVATE_PUT:
        put_local_public(store, key, data)
        return
    import zarr.storage._local as zarr_local

    # Looked up on each call (not bound at import) so that a wrapper installed on zarr's module,
    # as tests/store_crash_writer.py installs to kill a writer mid-write, sees these writes too.
    zarr_local._put(Path(store.root) / key, zarr_buffer(data))


def put_local_public(store, key: str, data: bytes) -> None:
    """put_local through LocalStore's public API."""
    if hasattr(store, "set_sync"):
        store.set_sync(key, zarr_buffer(data))
        return
    asyncio.run(store.set(key, zarr_buffer(data)))


def list_prefix(store, prefix: str, public_api_only: bool = False) -> list[str]:
    """Keys of a zarr store under prefix, relative to it (for stores other than local paths).

    public_api_only: run zarr's listing on a new event loop even where zarr's own is reachable
    (the fallback path, which tests run)."""
    async def collect():
        return [key async for key in store.list_prefix(prefix)]

    sync = None if public_api_only else _zarr_sync()
    keys = sync(collect()) if sync is not None else asyncio.run(collect())
    return [key[len(prefix):] for key in keys]


@functools.cache
def _zarr_sync():
    return _function_with_parameters("zarr.core.sync", "sync", ("coro",))


# ---- torch ---------------------------------------------------------------------------------
@functools.cache
def torch_fused_adam():
    """torch's private fused Adam kernel, or None where this torch lacks it.

    Resolved on first use, not at import, so that robot_stack.data does not import torch."""
    import torch

    kernel = getattr(torch, "_fused_adam_", None)
    foreach_add = getattr(torch, "_foreach_add_", None)  # FusedAdam advances the steps with it
    return kernel if callable(kernel) and callable(foreach_add) else None


# ---- rclpy ---------------------------------------------------------------------------------
def _rcl_wait_set_class():
    try:
        from rclpy.impl.implementation_singleton import rclpy_implementation
    except ImportError:
        return None
    cls = getattr(rclpy_implementation, "WaitSet", None)
    needed = ("clear_entities", "add_subscription", "add_guard_condition", "wait", "get_ready_entities")
    return cls if cls is not None and all(hasattr(cls, name) for name in needed) else None


def rcl_wait_set_class():
    """rclpy's private rcl WaitSet class, or None where this rclpy lacks it (or rclpy is absent).

    Resolved on call, not at import, so that robot_stack imports without rclpy."""
    return _rcl_wait_set_class()
