"""Replay one bag through the live node's runtime, in bag time.

The node is the live `PolicyNode` (node.py) on `BagTimeMiddleware`: its own subscription callbacks decode the bag's
messages (observation.py), its block buffer, Session, chunk decoding, Commander (execution splice + SafetyFilter)
and controller publishers run unchanged. What replay changes, and only this:

- time is bag time (`BagClock`): the log time of the message being delivered, or the due time of a timer;
- the session's worker thread is not started: when a delivered message completes a block, the replay calls
  `Session.run_once` right there (inference happens synchronously at the bag time the block completes; its wall
  time is measured and reported), and hands the chunk on to the node's own hand-off (the session's `on_chunk`:
  execution, safety, the controller and ~/action_chunk publishers) at that time plus the simulated inference
  delay (`inference_delay_ms`, or `measured` for the measured latency), so the splice drops the actions that would
  have been due while the model ran, as live. While a chunk is "in flight" no new model call starts and the block
  buffer keeps only the newest blocks, as live; a chunk whose episode was reset in flight is discarded;
  a chunk due after the last message of the replayed range is scored but not executed (nothing to execute it on);
- the node's control and status timers fire at their due times on the bag clock.

Everything runs as fast as the model allows and is deterministic (with a fixed delay and a seeded engine).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dreamzero_policy import msgs, params
from dreamzero_policy.errors import DreamZeroError
from dreamzero_policy.replay.bagio import BagError, InputBag, OutputBag
from dreamzero_policy.replay.engines import EngineFactory, RecordingEngine, ReplayContext
from dreamzero_policy.replay.groundtruth import CommandTimeline, Timeline
from dreamzero_policy.replay.metrics import ErrorAccumulator, psnr, ssim
from dreamzero_policy.replay.middleware import BagClock, BagTimeMiddleware

_log = logging.getLogger("dreamzero_policy.replay")

GROUND_TRUTHS = ("commands", "joint_states")
STAMP_MODES = ("header", "log")
OUTPUT_PREFIX = "/dreamzero_replay"
CONTROLLER_TYPES = {"joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
                    "joint_state": "sensor_msgs/msg/JointState",
                    "float64_multi_array": "std_msgs/msg/Float64MultiArray"}


class ReplayError(DreamZeroError, RuntimeError):
    """The replay cannot run (the node does not configure, no ground truth, ...)."""


@dataclass(frozen=True)
class ReplayOptions:
    """How to replay. `node_params` are the node's parameters (params.PARAMS names), validated like the node's."""

    node_params: Mapping[str, Any] = field(default_factory=dict)
    ground_truth: str = "commands"
    inference_delay_ms: float | str = 0.0  # a number, or "measured"
    stamps: str = "header"  # "log": replace observation header stamps by the bag's log times
    topic_map: Mapping[str, str] = field(default_factory=dict)  # bag topic -> node topic
    start_s: float = 0.0  # replay range, seconds from the bag's first message
    end_s: float | None = None
    decode_video: bool = False
    output_storage: str = "same"  # "same", "mcap" or "sqlite3"
    progress: bool = False
    video_samples: int = 4  # imagined/real pairs kept for the HTML report

    def __post_init__(self) -> None:
        if self.ground_truth not in GROUND_TRUTHS:
            raise ReplayError("ground truth", f"one of {list(GROUND_TRUTHS)}", repr(self.ground_truth))
        if self.stamps not in STAMP_MODES:
            raise ReplayError("stamps", f"one of {list(STAMP_MODES)}", repr(self.stamps))
        delay = self.inference_delay_ms
        if not (delay == "measured" or isinstance(delay, (int, float)) and not isinstance(delay, bool)
                and np.isfinite(delay) and delay >= 0):
            raise ReplayError("inference delay", "a number of milliseconds >= 0 or 'measured'", repr(delay))
        if self.output_storage not in ("same", "mcap", "sqlite3"):
            raise ReplayError("output storage", "same, mcap or sqlite3", repr(self.output_storage))
        if self.start_s < 0 or self.end_s is not None and self.end_s <= self.start_s:
            raise ReplayError("range", "0 <= start < end (seconds from the bag's first message)",
                              f"start {self.start_s}, end {self.end_s}")


def node_config(node_params: Mapping[str, Any]):
    """(validated params, PolicyConfig, Embodiment) exactly as PolicyNode.configure derives them."""
    from dreamzero_policy.embodiment import load_embodiment

    checked = params.validate(node_params)
    config = params.to_config(checked)
    embodiment = params.apply_overrides(load_embodiment(config.embodiment), config)
    return checked, config, embodiment


@dataclass
class ChunkRecord:
    """One model call of the replay."""

    index: int
    t_inference_ns: int  # bag time the block completed (the model ran "here")
    t_delivered_ns: int | None  # bag time the chunk reached execution (None: see `fate`)
    t_obs_ns: int  # the anchor joint state's stamp
    latency_s: float  # measured wall time of the call (ChunkResult.inference_s)
    predicted: np.ndarray  # [T, J + G] absolute targets, joint units
    anchor: np.ndarray  # [J + G]
    reset_reason: str | None
    session_call: int
    block_index: int
    fate: str = "in flight"  # "delivered", "discarded" (its episode was reset in flight), "after end" (due after
    #                          the last message of the replayed range: the recording has nothing to execute it on)


@dataclass
class VideoPair:
    call: int
    t_ns: int
    psnr_db: list[float]
    ssim: list[float]
    real: np.ndarray | None = None  # [F, H, W, 3] uint8 (kept for a few pairs only)
    imagined: np.ndarray | None = None


@dataclass
class ReplayResult:
    """Everything one bag's replay produced (the report is made from this)."""

    bag: Any  # BagInfo
    options: ReplayOptions
    embodiment: Any
    joints: list[str]
    gripper_joints: list[str]
    range_ns: tuple[int, int]
    chunks: list[ChunkRecord]
    ground_truth: Timeline
    executed: Timeline
    errors: ErrorAccumulator
    executed_errors: dict[str, Any]
    counters: dict[str, int]
    status: dict[str, Any]
    safety: dict[str, int]
    latency_stages: dict[str, Any]
    video: list[VideoPair]
    video_note: str
    output: dict[str, Any]
    model: dict[str, Any]
    timing: dict[str, float]
    replay_counters: dict[str, int]
    warnings: list[str]
    node_outputs: list[tuple[int, str, str, Any]] = field(default_factory=list)  # (t, topic, type, msg) if kept


