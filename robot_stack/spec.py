"""Robot spec: which ROS topics make up an observation, the action and the recorded extras.

One YAML file describes a robot to the recorder and, later, to the policy node, so that both
build the observation vector the same way. Format (see config/robot_cheetah_sim.yaml)::

    task: cheetah-run                 # written to the dataset's `task` attribute
    robot: {name: cheetah, description: "..."}   # free-form, copied into the `robot` attribute
    rate_hz: 100                      # recording rate (timer mode) and control_rate_hz
    sample_on: null                   # null: sample on a timer at rate_hz; or a topic: one
                                      # sample per message on it (the action topic for a
                                      # controller that answers each state, or the applied
                                      # topic: exact stamp pairing; see recording.py)
    observation_dtype: float32        # or float64
    stale_timeout_s: 0.5              # default for every topic; override per topic in `streams`
    observation:                      # concatenated in this order
      - {name: qpos, topic: joint_states, type: JointState, field: position,
         joints: [rootz, rooty], unit: rad, units: {rootz: m}}
      - {name: imu, topic: imu, type: Float64MultiArray, slice: [0, 3], unit: m/s^2}
    action: {topic: commands, size: 6, low: -1.0, high: 1.0, names: [...],
             command_interface: effort,            # position | velocity | effort, see below
             applied: {topic: applied_commands}}   # optional, see below
    images: [{name: rgb, topic: camera/image_raw, height: 480, width: 640, encoding: rgb8}]
    reward: {topic: reward}           # std_msgs/Float64, optional (no dataset reward key without)
    events: {topic: episode_events}   # std_msgs/String reset|terminal|truncated, optional
    required: [joint_states, commands]   # topics that must be fresh; default: observation,
                                         # action and image topics
    streams: {joint_states: {stale_timeout_s: 0.1}}

`action.topic` is where controllers (teleop, policy node) publish std_msgs/Float64MultiArray
commands. With `action.applied`, the robot also reports each command it applied as a stamped
sensor_msgs/JointState (name = action.names, effort = values; header.stamp = that of the state
it was applied from, as the sim node does). The end report says that nothing was applied from
that state, the episode ended there; it has exactly one shape: name = action.names (any order),
effort, position and velocity all empty. Any other report without effort is malformed, never
taken for an end. The recorder then records that report instead of
the raw commands (`commands` is not subscribed), and sampling on it pairs each applied command
with the state of the identical stamp.

`action.command_interface` is what the commands set on the joints, as ros2_control's command
interfaces: `position`, `velocity` or `effort` (the dm_control bodies are driven by torques). It
decides what stops the robot (robot_stack/deploy/runtime.py): holding the measured positions
of the action's joints for position, zero for velocity and effort. The policy node needs it;
a position interface also needs a JointState `position` part over every `action.names` joint.

Messages reach this module as plain field dicts (ros_nodes/convert.py builds them), so the
checks and the observation layout are testable without rclpy.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from robot_stack.errors import ConfigError

JOINT_STATE = "JointState"
FLOAT64_ARRAY = "Float64MultiArray"
FLOAT64 = "Float64"
IMAGE = "Image"
STRING = "String"
OBSERVATION_TYPES = (JOINT_STATE, FLOAT64_ARRAY)
JOINT_STATE_FIELDS = ("position", "velocity", "effort")
POSITION = "position"  # the command interface whose stop is a hold, not zero
COMMAND_INTERFACES = (POSITION, "velocity", "effort")  # as ros2_control names them
IMAGE_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
_TYPE_ALIASES = {  # accept the full ROS names as well as the short ones
    "sensor_msgs/msg/JointState": JOINT_STATE,
    "std_msgs/msg/Float64MultiArray": FLOAT64_ARRAY,
}


class MalformedMessage(ValueError):
    """A message that does not match the spec (names, sizes, NaN, encoding); it is skipped."""


def stream_name(topic: str) -> str:
    """Dataset-safe name of a topic: `/camera/image_raw` -> `camera_image_raw`."""
    return topic.strip("/").replace("/", "_")


@dataclass(frozen=True)
class ObservationPart:
    name: str
    topic: str
    msg_type: str
    field: str  # JointState: position|velocity|effort; Float64MultiArray: data
    joints: tuple[str, ...] | None  # JointState parts
    start: int  # Float64MultiArray parts: data[start:stop]
    stop: int
    units: tuple[str, ...]  # one per joint, or one for the whole slice

    @property
    def size(self) -> int:
        return len(self.joints) if self.joints is not None else self.stop - self.start

    def layout(self) -> list[dict]:
        if self.joints is not None:
            return [{"name": f"{self.name}/{j}", "size": 1, "unit": u}
                    for j, u in zip(self.joints, self.units)]
        return [{"name": self.name, "size": self.size, "unit": self.units[0]}]


@dataclass(frozen=True)
class ActionSpec:
    topic: str  # where commands are published (Float64MultiArray)
    size: int
    low: np.ndarray
    high: np.ndarray
    names: tuple[str, ...] | None
    applied_topic: str | None = None  # stamped JointState effort report of applied commands
    command_interface: str | None = None  # position | velocity | effort; None: not declared

    @property
    def recorded_topic(self) -> str:
        """The topic the recorder takes actions from."""
        return self.applied_topic or self.topic

    @property
    def applied_part(self) -> "ObservationPart":
        """How an applied-command report is read: effort of the action's joints."""
        return ObservationPart("action", self.applied_topic, JOINT_STATE, "effort", self.names,
                               0, 0, ("",) * self.size)


