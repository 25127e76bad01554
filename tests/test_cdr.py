"""robot_stack/cdr.py against the middleware's own serialization (rclpy, Fast DDS's CDR): field
dicts read from bytes equal those of deserialized messages, bit for bit, for every layout
(alignment of odd-length strings, empty arrays, many joints, multi-array dims, NaN payloads);
a new layout is always read by the reference first; bytes that do not parse stay on the
reference path; commands written as bytes read back exactly."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from robot_stack import cdr
from robot_stack.spec import MalformedMessage

pytest.importorskip("rclpy")
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray, MultiArrayDimension  # noqa: E402

ARRAYS = ("position", "velocity", "effort")


def joint_state_fields(data: bytes) -> dict:
    msg = deserialize_message(data, JointState)
    return {"name": msg.name, "position": msg.position, "velocity": msg.velocity,
            "effort": msg.effort}


def joint_state(names, frame_id="", sizes=(None, None, None), seed=0, stamp=(0, 0)) -> bytes:
    """Serialized JointState; an array's size None means one value per joint."""
    rng = np.random.default_rng(seed)
    msg = JointState(name=list(names))
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    for field, size in zip(ARRAYS, sizes):
        setattr(msg, field, rng.normal(size=len(names) if size is None else size).tolist())
    return serialize_message(msg)


def assert_fields_equal(ours: dict, reference: dict) -> None:
    assert ours.keys() == reference.keys()
    for key, value in reference.items():
        if key == "name":
            assert list(ours[key]) == list(value)
        else:
            assert np.asarray(ours[key]).tobytes() == np.asarray(value, np.float64).tobytes()


LAYOUTS = [  # (names, frame_id, array sizes)
    (["rootx", "rootz", "rooty", "bthigh", "bshin", "bfoot", "fthigh", "fshin", "ffoot"], "",
     (None, None, None)),
    (["a"], "xyz", (None, None, 0)),
    (["ab", "abc", "abcd", "abcde"], "base_link", (0, None, 0)),
    (["j"], "", (0, 0, 0)),
    ([], "", (3, 0, 2)),
    ([f"joint_{i}" for i in range(40)], "w", (None, 0, None)),
]


@pytest.mark.parametrize("names,frame_id,sizes", LAYOUTS)
def test_joint_states_read_from_bytes_equal_deserialized_messages(names, frame_id, sizes):
    read = cdr.MessageReader(cdr.walk_joint_state, joint_state_fields)
    for seed in range(5):  # the first learns the layout, the rest are read in place
        data = joint_state(names, frame_id, sizes, seed=seed, stamp=(seed * 7, seed * 1000))
        assert_fields_equal(read(data), joint_state_fields(data))
    assert read.reference_reads == 1


def test_non_finite_values_come_through_bit_for_bit():
    read = cdr.MessageReader(cdr.walk_joint_state, joint_state_fields)
    names = ["a", "b", "c"]
    read(joint_state(names))
    msg = JointState(name=names, position=[np.nan, np.inf, -0.0], velocity=[1.0, -np.inf, 2.0],
                     effort=[0.0, 0.0, 0.0])
    data = serialize_message(msg)
    assert_fields_equal(read(data), joint_state_fields(data))
    assert read.reference_reads == 1


def test_a_changed_layout_is_read_by_the_reference():
    read = cdr.MessageReader(cdr.walk_joint_state, joint_state_fields)
    first = joint_state(["a", "b"], "map")
    read(first)
    # Same length, other content where the layout lies: a renamed joint, another frame id.
    for names, frame_id in ((["a", "c"], "map"), (["b", "a"], "map"), (["a", "b"], "odo")):
        data = joint_state(names, frame_id, seed=3)
        assert len(data) == len(first)
        fields = read(data)
        assert list(fields["name"]) == names
        assert_fields_equal(fields, joint_state_fields(data))
    # Same joints but velocity left out: the arrays move.
    data = joint_state(["a", "b"], "map", sizes=(None, 0, None))
    assert_fields_equal(read(data), joint_state_fields(data))
    assert read.reference_reads == 5


def test_multi_arrays_read_from_bytes_equal_deserialized_messages():
    def fields(data: bytes) -> dict:
        return {"data": deserialize_message(data, Float64MultiArray).data}

    read = cdr.MessageReader(cdr.walk_float64_multi_array, fields)
    for dims, size in (([], 5), ([("rows", 2, 6), ("c", 3, 3)], 6), ([("x", 0, 0)], 0)):
        for seed in range(3):
            msg = Float64MultiArray(data=np.random.default_rng(seed).normal(size=size).tolist())
            msg.layout.dim = [MultiArrayDimension(label=label, size=n, stride=s)
                              for label, n, s in dims]
            msg.layout.data_offset = 1
            data = serialize_message(msg)
            assert_fields_equal(read(data), fields(data))
    assert read.reference_reads == 3


def test_bytes_that_do_not_parse_stay_on_the_reference_path():
    calls = []

    def reference(data: bytes) -> dict:
        calls.append(data)
        return {"name": ["a"], "position": [1.0], "velocity": [], "effort": []}

    read = cdr.MessageReader(cdr.walk_joint_state, reference)
    good = joint_state(["a"], sizes=(1, 0, 0))
    big_endian = b"\x00\x00" + good[2:]
    truncated = good[:20]
    for data in (big_endian, big_endian, truncated, truncated):
        assert read(data)["position"] == [1.0]
    assert len(calls) == 4 and not read.layouts


