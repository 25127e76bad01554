"""Message <-> numpy conversions shared by the nodes. No logic beyond copying fields."""
from __future__ import annotations

import json

import numpy as np
from builtin_interfaces.msg import Time
from rclpy.serialization import deserialize_message
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String

from robot_stack.spec import FLOAT64_ARRAY, JOINT_STATE


# ----- time -----

def time_msg(seconds: float) -> Time:
    nanoseconds = int(round(seconds * 1e9))
    return Time(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


def time_seconds(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


# ----- joint states -----

def joint_state_msg(names, position, velocity, stamp: Time) -> JointState:
    msg = JointState()
    msg.header.stamp = stamp
    msg.name = list(names)
    msg.position = np.asarray(position, dtype=np.float64).tolist()
    msg.velocity = np.asarray(velocity, dtype=np.float64).tolist()
    return msg


def effort_msg(names, effort, stamp: Time) -> JointState:
    """JointState with effort only (position and velocity empty): an applied-command report."""
    msg = JointState()
    msg.header.stamp = stamp
    msg.name = list(names)
    msg.effort = np.asarray(effort, dtype=np.float64).tolist()
    return msg


# ----- commands (ros2_control forward_command_controller convention) -----

def command_msg(values) -> Float64MultiArray:
    return Float64MultiArray(data=np.asarray(values, dtype=np.float64).tolist())


def command_array(msg: Float64MultiArray) -> np.ndarray:
    return np.asarray(msg.data, dtype=np.float64)


def publication_sequence(info: dict) -> tuple | None:
    """(publisher gid, publication sequence number) from a subscription's message info, None
    where the middleware does not number messages."""
    number, gid = info.get("publication_sequence_number"), info.get("publisher_gid")
    return None if number is None or gid is None else (gid["data"], number)


# ----- status -----

def status_msg(status: dict) -> String:
    return String(data=json.dumps(status))


def diagnostics_msg(name: str, hardware_id: str, level: bytes, message: str, status: dict,
                    stamp: Time) -> DiagnosticArray:
    """One DiagnosticStatus whose key/values are the status dict's entries (JSON-encoded)."""
    values = [KeyValue(key=k, value=v if isinstance(v, str) else json.dumps(v))
              for k, v in status.items()]
    array = DiagnosticArray()
    array.header.stamp = stamp
    array.status = [DiagnosticStatus(level=level, name=name, message=message,
                                     hardware_id=hardware_id, values=values)]
    return array


# ----- recorder: messages -> the field dicts robot_stack.spec parses -----

def joint_state_fields(msg: JointState) -> dict:
    return {"name": msg.name, "position": msg.position, "velocity": msg.velocity,
            "effort": msg.effort}


def image_fields(msg: Image) -> dict:
    return {"height": msg.height, "width": msg.width, "encoding": msg.encoding,
            "step": msg.step, "data": msg.data}


def data_fields(msg) -> dict:
    """std_msgs Float64, Float64MultiArray, String: the `data` field."""
    return {"data": msg.data}


MESSAGE_CLASSES = {JOINT_STATE: JointState, FLOAT64_ARRAY: Float64MultiArray}
FIELDS = {JOINT_STATE: joint_state_fields, FLOAT64_ARRAY: data_fields}


def deserialize_fields(msg_type: str, data: bytes) -> dict:
    """Serialized bytes of a spec message type -> its field dict, by the middleware."""
    return FIELDS[msg_type](deserialize_message(data, MESSAGE_CLASSES[msg_type]))


def image_msg(pixels: np.ndarray, encoding: str, stamp: Time) -> Image:
    """(H, W, C) uint8 array -> Image, rows packed (step = W * C)."""
    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding,
                step=pixels.shape[1] * pixels.shape[2])
    msg.header.stamp = stamp
    msg.data = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    return msg