# --------------------------------------------------------------------------------------------------------------
# Pre-flight: everything that can be checked before the model is loaded, each with one clear message.

@dataclass
class _Plan:
    config: Any
    embodiment: Any
    checked: dict[str, Any]
    node_topics: dict[str, str]  # node topic -> bag topic it is fed from
    observation_topics: list[str]  # node topics (cameras + joint states)
    truth_topics: dict[str, tuple[str, Any]]  # bag topic -> (msgtype, controller or None)
    instruction_bag_topic: str | None
    start_ns: int
    stop_ns: int | None
    warnings: list[str] = field(default_factory=list)


def _bag_topic_for(node_topic: str, topic_map: Mapping[str, str]) -> str:
    """The bag topic that feeds `node_topic`: the one --topic maps to it, else the same name, unless that name is
    mapped to another node topic ("" then: nothing feeds it)."""
    for bag_topic, target in topic_map.items():
        if target == node_topic:
            return bag_topic
    return "" if node_topic in topic_map else node_topic


def preflight(bag: InputBag, options: ReplayOptions) -> _Plan:
    info = bag.info
    checked, config, emb = node_config(options.node_params)
    where = f"bag {info.path}"
    if info.message_count == 0:
        raise BagError(where, "recorded messages", f"an empty bag (0 messages; topics: {info.topic_list()})")
    for bag_topic in options.topic_map:
        if bag_topic not in info.topics:
            raise BagError(f"{where}: --topic {bag_topic}:={options.topic_map[bag_topic]}", "a topic of the bag",
                           f"no topic {bag_topic!r}; the bag has: {info.topic_list()}")
    required: list[tuple[str, str, str]] = []  # (node topic, type, role)
    for camera in emb.cameras:
        required.append((camera.subscribed_topic, camera.message_type, f"camera {camera.name}"))
    required.append((emb.joint_states_topic, "sensor_msgs/msg/JointState", "joint states"))
    truth: list[tuple[str, str, str, Any]] = []
    if options.ground_truth == "commands":
        for ctrl in (emb.controller, emb.gripper_controller):
            if ctrl is None:
                continue
            if ctrl.interface not in CONTROLLER_TYPES:
                raise ReplayError(f"embodiment {emb.name}: controller {ctrl.name}", "a topic interface ("
                                  f"{', '.join(CONTROLLER_TYPES)}) to read recorded commands from", ctrl.interface,
                                  "use --ground-truth joint_states")
            truth.append((ctrl.name, CONTROLLER_TYPES[ctrl.interface], f"recorded commands of {ctrl.name}", ctrl))
    missing, wrong = [], []
    for node_topic, msgtype, role in [*required, *[(t, m, r) for t, m, r, _ in truth]]:
        bag_topic = _bag_topic_for(node_topic, options.topic_map)
        have = info.topics.get(bag_topic)
        if have is None and not bag_topic:
            missing.append(f"{node_topic} ({role}, {msgtype}; --topic maps the bag's {node_topic} elsewhere)")
        elif have is None:
            hint = ""
            if bag_topic + "/compressed" in info.topics or bag_topic.removesuffix("/compressed") in info.topics:
                hint = " (the bag has the other image transport: set the camera's transport in the embodiment)"
            missing.append(f"{bag_topic} ({role}, {msgtype}){hint}")
        elif have.msgtype != msgtype:
            wrong.append(f"{bag_topic} is {have.msgtype}, the node needs {msgtype} ({role})")
    if missing:
        raise BagError(f"{where}: topics of embodiment {emb.name}", "present",
                       f"missing {'; '.join(missing)}; the bag has: {info.topic_list()}",
                       "map a differently named topic with --topic BAG_TOPIC:=NODE_TOPIC")
    if wrong:
        raise BagError(f"{where}: topic types", "the embodiment's message types", "; ".join(wrong))
    instruction_bag_topic = _bag_topic_for(config.instruction_topic, options.topic_map)
    if instruction_bag_topic not in info.topics:
        instruction_bag_topic = None
        if not config.instruction:
            raise BagError(f"{where}: instruction", f"the instruction topic {config.instruction_topic} in the bag "
                           "or an instruction parameter", "neither", "pass --instruction TEXT")
    start_ns = info.start_ns + round(options.start_s * 1e9)
    stop_ns = None if options.end_s is None else info.start_ns + round(options.end_s * 1e9)
    warnings = _check_observations(bag, options, emb, start_ns, stop_ns)
    node_topics = {t: _bag_topic_for(t, options.topic_map) for t, _, _ in required}
    truth_topics = {_bag_topic_for(t, options.topic_map): (m, c) for t, m, _, c in truth}
    return _Plan(config, emb, checked, node_topics, [t for t, _, _ in required], truth_topics, instruction_bag_topic,
                 start_ns, stop_ns, warnings)


