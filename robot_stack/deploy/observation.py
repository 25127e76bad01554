"""The policy's observation vector from the latest serialized message of each observation
topic: the policy node's per-tick assembly.

For messages of a layout robot_stack/cdr.py has checked, the observation is gathered straight
from the message bytes with one index per topic (the spec's parts mapped onto the layout's
float words once per layout); everything else (a layout not seen before, another encoding, a
message the spec rejects, a non-finite value to name) goes through RobotSpec's own
observation_from_messages and its checks, so both paths give the same vector and the same
errors.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from robot_stack.cdr import Layout, MessageReader, walk_float64_multi_array, walk_joint_state
from robot_stack.deploy.runtime import all_finite
from robot_stack.spec import JOINT_STATE, RobotSpec

WALKS = {JOINT_STATE: walk_joint_state}  # any other observation type is a Float64MultiArray
MAX_PLANS = 64  # gather indices kept per reader: one per layout in use


class ObservationReader:
    """receive() keeps each topic's latest message; observation() assembles the vector.

    `deserialize(msg_type, data)` is the middleware's reference deserializer (the field dict
    that ros_nodes/convert.py builds from a message; msg_type is the spec's type name).
    """

    def __init__(self, spec: RobotSpec, deserialize: Callable[[str, bytes], dict[str, Any]]):
        self.spec = spec
        self.topics: list[str] = list(dict.fromkeys(p.topic for p in spec.observation))
        types = {p.topic: p.msg_type for p in spec.observation}
        self.readers = {
            t: MessageReader(WALKS.get(types[t], walk_float64_multi_array),
                             lambda data, m=types[t]: deserialize(m, data))
            for t in self.topics}
        # topic -> (bytes, layout, None) for a checked layout, or (bytes, None, fields) as
        # the reference read them
        self.latest: dict[str, tuple[bytes, Layout | None, dict | None]] = {}
        self.plans: dict[tuple[str, Layout], tuple[np.ndarray | None, np.ndarray]] = {}

    def receive(self, topic: str, data: bytes) -> None:
        """Keeps the message; raises MalformedMessage (and keeps the previous one) when the
        bytes cannot be deserialized at all."""
        layout, fields = self.readers[topic].read(data)
        self.latest[topic] = (data, layout, fields)

    def complete(self) -> bool:
        """Whether every observation topic has a message."""
        return len(self.latest) == len(self.topics)

    def observation(self) -> np.ndarray:
        """The observation vector in the spec's dtype. Raises MalformedMessage naming the
        problem (a missing topic, joint or value; a non-finite part)."""
        out = None
        for topic in self.topics:
            data, layout, _ = self.latest.get(topic, (None, None, None))
            if layout is None:  # no message yet, or one the reference read
                return self._checked()
            positions, words = self.plans.get((topic, layout)) or self._plan(topic, layout, data)
            values = layout.words(data)[words]
            if positions is None:  # this topic gives the whole vector
                out = values
            else:
                if out is None:
                    out = np.empty(self.spec.obs_dim)
                out[positions] = values
        if not all_finite(out):
            return self._checked()  # raises, naming the part
        return out.astype(self.spec.observation_dtype, copy=False)

    def _checked(self) -> np.ndarray:
        return self.spec.observation_from_messages({
            topic: fields if layout is None else layout.fields(data)
            for topic, (data, layout, fields) in self.latest.items()})

    def _plan(self, topic: str, layout: Layout, data: bytes) -> tuple[np.ndarray | None,
                                                                       np.ndarray]:
        """Where this topic's parts go in the observation (None: they are the whole vector,
        in order) and where they lie in the words of a message of this layout. Raises MalformedMessage when the spec rejects the
        layout (missing joints, too few values): not cached, so every tick says so."""
        fields = layout.fields(data)
        positions, words, start = [], [], 0
        for part in self.spec.observation:
            if part.topic == topic:
                field, index = self.spec.part_index(part, fields)
                positions.append(np.arange(start, start + part.size))
                words.append(layout.word_index(field, index))
            start += part.size
        positions = np.concatenate(positions)
        if np.array_equal(positions, np.arange(self.spec.obs_dim)):
            positions = None
        plan = positions, np.concatenate(words)
        if len(self.plans) >= MAX_PLANS:
            self.plans.clear()
        self.plans[topic, layout] = plan
        return plan
