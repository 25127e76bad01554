"""robot_stack/compat.py: each private API's public fallback gives the fast path's result.

(The rclpy wait set's fallback runs in tests/test_control_loop.py, with real DDS.)
"""
import copy

import numpy as np
import torch
import zarr
from zarr.storage import LocalStore

from robot_stack import compat
from robot_stack.data import EpisodeStore, KeySpec, standard_keys
from robot_stack.data.store import IMAGE_CHUNK_KEYS, IMAGE_COMPRESSORS, _ImageChunkEncoder
from robot_stack.learn.nets import FusedAdam


def test_zarr_put_fast_path_and_public_fallback_write_the_same_file(tmp_path):
    assert compat.ZARR_PRIVATE_PUT  # this zarr has the private function: the fast path is taken
    store = LocalStore(tmp_path)
    data = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    compat.put_local(store, "fast/c.0.0.0.0", data)
    compat.put_local_public(store, "public/c.0.0.0.0", data)
    assert (tmp_path / "fast/c.0.0.0.0").read_bytes() == (tmp_path / "public/c.0.0.0.0").read_bytes() == data
    assert not [p for p in tmp_path.rglob("*.partial")]  # both renamed their temporary file into place


def test_listing_a_remote_store_through_zarrs_loop_and_a_new_one_gives_the_same_keys(tmp_path):
    zarr.create_array(tmp_path / "a", shape=(10,), chunks=(3,), dtype="int64", fill_value=0)[:] = range(10)
    store = zarr.open_array(f"file://{tmp_path / 'a'}", mode="r").store_path.store
    keys = compat.list_prefix(store, "c/")
    assert sorted(keys) == ["0", "1", "2", "3"]
    assert sorted(compat.list_prefix(store, "c/", public_api_only=True)) == sorted(keys)


def test_image_chunks_from_the_fast_path_are_the_bytes_zarr_itself_writes(tmp_path):
    frames = np.random.default_rng(1).integers(0, 256, size=(5, 24, 32, 3), dtype=np.uint8)
    frames[:, :12] = 40  # compressible, like a render
    keys = {**standard_keys(3, 2), "camera/rgb": KeySpec((24, 32, 3), "uint8")}
    with EpisodeStore.create(tmp_path / "ds.zarr", keys, task="t", robot={}) as store:
        assert _ImageChunkEncoder.of(store._data["camera/rgb"]) is not None  # the writer's fast path
        store.append_episode({"observation": np.zeros((5, 3), np.float32), "action": np.zeros((5, 2), np.float32),
                              "reward": np.zeros(5, np.float32), "terminal": np.zeros(5, bool),
                              "timestamp": np.arange(5.0), "camera/rgb": frames}, source="sim")
    plain = zarr.create_array(tmp_path / "plain", shape=frames.shape, chunks=(1, 24, 32, 3), dtype="uint8",
                              fill_value=0, compressors=IMAGE_COMPRESSORS, chunk_key_encoding=IMAGE_CHUNK_KEYS)
    plain[:] = frames
    for i in range(5):
        ours = (tmp_path / f"ds.zarr/data/camera/rgb/c.{i}.0.0.0").read_bytes()
        assert ours == (tmp_path / f"plain/c.{i}.0.0.0").read_bytes()
    # plain zarr verifies the checksum the fast path appended
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "ds.zarr", mode="r")["data/camera/rgb"][:], frames)


def test_fused_adam_kernel_and_adams_own_step_reach_the_same_parameters():
    assert compat.torch_fused_adam() is torch._fused_adam_  # the fast path is taken on this torch
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    nets = [net, copy.deepcopy(net)]
    optimisers = [FusedAdam(n.parameters(), lr=1e-2) for n in nets]
    for _ in range(5):
        x = torch.randn(16, 4)
        for n, optimiser, step in zip(nets, optimisers, (FusedAdam.step, torch.optim.Adam.step)):
            optimiser.zero_grad(set_to_none=True)
            n(x).square().mean().backward()
            step(optimiser)  # the second: FusedAdam's fallback when torch lacks the kernel
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(a, b)