def _check_observations(bag: InputBag, options: ReplayOptions, emb, start_ns: int,
                        stop_ns: int | None) -> list[str]:
    """Messages in range, joint names and stamps of the first messages of every observed topic (BagError), and
    warnings: header stamps on another clock than the bag's log times."""
    info = bag.info
    where = f"bag {info.path}"
    joints_topic = _bag_topic_for(emb.joint_states_topic, options.topic_map)
    topics = [joints_topic] + [_bag_topic_for(c.subscribed_topic, options.topic_map) for c in emb.cameras]
    first: dict[str, list[Any]] = {t: [] for t in topics}
    pending = set(topics)
    for connection, t, raw in bag.messages(topics, start_ns, stop_ns):
        if connection.topic in pending:
            first[connection.topic].append((t, bag.deserialize(raw, connection.msgtype, connection.topic)))
            if len(first[connection.topic]) >= 2:
                pending.discard(connection.topic)
        if not pending:
            break
    end = options.end_s if options.end_s is not None else info.duration_s
    empty = [t for t in topics if not first[t]]
    if empty:
        raise BagError(f"{where}: range {options.start_s:g} .. {end:g} s", "messages on every observed topic",
                       f"none on {', '.join(empty)} (the bag spans 0 .. {info.duration_s:.3f} s)")
    _t, msg = first[joints_topic][0]
    names = list(msg.name)
    wanted = emb.joint_names + emb.gripper_joints
    if not names:
        raise BagError(f"{where}: {joints_topic} JointState.name", f"the joint names {wanted} (the node maps "
                       f"joints by name)", f"empty names with {len(msg.position)} positions",
                       "a driver that leaves names empty cannot be replayed; republish the bag with names")
    absent = [j for j in wanted if j not in names]
    if absent:
        raise BagError(f"{where}: {joints_topic} JointState.name", f"joints {wanted} of embodiment {emb.name}",
                       f"{names} (missing {absent})")
    warnings = []
    if options.stamps == "header":
        limits = {joints_topic: emb.staleness.joint_states_ms} | {
            _bag_topic_for(c.subscribed_topic, options.topic_map): emb.staleness.camera_ms for c in emb.cameras}
        for topic in topics:
            stamps = [msgs.time_to_ns(m.header.stamp) for _, m in first[topic]]
            if len(stamps) == 2 and stamps[0] == stamps[1]:
                raise BagError(f"{where}: {topic} header.stamp", "increasing stamps (the node drops a repeated "
                               "stamp as out of order)", f"{stamps[0]} ns twice",
                               "unset stamps: --stamps log replays with the bag's log times instead")
            t_log, msg = first[topic][0]
            lag_ms = (t_log - msgs.time_to_ns(msg.header.stamp)) / 1e6
            if abs(lag_ms) > limits[topic]:
                warnings.append(f"{topic}: header stamps are {abs(lag_ms) / 1e3:.3f} s "
                                f"{'behind' if lag_ms > 0 else 'ahead of'} the bag's log times (the replay clock); "
                                f"the node's watchdog will find the stream stale (limit {limits[topic]:g} ms); "
                                "--stamps log replays with the log times")
    return warnings