@dataclass(frozen=True)
class ImageSpec:
    name: str
    topic: str
    height: int
    width: int
    encoding: str

    @property
    def key(self) -> str:
        return f"camera/{self.name}"

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, IMAGE_CHANNELS[self.encoding])


@dataclass(frozen=True)
class StreamSpec:
    """One subscribed topic."""
    name: str  # stream_name(topic): used in status and in the `stamp/<name>` dataset keys
    topic: str
    msg_type: str
    role: str  # observation | action | image | reward | events
    required: bool
    stale_timeout_s: float


@dataclass
class RobotSpec:
    task: str
    robot: dict
    rate_hz: float
    sample_on: str | None  # stream name, None for timer sampling
    observation_dtype: str
    observation: list[ObservationPart]
    action: ActionSpec
    images: list[ImageSpec]
    reward_topic: str | None
    events_topic: str | None
    streams: dict[str, StreamSpec]  # by stream name, subscription order
    source: dict = field(default_factory=dict)  # the YAML mapping, stored with the dataset
    origin: str = "robot spec"  # the file it came from, for messages
    _joint_index_cache: dict = field(default_factory=dict, repr=False)

    @property
    def obs_dim(self) -> int:
        return sum(p.size for p in self.observation)

    @property
    def act_dim(self) -> int:
        return self.action.size

    def observation_layout(self) -> list[dict]:
        return [entry for part in self.observation for entry in part.layout()]

    def robot_description(self) -> dict:
        """The dataset's `robot` attribute (contract keys plus the spec itself)."""
        joints = list(self.robot.get("joint_names") or dict.fromkeys(
            j for p in self.observation if p.joints for j in p.joints))
        description = {k: v for k, v in self.robot.items() if k != "joint_names"}
        description.update({
            "name": self.robot.get("name", self.task),
            "joint_names": joints,
            "control_rate_hz": float(self.rate_hz),
            "action_low": self.action.low.tolist(),
            "action_high": self.action.high.tolist(),
            "command_interface": self.action.command_interface,
            "observation_layout": self.observation_layout(),
            "spec": copy.deepcopy(self.source),
        })
        return description

    def commanded_positions(self) -> np.ndarray:
        """Observation indices of the measured positions of the action's joints (in action
        order): what a position-interface robot holds to stop. ConfigError when the spec's
        observation does not have them."""
        where = {}  # joint -> observation index, from JointState position parts
        start = 0
        for part in self.observation:
            if part.msg_type == JOINT_STATE and part.field == "position":
                for i, joint in enumerate(part.joints):
                    where.setdefault(joint, start + i)
            start += part.size
        missing = [j for j in self.action.names or () if j not in where]
        if self.action.names is None or missing:
            raise ConfigError(
                f"{self.origin}: a position interface stops by holding the measured "
                f"positions of the action's joints, but "
                + ("action.names is not set" if self.action.names is None else
                   f"no JointState position part of the observation has {missing}"))
        return np.array([where[j] for j in self.action.names], dtype=np.intp)

    # ----- message checks and extraction -----
    def parse(self, stream: str, fields: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate one message of `stream` and return the values it contributes.

        Observation streams give {part name: array}; the action stream {"action": array} ({}
        for an end report: none was applied, the episode ended; see _check_end_report);
        image streams {"camera/<name>": (H, W, C) uint8}; reward {"reward": float64 scalar}.
        Raises MalformedMessage naming the problem.
        """
        s = self.streams[stream]
        if s.role == "observation":
            return {p.name: self._extract_part(p, fields)
                    for p in self.observation if p.topic == s.topic}
        if s.role == "action":
            if s.msg_type == JOINT_STATE:  # an applied-command report
                if len(fields["effort"]) == 0:
                    self._check_end_report(fields)
                    return {}  # nothing was applied: the episode ended
                return {"action": self._extract_part(self.action.applied_part, fields)}
            return {"action": self._check_action(fields)}
        if s.role == "image":
            image = next(i for i in self.images if i.topic == s.topic)
            return {image.key: _check_image(image, fields)}
        if s.role == "reward":
            value = float(fields["data"])
            if not math.isfinite(value):
                raise MalformedMessage(f"reward is {value}")
            return {"reward": np.float64(value)}
        raise KeyError(f"stream {stream!r} carries no data")

    def _check_end_report(self, fields: Mapping[str, Any]) -> None:
        """An applied-command report without effort is an end report only in its documented
        shape: the action's joint names, each once, and no position or velocity."""
        names = list(fields["name"])
        topic = self.action.applied_topic
        if sorted(names) != sorted(self.action.names):
            raise MalformedMessage(f"{topic}: empty effort (an end report) with joint names "
                                   f"{names}, expected {list(self.action.names)}")
        if len(fields["position"]) or len(fields["velocity"]):
            raise MalformedMessage(f"{topic}: empty effort (an end report) with position or "
                                   "velocity values")

    def observation_vector(self, parts: Mapping[str, np.ndarray]) -> np.ndarray:
        """Concatenate parsed observation parts in spec order, as observation_dtype."""
        return np.concatenate([parts[p.name] for p in self.observation]).astype(
            self.observation_dtype, copy=False)

    def observation_from_messages(self, messages: Mapping[str, Mapping[str, Any]]) -> np.ndarray:
        """Observation from the latest message fields of each observation topic (policy node,
        teleop). It runs in every control tick, so the parts are copied straight into one
        vector and checked for finite values once (the per-part checks of parse() only to
        name the bad part)."""
        out = np.empty(self.obs_dim)
        start = 0
        for part in self.observation:
            fields = messages.get(part.topic)
            if fields is None:
                raise MalformedMessage(f"no message on {part.topic} yet")
            out[start:start + part.size] = self._part_values(part, fields)
            start += part.size
        if not np.isfinite(out).all():
            for part in self.observation:
                self._extract_part(part, messages[part.topic])  # raises, naming the part
        return out.astype(self.observation_dtype, copy=False)

    def _extract_part(self, part: ObservationPart, fields: Mapping[str, Any]) -> np.ndarray:
        out = self._part_values(part, fields)
        if not np.isfinite(out).all():
            raise MalformedMessage(f"{part.topic}: non-finite {part.name} value")
        return out

    def _part_values(self, part: ObservationPart, fields: Mapping[str, Any]) -> np.ndarray:
        """The part's values from a message, sizes and names checked, finiteness not."""
        field, index = self.part_index(part, fields)
        return np.asarray(fields[field], dtype=np.float64)[index]

    def part_index(self, part: ObservationPart, fields: Mapping[str, Any]) -> tuple[str, Any]:
        """(field, index): the part's values are fields[field][index] for this message and
        every message of the same joint names and array sizes. Raises MalformedMessage when
        the message cannot give the part."""
        if part.msg_type == JOINT_STATE:
            names = tuple(fields["name"])
            size = len(fields[part.field])
            if size != len(names):
                raise MalformedMessage(f"{part.topic}: {len(names)} joint names but "
                                       f"{size} {part.field} values")
            return part.field, self._joint_index(part, names)
        size = len(fields["data"])
        if size < part.stop:
            raise MalformedMessage(f"{part.topic}: {size} values, part {part.name} "
                                   f"needs data[{part.start}:{part.stop}]")
        return "data", slice(part.start, part.stop)

    def _joint_index(self, part: ObservationPart, names: tuple[str, ...]) -> np.ndarray:
        # Joint order in a JointState can differ between publishers; cache per name tuple.
        key = (part.name, names)
        index = self._joint_index_cache.get(key)
        if index is None:
            positions = {n: i for i, n in enumerate(names)}
            missing = [j for j in part.joints if j not in positions]
            if missing:
                raise MalformedMessage(f"{part.topic}: joints {missing} missing from "
                                       f"message names {list(names)}")
            index = np.array([positions[j] for j in part.joints], dtype=np.intp)
            if len(self._joint_index_cache) < 64:  # bounded: malformed senders vary names
                self._joint_index_cache[key] = index
        return index

    def _check_action(self, fields: Mapping[str, Any]) -> np.ndarray:
        data = np.asarray(fields["data"], dtype=np.float64)
        if data.shape != (self.action.size,):
            raise MalformedMessage(f"{self.action.topic}: {data.size} values, expected "
                                   f"{self.action.size}")
        if not np.isfinite(data).all():
            raise MalformedMessage(f"{self.action.topic}: non-finite action value")
        return data


def _check_image(image: ImageSpec, fields: Mapping[str, Any]) -> np.ndarray:
    encoding, height, width = fields["encoding"], int(fields["height"]), int(fields["width"])
    if encoding != image.encoding:
        raise MalformedMessage(f"{image.topic}: encoding {encoding!r}, expected "
                               f"{image.encoding!r}")
    if (height, width) != (image.height, image.width):
        raise MalformedMessage(f"{image.topic}: {height}x{width} image, expected "
                               f"{image.height}x{image.width}")
    channels = IMAGE_CHANNELS[encoding]
    step = int(fields["step"])
    data = np.frombuffer(fields["data"], dtype=np.uint8)
    if step < width * channels or data.size != height * step:
        raise MalformedMessage(f"{image.topic}: {data.size} bytes with step {step} do not "
                               f"hold a {height}x{width}x{channels} image")
    return data.reshape(height, step)[:, :width * channels].reshape(image.shape)


# ----- loading -----
def check_positive(name: str, value: Any) -> float:
    """`value` as a float when it is a finite number > 0 (rates, periods, timeouts), else
    ConfigError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0 < value < math.inf):
        raise ConfigError(f"{name} must be a positive number (finite and > 0), got {value!r}")
    return float(value)


def load_spec(path: str | Path) -> RobotSpec:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"robot spec {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"robot spec {path} is not valid YAML: {e}") from None
    return spec_from_dict(raw, origin=str(path))


def spec_from_dict(raw: Any, origin: str = "robot spec") -> RobotSpec:
    r = _Reader(raw, origin)
    known = {"task", "robot", "rate_hz", "sample_on", "observation_dtype", "stale_timeout_s",
             "observation", "action", "images", "reward", "events", "required", "streams"}
    r.no_unknown(known)
    task = r.str("task")
    robot = r.get("robot", {})
    if not isinstance(robot, dict):
        raise ConfigError(f"{origin}: robot must be a mapping, got {type(robot).__name__}")
    rate_hz = r.positive("rate_hz")  # finite: a period of 0 would be a busy loop
    dtype = r.get("observation_dtype", "float32")
    if dtype not in ("float32", "float64"):
        raise ConfigError(f"{origin}: observation_dtype must be float32 or float64, got {dtype!r}")
    default_timeout = r.positive("stale_timeout_s", 0.5)

    topic_types: dict[str, tuple[str, str]] = {}  # topic -> (msg_type, role)

    def claim(topic: str, msg_type: str, role: str, where: str) -> None:
        if not isinstance(topic, str) or not topic:
            raise ConfigError(f"{origin}: {where}: topic must be a non-empty string")
        if topic in topic_types and topic_types[topic] != (msg_type, role):
            raise ConfigError(f"{origin}: topic {topic!r} used as {topic_types[topic][0]} "
                              f"{topic_types[topic][1]} and as {msg_type} {role} ({where})")
        topic_types[topic] = (msg_type, role)

    observation = []
    parts = r.get("observation")
    if not isinstance(parts, list) or not parts:
        raise ConfigError(f"{origin}: observation must be a non-empty list of parts")
    for i, p in enumerate(parts):
        part = _observation_part(_Reader(p, f"{origin}: observation[{i}]"))
        if part.name in {q.name for q in observation}:
            raise ConfigError(f"{origin}: observation part name {part.name!r} is used twice")
        claim(part.topic, part.msg_type, "observation", f"observation[{i}]")
        observation.append(part)

    a = _Reader(r.get("action"), f"{origin}: action")
    a.no_unknown({"topic", "size", "low", "high", "names", "applied", "command_interface"})
    size = a.count("size")
    command_interface = a.get("command_interface", None)
    if command_interface is not None and command_interface not in COMMAND_INTERFACES:
        raise ConfigError(f"{origin}: action.command_interface must be one of "
                          f"{COMMAND_INTERFACES}, got {command_interface!r}")
    low, high = a.bounds("low", size), a.bounds("high", size)
    if not (low < high).all():
        raise ConfigError(f"{origin}: action low must be below high for every dimension")
    names = a.get("names", None)
    if names is not None and len(names) != size:
        raise ConfigError(f"{origin}: action names has {len(names)} entries, size is {size}")
    applied_topic = _optional_topic(a, "applied")
    if applied_topic is not None and names is None:
        raise ConfigError(f"{origin}: action.applied needs action.names (the joints of the "
                          "applied-command report)")
    action = ActionSpec(a.str("topic"), size, low, high, tuple(names) if names else None,
                        applied_topic, command_interface)
    if applied_topic is None:
        claim(action.topic, FLOAT64_ARRAY, "action", "action")
    elif applied_topic == action.topic:
        raise ConfigError(f"{origin}: action.applied.topic must differ from action.topic "
                          "(commands are Float64MultiArray, applied reports JointState)")
    else:  # the recorder takes the applied report; the command topic is for controllers
        claim(applied_topic, JOINT_STATE, "action", "action.applied")

    images = []
    for i, im in enumerate(r.get("images", []) or []):
        ir = _Reader(im, f"{origin}: images[{i}]")
        ir.no_unknown({"name", "topic", "height", "width", "encoding"})
        encoding = ir.str("encoding")
        if encoding not in IMAGE_CHANNELS:
            raise ConfigError(f"{ir.origin}: encoding {encoding!r} not one of "
                              f"{sorted(IMAGE_CHANNELS)}")
        image = ImageSpec(ir.str("name"), ir.str("topic"), ir.count("height"),
                          ir.count("width"), encoding)
        claim(image.topic, IMAGE, "image", f"images[{i}]")
        images.append(image)

    reward_topic = _optional_topic(r, "reward")
    if reward_topic:
        claim(reward_topic, FLOAT64, "reward", "reward")
    events_topic = _optional_topic(r, "events")
    if events_topic:
        claim(events_topic, STRING, "events", "events")

    by_name = {stream_name(t): t for t in topic_types}
    if len(by_name) != len(topic_types):
        raise ConfigError(f"{origin}: two topics map to the same stream name: "
                          f"{sorted(topic_types)}")

    def resolve(name: str, where: str) -> str:
        if name in topic_types:
            return name
        if name in by_name:
            return by_name[name]
        raise ConfigError(f"{origin}: {where} names {name!r}, which is not one of the spec's "
                          f"topics {sorted(topic_types)}")

    default_required = {t for t, (_, role) in topic_types.items()
                        if role in ("observation", "action", "image")}
    required = r.get("required", None)
    required = default_required if required is None else {
        resolve(t, "required") for t in required}
    overrides = r.get("streams", {}) or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{origin}: streams must map topics to settings")
    timeouts = {}
    for t, settings in overrides.items():
        sr = _Reader(settings, f"{origin}: streams.{t}")
        sr.no_unknown({"stale_timeout_s"})
        timeouts[resolve(t, "streams")] = sr.positive("stale_timeout_s", default_timeout)
    if events_topic in required:
        raise ConfigError(f"{origin}: the events topic cannot be required")

    streams = {stream_name(t): StreamSpec(stream_name(t), t, msg_type, role, t in required,
                                          timeouts.get(t, default_timeout))
               for t, (msg_type, role) in topic_types.items()}
    sample_on = r.get("sample_on", None)
    if sample_on is not None and action.applied_topic and sample_on == action.topic:
        raise ConfigError(f"{origin}: sample_on names the command topic {action.topic!r}; with "
                          f"action.applied, sample on {action.applied_topic!r}")
    if sample_on is not None:
        sample_on = stream_name(resolve(sample_on, "sample_on"))
        if streams[sample_on].role == "events":
            raise ConfigError(f"{origin}: sample_on cannot be the events topic")
    return RobotSpec(task, dict(robot), rate_hz, sample_on, dtype, observation, action, images,
                     reward_topic, events_topic, streams, source=copy.deepcopy(raw),
                     origin=origin)


def _observation_part(r: "_Reader") -> ObservationPart:
    r.no_unknown({"name", "topic", "type", "field", "joints", "slice", "unit", "units"})
    msg_type = _TYPE_ALIASES.get(r.get("type"), r.get("type"))
    if msg_type not in OBSERVATION_TYPES:
        raise ConfigError(f"{r.origin}: type must be one of {OBSERVATION_TYPES}, "
                          f"got {r.get('type')!r}")
    name, topic, unit = r.str("name"), r.str("topic"), r.get("unit", "")
    if msg_type == JOINT_STATE:
        fld = r.get("field")
        if fld not in JOINT_STATE_FIELDS:
            raise ConfigError(f"{r.origin}: field must be one of {JOINT_STATE_FIELDS}, "
                              f"got {fld!r}")
        joints = r.get("joints")
        if not isinstance(joints, list) or not joints or not all(
                isinstance(j, str) for j in joints):
            raise ConfigError(f"{r.origin}: joints must be a non-empty list of joint names")
        if len(set(joints)) != len(joints):
            raise ConfigError(f"{r.origin}: joints lists a joint twice")
        per_joint = r.get("units", {}) or {}
        unknown = set(per_joint) - set(joints)
        if unknown:
            raise ConfigError(f"{r.origin}: units names joints not in joints: {sorted(unknown)}")
        units = tuple(per_joint.get(j, unit) for j in joints)
        return ObservationPart(name, topic, msg_type, fld, tuple(joints), 0, 0, units)
    if "joints" in r.raw or "units" in r.raw:
        raise ConfigError(f"{r.origin}: joints/units apply to JointState parts only")
    if r.get("field", "data") != "data":
        raise ConfigError(f"{r.origin}: Float64MultiArray parts take field data")
    sl = r.get("slice")
    if (not isinstance(sl, list) or len(sl) != 2 or not all(isinstance(x, int) for x in sl)
            or not 0 <= sl[0] < sl[1]):
        raise ConfigError(f"{r.origin}: slice must be [start, stop] with 0 <= start < stop")
    return ObservationPart(name, topic, msg_type, "data", None, sl[0], sl[1], (unit,))


def _optional_topic(r: "_Reader", key: str) -> str | None:
    value = r.get(key, None)
    if value is None:
        return None
    sub = _Reader(value, f"{r.origin}: {key}")
    sub.no_unknown({"topic"})
    return sub.str("topic")


class _Reader:
    """Typed access to one YAML mapping with errors that name the file and the key."""

    _MISSING = object()

    def __init__(self, raw: Any, origin: str):
        if not isinstance(raw, dict):
            raise ConfigError(f"{origin}: expected a mapping, got {type(raw).__name__}")
        self.raw, self.origin = raw, origin

    def no_unknown(self, known: set[str]) -> None:
        unknown = set(self.raw) - known
        if unknown:
            raise ConfigError(f"{self.origin}: unknown keys {sorted(unknown)}; "
                              f"known keys are {sorted(known)}")

    def get(self, key: str, default: Any = _MISSING) -> Any:
        if key in self.raw:
            return self.raw[key]
        if default is self._MISSING:
            raise ConfigError(f"{self.origin}: missing required key {key!r}")
        return default

    def str(self, key: str) -> str:
        value = self.get(key)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.origin}: {key} must be a non-empty string, got {value!r}")
        return value

    def positive(self, key: str, default: Any = _MISSING) -> float:
        return check_positive(f"{self.origin}: {key}", self.get(key, default))

    def count(self, key: str) -> int:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{self.origin}: {key} must be a whole number >= 1, got {value!r}")
        return value

    def bounds(self, key: str, size: int) -> np.ndarray:
        value = self.get(key)
        try:
            arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (size,)) if isinstance(
                value, (int, float)) else np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            arr = np.empty(0)
        if arr.shape != (size,) or not np.isfinite(arr).all():
            raise ConfigError(f"{self.origin}: {key} must be a number or {size} finite "
                              f"numbers, got {value!r}")
        return arr.copy()