def test_bytes_the_reference_cannot_read_are_a_malformed_message():
    read = cdr.MessageReader(cdr.walk_joint_state, joint_state_fields)
    with pytest.raises(MalformedMessage, match="cannot be deserialized"):
        read(b"\x00\x01\x00\x00" + struct.pack("<II", 1, 2) + b"\xff" * 3)


def test_commands_written_as_bytes_read_back_exactly():
    def reference(data: bytes):
        return deserialize_message(data, Float64MultiArray).data

    for size in (1, 6, 17):
        encode = cdr.CommandEncoder(size, reference)
        assert encode.usable
        values = np.random.default_rng(size).normal(size=size)
        values[0] = np.nan
        back = np.asarray(reference(encode(values)))
        assert back.tobytes() == values.tobytes()
        with pytest.raises(ValueError, match="shape"):
            encode(np.zeros(size + 1))


def test_a_middleware_that_reads_the_bytes_otherwise_is_not_used():
    assert not cdr.CommandEncoder(3, lambda data: [0.0, 0.0, 0.0]).usable

    def rejects(data: bytes):
        raise RuntimeError("unknown encapsulation")

    assert not cdr.CommandEncoder(3, rejects).usable


# ----- the policy node's observation, gathered from bytes -----

SPEC = {  # parts of one topic on both sides of another's, and a joint order unlike the message's
    "task": "toy", "robot": {"name": "toy"}, "rate_hz": 10,
    "observation": [
        {"name": "qpos", "topic": "joint_states", "type": "JointState", "field": "position",
         "joints": ["b", "a"]},
        {"name": "imu", "topic": "imu", "type": "Float64MultiArray", "slice": [1, 3]},
        {"name": "qvel", "topic": "joint_states", "type": "JointState", "field": "velocity",
         "joints": ["rootx", "a", "b"]},
    ],
    "action": {"topic": "commands", "size": 2, "low": -1.0, "high": 1.0},
}


def deserialize_fields(msg_type: str, data: bytes) -> dict:
    if msg_type == "JointState":
        return joint_state_fields(data)
    return {"data": deserialize_message(data, Float64MultiArray).data}


def imu(values) -> bytes:
    return serialize_message(Float64MultiArray(data=list(values)))


def observation_reader():
    from robot_stack.deploy.observation import ObservationReader
    from robot_stack.spec import spec_from_dict

    spec = spec_from_dict(SPEC)
    return spec, ObservationReader(spec, deserialize_fields)


def test_observations_gathered_from_bytes_equal_the_specs_assembly():
    spec, reader = observation_reader()
    for seed in range(6):
        names = [["rootx", "a", "b"], ["b", "rootx", "a", "extra"]][seed % 2]
        states, imus = joint_state(names, seed=seed), imu(np.arange(4.0) + seed)
        reader.receive("joint_states", states)
        reader.receive("imu", imus)
        expected = spec.observation_from_messages({"joint_states": joint_state_fields(states),
                                                   "imu": deserialize_fields("imu", imus)})
        got = reader.observation()
        assert got.dtype == expected.dtype == np.float32
        assert got.tobytes() == expected.tobytes()
    # two joint layouts and one imu layout, each read by the reference once
    assert reader.readers["joint_states"].reference_reads == 2
    assert reader.readers["imu"].reference_reads == 1


def test_observations_from_bytes_give_the_specs_errors():
    _, reader = observation_reader()
    with pytest.raises(MalformedMessage, match="no message on joint_states yet"):
        reader.observation()
    reader.receive("imu", imu([0.0, 1.0, 2.0]))
    reader.receive("joint_states", joint_state(["rootx", "a", "b"]))
    reader.observation()
    reader.receive("imu", imu([0.0, 1.0, 2.0]))  # a known layout: gathered from bytes
    assert reader.readers["imu"].reference_reads == 1
    reader.receive("imu", imu([0.0, 1.0, np.nan]))
    with pytest.raises(MalformedMessage, match="imu: non-finite imu value"):
        reader.observation()
    reader.receive("imu", imu([0.0, 1.0]))
    with pytest.raises(MalformedMessage, match=r"imu: 2 values, part imu needs data\[1:3\]"):
        reader.observation()
    reader.receive("imu", imu([5.0, 6.0, 7.0]))
    for _ in range(2):  # the layout's error every time, not once
        reader.receive("joint_states", joint_state(["rootx", "a", "c"], seed=1))
        with pytest.raises(MalformedMessage, match=r"joints \['b'\] missing"):
            reader.observation()
    with pytest.raises(MalformedMessage, match="cannot be deserialized"):
        reader.receive("joint_states", b"\x00\x01\x00\x00" + b"\xff" * 12)
    reader.receive("joint_states", joint_state(["rootx", "a", "b"]))
    assert np.isfinite(reader.observation()).all()


def test_a_single_topic_observation_is_gathered_whole():
    from robot_stack.deploy.observation import ObservationReader
    from robot_stack.spec import load_spec

    spec = load_spec("config/robot_cheetah_sim.yaml")
    reader = ObservationReader(spec, deserialize_fields)
    names = spec.robot_description()["joint_names"]
    for seed in range(3):
        data = joint_state(names[::-1], seed=seed)
        reader.receive("joint_states", data)
        expected = spec.observation_from_messages({"joint_states": joint_state_fields(data)})
        assert reader.observation().tobytes() == expected.tobytes()
    assert [positions for positions, _ in reader.plans.values()] == [None]