def _read_truth(bag: InputBag, plan: _Plan, options: ReplayOptions) -> tuple[Timeline, list[tuple[int, Any]]]:
    """The ground-truth timeline over arm + gripper joints, and the instruction messages (t, msg) before the
    range start (delivered at the start, as a latched topic would be)."""
    emb = plan.embodiment
    joints = emb.joint_names + emb.gripper_joints
    use_log = options.stamps == "log"
    latched: list[tuple[int, Any]] = []
    if plan.instruction_bag_topic is not None and plan.start_ns > bag.info.start_ns:
        for connection, t, raw in bag.messages([plan.instruction_bag_topic], None, plan.start_ns):
            latched = [(t, bag.deserialize(raw, connection.msgtype, connection.topic))]
    where = f"bag {bag.info.path}"
    if options.ground_truth == "joint_states":
        topic = plan.node_topics[emb.joint_states_topic]
        messages = ((t, bag.deserialize(raw, c.msgtype, c.topic))
                    for c, t, raw in bag.messages([topic], plan.start_ns, plan.stop_ns))
        timeline = Timeline.from_joint_states(joints, messages, use_log_time=use_log)
    else:
        builder = CommandTimeline(joints, use_log_time=use_log)
        for connection, t, raw in bag.messages(list(plan.truth_topics), plan.start_ns, plan.stop_ns):
            msgtype, ctrl = plan.truth_topics[connection.topic]
            builder.add(t, msgtype, bag.deserialize(raw, connection.msgtype, connection.topic), ctrl.joints)
        if not builder.messages:
            raise BagError(f"{where}: recorded commands", f"messages on {sorted(plan.truth_topics)} in the range",
                           "none", "use --ground-truth joint_states, or widen --start/--end")
        timeline = builder.timeline()
    empty = [j for j in joints if timeline.count(j) == 0]
    if len(empty) == len(joints):
        raise BagError(f"{where}: ground truth ({options.ground_truth})", f"values for joints {joints}",
                       "none of them in the recorded messages")
    return timeline, latched


# --------------------------------------------------------------------------------------------------------------

