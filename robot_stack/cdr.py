"""Serialized (CDR) bytes of the messages on the policy node's control path, read and written
without building Python message objects.

rclpy turns a taken message into Python objects field by field: 13 us for a 9-joint
JointState on a hot core, two to three times that in a 1 kHz control loop whose caches went
cold between ticks, about as long as the policy's inference. The control loop instead takes
the serialized bytes and reads the float arrays in place, as numpy views.

Nothing here is trusted on its own. A `MessageReader` hands each message of a new layout (the
joint names, frame id and array lengths, which fix every offset) to the reference
deserializer it was given (rclpy's, in the node) and keeps the offsets only when its own
parse agrees with that result exactly; later messages of the same layout, checked byte for
byte on everything but the stamp, the float values and alignment padding (which serializers
leave uninitialised), are then read at those offsets. Anything else, including encodings
other than little-endian plain CDR (XCDR1, what ROS 2's DDS middlewares send), stays on the
reference path. `CommandEncoder` likewise writes a command's bytes only after the
middleware's deserializer has read them back exactly.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from robot_stack.spec import MalformedMessage

CDR_LE = b"\x00\x01"  # encapsulation id of little-endian plain CDR (XCDR1)
HEADER = 4  # encapsulation id + options; CDR alignment counts from the end of it
FLOAT64 = np.dtype("<f8")
MAX_LAYOUTS = 8  # per reader: a topic normally carries one layout, a few publishers a few


class UnsupportedLayout(ValueError):
    """The bytes are not a message this module reads (another encoding, or truncated)."""


class _Cursor:
    """Walks XCDR1 little-endian bytes, noting which bytes fix the layout (lengths, counts,
    strings) and where the float64 arrays lie."""

    def __init__(self, data: bytes):
        if data[:2] != CDR_LE:
            raise UnsupportedLayout(f"encapsulation {data[:2].hex()} is not little-endian CDR")
        self.data = data
        self.pos = HEADER
        self.structural: list[tuple[int, int]] = []  # byte ranges, in order

    def _align(self, size: int) -> None:
        self.pos += -(self.pos - HEADER) % size

    def _take(self, size: int) -> int:
        start = self.pos
        self.pos += size
        if self.pos > len(self.data):
            raise UnsupportedLayout(f"message ends at byte {len(self.data)}, expected more")
        return start

    def skip(self, size: int, alignment: int) -> None:
        """Bytes whose value may change between messages of one layout (a stamp)."""
        self._align(alignment)
        self._take(size)

    def uint32(self) -> int:
        self._align(4)
        start = self._take(4)
        self.structural.append((start, start + 4))
        return struct.unpack_from("<I", self.data, start)[0]

    def string(self) -> str:
        size = self.uint32()
        start = self._take(size)
        self.structural.append((start, start + size))
        raw = self.data[start:start + size]
        if not raw.endswith(b"\x00"):
            raise UnsupportedLayout("string without its terminating NUL")
        return raw[:-1].decode()

    def float64s(self) -> tuple[int, int]:
        """(byte offset, count) of a float64 sequence. Empty ones are not aligned (Fast CDR
        and Cyclone alike pad only before an element)."""
        count = self.uint32()
        if count:
            self._align(8)
        return self._take(8 * count), count


@dataclass(eq=False)  # compared by identity: a key for what callers derive from a layout
class Layout:
    """Where one layout's float arrays lie, and the bytes that identify the layout."""
    length: int
    fixed: dict[str, Any]  # fields that are part of the layout (joint names)
    arrays: dict[str, tuple[int, int]]  # field -> (byte offset, count)
    identity: struct.Struct  # unpacks the identifying bytes, skipping everything else
    expected: tuple  # what it unpacks from this layout

    @classmethod
    def parse(cls, data: bytes, walk: Callable[[_Cursor], tuple[dict, dict]]) -> "Layout":
        cursor = _Cursor(data)
        fixed, arrays = walk(cursor)
        identity = struct.Struct(_identity_format(cursor.structural))
        return cls(len(data), fixed, arrays, identity, identity.unpack_from(data))

    def matches(self, data: bytes) -> bool:
        # One C call compares every identifying byte: a struct of byte strings with the
        # stamp, the floats and the padding as skipped bytes.
        return len(data) == self.length and self.identity.unpack_from(data) == self.expected

    def fields(self, data: bytes) -> dict[str, Any]:
        out = dict(self.fixed)
        for name, (offset, count) in self.arrays.items():
            out[name] = np.frombuffer(data, FLOAT64, count, offset)
        return out

    def words(self, data: bytes) -> np.ndarray:
        """The message as float64 words from the start of the CDR payload: every float array
        of the layout lies on whole words (CDR aligns float64 to 8 from there)."""
        return np.frombuffer(data, FLOAT64, (len(data) - HEADER) // 8, HEADER)

    def word_index(self, field: str, index) -> np.ndarray:
        """Positions in words() of fields[field][index]."""
        offset, count = self.arrays[field]
        return (offset - HEADER) // 8 + np.arange(count)[index]

    def agrees(self, reference: dict[str, Any], data: bytes) -> bool:
        """Whether this parse of `data` gives exactly the reference deserializer's fields."""
        ours = self.fields(data)
        return (ours.keys() == reference.keys()
                and all(_same(ours[k], reference[k]) for k in ours))


def _identity_format(ranges: list[tuple[int, int]]) -> str:
    """struct format that returns the bytes in `ranges` (sorted, disjoint), adjacent ones
    joined, and skips the bytes between them."""
    items, end = [], 0
    for start, stop in ranges:
        if start > end:
            items.append(f"{start - end}x")
        if start == end and items and items[-1].endswith("s"):
            items[-1] = f"{int(items[-1][:-1]) + stop - start}s"
        else:
            items.append(f"{stop - start}s")
        end = stop
    return "<" + "".join(items)


def _same(ours, reference) -> bool:
    if isinstance(ours, np.ndarray):  # bit for bit: NaN payloads and -0.0 included
        theirs = np.asarray(reference, FLOAT64)
        return theirs.shape == ours.shape and theirs.tobytes() == ours.tobytes()
    return list(ours) == list(reference)


def walk_joint_state(cursor: _Cursor) -> tuple[dict, dict]:
    """sensor_msgs/JointState: header (stamp, frame_id), name[], position[], velocity[],
    effort[]."""
    cursor.skip(8, 4)  # builtin_interfaces/Time: int32 sec, uint32 nanosec
    cursor.string()  # frame_id: part of the layout, not of the fields
    names = [cursor.string() for _ in range(cursor.uint32())]
    arrays = {k: cursor.float64s() for k in ("position", "velocity", "effort")}
    return {"name": tuple(names)}, arrays


def walk_float64_multi_array(cursor: _Cursor) -> tuple[dict, dict]:
    """std_msgs/Float64MultiArray: layout (dim[] of label, size, stride; data_offset),
    data[]."""
    for _ in range(cursor.uint32()):
        cursor.string()
        cursor.uint32()
        cursor.uint32()
    cursor.uint32()
    return {}, {"data": cursor.float64s()}


class MessageReader:
    """Field dicts (as ros_nodes/convert.py builds them from messages) from serialized bytes.

    `reference(data)` deserializes with the middleware and returns the field dict: it reads
    every message of a layout not yet seen, and its result decides whether the layout's
    offsets are kept. Bytes it cannot read raise MalformedMessage. `walk` is walk_joint_state or walk_float64_multi_array.
    """

    def __init__(self, walk: Callable[[_Cursor], tuple[dict, dict]],
                 reference: Callable[[bytes], dict[str, Any]]):
        self.walk = walk
        self.reference = reference
        self.layouts: dict[int, Layout] = {}  # by message length
        self.reference_reads = 0

    def __call__(self, data: bytes) -> dict[str, Any]:
        layout, fields = self.read(data)
        return layout.fields(data) if fields is None else fields

    def read(self, data: bytes) -> tuple[Layout | None, dict[str, Any] | None]:
        """(layout, None) for a message of a layout already checked (its fields are
        layout.fields(data)); otherwise (None, the reference's fields)."""
        layout = self.layouts.get(len(data))
        if layout is not None and layout.matches(data):
            return layout, None
        self.reference_reads += 1
        try:
            fields = self.reference(data)
        except Exception as e:  # the middleware's deserializer raises its own error types
            raise MalformedMessage(f"message of {len(data)} bytes cannot be deserialized: "
                                   f"{e}") from None
        try:
            layout = Layout.parse(data, self.walk)
        except (UnsupportedLayout, UnicodeDecodeError, struct.error):
            return None, fields
        if layout.agrees(fields, data):
            if len(self.layouts) >= MAX_LAYOUTS and len(data) not in self.layouts:
                self.layouts.pop(next(iter(self.layouts)))
            self.layouts[len(data)] = layout
        return None, fields


class CommandEncoder:
    """std_msgs/Float64MultiArray bytes (empty layout, `size` values) straight from a numpy
    vector: one copy into a buffer whose header is fixed.

    `reference(data)` deserializes bytes with the middleware and returns the data values;
    `usable` says whether they came back exactly, bit for bit, for a test vector. Where they
    do not (a middleware with another encoding), publish message objects instead.
    """

    def __init__(self, size: int, reference: Callable[[bytes], Any]):
        # layout.dim: 0 entries; layout.data_offset: 0; data: `size` float64, aligned to 8.
        head = CDR_LE + b"\x00\x00" + struct.pack("<III", 0, 0, size)
        self.prefix = head + b"\x00" * (-(len(head) - HEADER) % 8)
        self.size = size
        probe = np.array([np.pi * (k + 1) * (-1) ** k for k in range(size)])
        try:
            back = np.asarray(reference(self(probe)), FLOAT64)
            self.usable = back.shape == probe.shape and back.tobytes() == probe.tobytes()
        except Exception:  # the middleware's deserializer rejected the bytes
            self.usable = False

    def __call__(self, values: np.ndarray) -> bytes:
        values = np.asarray(values, FLOAT64)
        if values.shape != (self.size,):
            raise ValueError(f"command has shape {values.shape}, expected ({self.size},)")
        return self.prefix + values.tobytes()