class BagReplay:
    """One bag through one node (see the module docstring). `run()` -> ReplayResult."""

    def __init__(self, bag: InputBag, options: ReplayOptions, out_dir: Path | None = None,
                 engine_factory: EngineFactory | None = None, keep_node_outputs: bool = False):
        self.bag, self.options, self.out_dir = bag, options, out_dir
        self.engine_factory = engine_factory
        self.keep_node_outputs = keep_node_outputs
        self.plan = preflight(bag, options)
        self.embodiment = self.plan.embodiment
        self.ground_truth, self._latched = _read_truth(bag, self.plan, options)
        self.warnings: list[str] = list(self.plan.warnings)
        self.counts = {"model_calls": 0, "chunks_discarded_in_flight": 0, "session_errors": 0,
                       "messages_delivered": 0, "messages_copied": 0, "video_pairs_unpaired": 0,
                       "chunks_due_after_end": 0}
        self.chunks: list[ChunkRecord] = []
        self.video: list[VideoPair] = []
        self.node_outputs: list[tuple[int, str, str, Any]] = []
        emb = self.embodiment
        self._joints = emb.joint_names + emb.gripper_joints
        self._executed = CommandTimeline(self._joints)
        self._controllers = {c.name: c for c in (emb.controller, emb.gripper_controller) if c is not None}
        self._pending: tuple[int, Any, int] | None = None  # (due ns, ChunkResult, resets when it started)
        self._block = None
        self._previous_video: tuple[int, Any, np.ndarray] | None = None  # (chunk index, block, imagined frames)
        self._video_stride = 1
        self._had_latents = False
        self._output: OutputBag | None = None
        self._out_topics: dict[str, str] = {}

    # --- setup ---
    def _start_node(self, t0: int):
        from dreamzero_policy.node import PolicyNode

        self.clock = BagClock(t0)
        self.mw = BagTimeMiddleware(self.clock, sink=self._on_published)
        node_params = dict(self.plan.checked)
        self.node = PolicyNode(self.mw, lambda: dict(node_params), logging.getLogger("dreamzero_policy.replay.node"),
                               session_worker=False)
        tic = time.perf_counter()
        ok, message = self.node.configure()
        self.configure_s = time.perf_counter() - tic
        if not ok:
            raise ReplayError("policy node", "to configure", message.removeprefix("configure failed: "))
        node = self.node
        # The one difference to the live node: no session worker thread (see the module docstring). The session
        # hands its chunks to the replay, which passes them on to the node's own hand-off (execution, safety, the
        # controller and ~/action_chunk publishers) at the simulated delivery time.
        self._node_on_chunk = node.session.on_chunk
        node.session.on_chunk = self._on_chunk_computed
        node.session.on_block = self._on_block
        self.context = ReplayContext(self.embodiment, node.model.normalizer, self.ground_truth)
        engine = node.model.engine
        node.model.engine = (self.engine_factory(engine, self.context) if self.engine_factory is not None
                             else RecordingEngine(engine))
        ok, message = node.activate()
        if not ok:
            raise ReplayError("policy node", "to activate", message)

    def _on_block(self, block) -> None:
        self._block = self.context.block = block

    # --- the node's outputs ---
    def _on_published(self, topic: str, msgtype: str, msg: Any, t_ns: int) -> None:
        if topic in self._controllers:
            self._executed.add(t_ns, msgtype, msg, self._controllers[topic].joints)
        if self.keep_node_outputs:
            self.node_outputs.append((t_ns, topic, msgtype, msg))
        if self._output is not None:
            out_topic = self._out_topics.get(topic)
            if out_topic is None:
                out_topic = self._out_topics[topic] = (OUTPUT_PREFIX + topic if topic in self.bag.info.topics
                                                       else topic)
            self._output.write_output(out_topic, msgtype, t_ns, msgs.serialize(msg, msgtype))

    # --- the session hand-off ---
    def _on_chunk_computed(self, result) -> None:
        """Session.run_once just produced a chunk (at the bag time its block completed)."""
        now = self.clock.now_ns()
        delay = self.options.inference_delay_ms
        delay_ns = round(result.inference_s * 1e9) if delay == "measured" else round(float(delay) * 1e6)
        self._pending = (now + delay_ns, result, self.node.session.stats()["resets"])
        self.counts["model_calls"] += 1
        chunk = result.chunk
        self.chunks.append(ChunkRecord(
            result.index, now, None, chunk.t_obs_ns, float(result.inference_s),
            np.concatenate([chunk.positions, chunk.gripper], axis=1),
            np.concatenate([chunk.anchor.positions, chunk.anchor.gripper]), result.reset_reason,
            result.session_call, result.block_index))
        if self.options.decode_video:
            self._video_step(result)

    def _deliver_pending(self) -> None:
        due, result, resets = self._pending
        self._pending = None
        self.clock.advance(due)
        record = next(c for c in reversed(self.chunks) if c.index == result.index)
        if self.node.session.stats()["resets"] != resets:  # the episode changed while the model ran
            self.counts["chunks_discarded_in_flight"] += 1
            record.fate = "discarded"
            return
        record.t_delivered_ns, record.fate = self.clock.now_ns(), "delivered"
        self._node_on_chunk(result)

    def _infer(self) -> None:
        """What the idle session worker does: take a complete block if there is one and run the model."""
        session = self.node.session
        while self._pending is None:
            try:
                result = session.run_once(0.0)
            except Exception as e:  # as Session._run: count, log, start a clean episode
                self.counts["session_errors"] += 1
                _log.warning("session: model call failed (%s: %s); starting a new episode", type(e).__name__, e)
                session.request_reset("error")
                return
            if result is None:
                return
            if self._pending is not None and self._pending[0] <= self.clock.now_ns():
                self._deliver_pending()  # no simulated delay: execution gets it at once

    def _advance_to(self, t_ns: int, inclusive: bool = False) -> None:
        """Run deliveries and timers due before `t_ns` (or at it, when inclusive) in time order; at equal times
        the chunk is delivered first."""
        self.mw.skip_ahead(t_ns)
        while True:
            timer = self.mw.next_timer()
            due_timer = timer.due_ns if timer is not None else None
            due_chunk = self._pending[0] if self._pending is not None else None
            due = [d for d in (due_chunk, due_timer) if d is not None and (d <= t_ns if inclusive else d < t_ns)]
            if not due:
                return
            if due_chunk is not None and due_chunk == min(due):
                self._deliver_pending()
                self._infer()
            else:
                self.mw.fire(timer)

    # --- video ---
    def _video_step(self, result) -> None:
        engine = self.node.model.engine
        last = getattr(engine, "last", None)
        block = self._block
        previous, self._previous_video = self._previous_video, None
        if previous is not None:
            call, prev_block, imagined = previous
            contiguous = (block.index == prev_block.index + 1 and len(block.frames) == len(imagined)
                          and abs(int(block.stamps_ns[0]) - int(prev_block.stamps_ns[-1])
                                  - self.node.buffer.period_ns) <= 1)
            if contiguous:
                self._add_video_pair(call, block, imagined)
            else:
                self.counts["video_pairs_unpaired"] += 1
        if last is None or getattr(last, "video_latents", None) is None:
            return
        self._had_latents = True
        self._previous_video = (result.index, block, self._decode(engine, block, last.video_latents))

    @staticmethod
    def _decode(engine, block, latents) -> np.ndarray:
        """Imagined latents [C, F, h, w] -> frames [4F, H, W, 3] uint8 with the engine's VAE, decoded after the
        latent of the block's last real frame (their causal context), which is then dropped."""
        import torch

        vae = engine.vae
        with torch.no_grad():
            last = torch.as_tensor(np.ascontiguousarray(block.frames[-1:]))  # [1, H, W, 3]
            pixels = (last.permute(3, 0, 1, 2).unsqueeze(0).float() / 127.5 - 1.0).to(latents.device)
            context = vae.encode(pixels).float()  # [1, C, 1, h, w]
            video = vae.decode(torch.cat([context, latents[None].float()], dim=2))[0, :, 1:]  # [3, 4F, H, W]
            frames = ((video.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
        return frames.permute(1, 2, 3, 0).cpu().numpy()

    def _add_video_pair(self, call: int, block, imagined: np.ndarray) -> None:
        real = np.asarray(block.frames)
        pair = VideoPair(call, self.clock.now_ns(), [psnr(r, i) for r, i in zip(real, imagined)],
                         [ssim(r, i) for r, i in zip(real, imagined)])
        kept = [p for p in self.video if p.real is not None]
        if (len(self.video) % self._video_stride) == 0:
            pair.real, pair.imagined = real.copy(), imagined
            if len(kept) + 1 > 2 * max(self.options.video_samples, 1):  # thin out: keep every other sample
                for p in kept[1::2]:
                    p.real = p.imagined = None
                self._video_stride *= 2
        self.video.append(pair)

    # --- the run ---
    def run(self) -> ReplayResult:
        options, bag, plan = self.options, self.bag, self.plan
        info = bag.info
        first = next(iter(bag.messages(None, plan.start_ns, plan.stop_ns)), None)
        if first is None:
            raise BagError(f"bag {info.path}: range", "messages", "none")
        t0 = first[1]
        storage = options.output_storage if options.output_storage != "same" else (
            info.storage if info.storage in ("mcap", "sqlite3") else "mcap")
        self.node = None
        self.mw = None
        try:
            self._start_node(t0)
            tic = time.perf_counter()
            if self.out_dir is not None:
                self._output = OutputBag(self.out_dir / "replay_bag", storage, bag, custom_data={
                    "dreamzero_replay.source": str(info.path), "dreamzero_replay.embodiment": self.embodiment.name,
                    "dreamzero_replay.checkpoint": self.plan.config.checkpoint,
                    "dreamzero_replay.inference_delay_ms": str(options.inference_delay_ms)})
            self._replay_messages(t0)
            wall = time.perf_counter() - tic
            counters, status = self.node.counters(), _status_fields(self.node.status_msg())
            safety = self.node.safety.counters()
            stages = {k: {"p50": v[0], "p90": v[1], "p99": v[2], "n": v[3]}
                      for k, v in self.node.latency.summary().items()}
            model = {"name": self.node.model.model_name, "checkpoint": self.node.model.checkpoint_path,
                     "device": self.node.model.device, "frames_per_block": self.node.model.frames_per_block,
                     "block_period_s": self.node.buffer.period_ns / 1e9,
                     "engine": type(self.node.model.engine).__name__}
            self.mw.sink = None  # what the node sends while shutting down is not part of the replay
        finally:
            if self.node is not None:
                self.node.shutdown()
            if self.mw is not None:
                self.mw.shutdown()
            if self._output is not None:
                self._output.close()
        recorded = (self._end_ns - t0) / 1e9
        return self._result(t0, counters, status, safety, stages, model, wall, recorded)

    def _replay_messages(self, t0: int) -> None:
        options, bag, plan = self.options, self.bag, self.plan
        for t, msg in self._latched:
            self.mw.deliver(self.plan.config.instruction_topic, msg)
        feeds = {bag_topic: node_topic for node_topic, bag_topic in plan.node_topics.items()}
        if plan.instruction_bag_topic is not None:
            feeds[plan.instruction_bag_topic] = plan.config.instruction_topic
        restamp = options.stamps == "log"
        progress = _progress(bag.info.path.name, plan, bag.info, options.progress)
        last = t0
        self._end_ns = t0
        try:
            for connection, t, raw in bag.messages(None, plan.start_ns, plan.stop_ns):
                if self._output is not None:
                    self._output.copy(connection, t, raw)
                    self.counts["messages_copied"] += 1
                node_topic = feeds.get(connection.topic)
                self._advance_to(t)
                self.clock.advance(t)
                self._end_ns = t
                if node_topic is not None and self.mw.subscribed(node_topic):
                    msg = bag.deserialize(raw, connection.msgtype, connection.topic)
                    if restamp and hasattr(msg, "header"):
                        msg.header.stamp = type(msg.header.stamp)(sec=t // 1_000_000_000, nanosec=t % 1_000_000_000)
                    self.mw.deliver(node_topic, msg)
                    self.counts["messages_delivered"] += 1
                    self._infer()
                if progress is not None and t - last >= 50_000_000:
                    progress.update((t - last) / 1e9)
                    last = t
            self._advance_to(self._end_ns, inclusive=True)
            if self._pending is not None:  # due after the recording ends: nothing left to execute it on
                self.counts["chunks_due_after_end"] += 1
                self._pending = None
                self.chunks[-1].fate = "after end"
        finally:
            if progress is not None:
                progress.update(max(self._end_ns - last, 0) / 1e9)
                progress.close()

    # --- results ---
    def _result(self, t0, counters, status, safety, stages, model, wall, recorded) -> ReplayResult:
        emb = self.embodiment
        grippers = emb.gripper_joints
        accumulator = ErrorAccumulator(self._joints, emb.action_horizon, grippers)
        n_arm = len(emb.joints)
        from dreamzero_policy.transforms import gripper_to_model

        for record in self.chunks:
            if record.fate == "discarded":  # its episode was reset in flight: the node would never have used it
                continue
            due = record.t_obs_ns + (np.arange(len(record.predicted), dtype=np.int64) + 1) * emb.dt_ns
            truth, valid = self.ground_truth.sample(due)
            closed = None
            if grippers:
                closed = (gripper_to_model(record.predicted[:, n_arm:], emb) >= 0.5,
                          gripper_to_model(np.nan_to_num(truth[:, n_arm:]), emb) >= 0.5)
            accumulator.add(record.predicted, np.nan_to_num(truth), valid, closed)
        executed = self._executed.timeline()
        note = "" if self.options.decode_video else "video decoding off (--decode-video)"
        if self.options.decode_video and not self.video:
            note = ("no imagined video: the engine returned no video latents" if not self._had_latents
                    else "no two consecutive blocks to compare")
        output = self._output.summary() if self._output is not None else {}
        for topic, reason in output.get("skipped_topics", {}).items():
            self.warnings.append(f"output bag: topic {topic} not copied ({reason})")
        if self.counts["session_errors"]:
            self.warnings.append(f"{self.counts['session_errors']} model call(s) failed; the session started a new "
                                 "episode after each (see the log)")
        return ReplayResult(
            bag=self.bag.info, options=self.options, embodiment=emb, joints=self._joints, gripper_joints=grippers,
            range_ns=(t0, self._end_ns), chunks=self.chunks, ground_truth=self.ground_truth, executed=executed,
            errors=accumulator, executed_errors=_executed_errors(executed, self.ground_truth, emb.dt_ns),
            counters=counters, status=status, safety=safety, latency_stages=stages, video=self.video,
            video_note=note, output=output, model=model,
            timing={"configure_s": self.configure_s, "replay_wall_s": wall, "recorded_s": recorded,
                    "speed": recorded / wall if wall > 0 else float("inf")},
            replay_counters=dict(self.counts, ticks_skipped=self.mw.ticks_skipped), warnings=self.warnings,
            node_outputs=self.node_outputs)


def _status_fields(status) -> dict[str, Any]:
    """The scalar fields of the node's PolicyStatus (refusal counts, latency percentiles, ...)."""
    out = {}
    for f in dataclasses.fields(status):
        value = getattr(status, f.name)
        if isinstance(value, (bool, int, float, str)) and not f.name.startswith("counter_"):
            out[f.name] = value
    return out


def _executed_errors(executed: Timeline, truth: Timeline, dt_ns: int) -> dict[str, Any]:
    """MAE / RMSE per joint of what the node would have commanded vs the ground truth, on the control grid."""
    spans = [s for j in executed.joints if (s := executed.span(j)) is not None]
    out: dict[str, Any] = {}
    if not spans:
        return {j: {"mae": None, "rmse": None, "samples": 0} for j in executed.joints}
    grid = np.arange(min(s[0] for s in spans), max(s[1] for s in spans) + 1, dt_ns, dtype=np.int64)
    a, va = executed.sample(grid)
    b, vb = truth.sample(grid)
    for k, joint in enumerate(executed.joints):
        ok = va[:, k] & vb[:, k]
        e = a[ok, k] - b[ok, k]
        out[joint] = {"mae": float(np.abs(e).mean()) if e.size else None,
                      "rmse": float(np.sqrt((e ** 2).mean())) if e.size else None, "samples": int(e.size)}
    return out


def _progress(name: str, plan: _Plan, info, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    stop = plan.stop_ns if plan.stop_ns is not None else info.end_ns
    total = max(stop - plan.start_ns, 0) / 1e9
    # disable=None: no bar when stderr is not a terminal (logs of batch jobs stay readable)
    return tqdm(total=round(total, 3), unit="s", desc=f"replay {name}", dynamic_ncols=True, leave=False,
                disable=None, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} bag s "
                                         "[{elapsed}<{remaining}, {rate_fmt}]")


def replay_bag(path: str | Path, options: ReplayOptions, out_dir: Path | None = None,
               engine_factory: EngineFactory | None = None, keep_node_outputs: bool = False) -> ReplayResult:
    """Replay one bag (see the module docstring); the output bag goes to `out_dir/replay_bag` when given."""
    from dreamzero_policy.replay.bagio import open_bag

    with open_bag(path) as bag:
        return BagReplay(bag, options, out_dir, engine_factory, keep_node_outputs).run()


__all__ = ["ReplayOptions", "ReplayResult", "ReplayError", "BagReplay", "replay_bag", "preflight", "node_config",
           "ChunkRecord", "VideoPair"]
