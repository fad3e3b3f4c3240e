"""The DreamZero policy node: a ROS 2 managed (lifecycle) node, and the same node without ROS.

    ros2 launch dreamzero_policy franka_droid.launch.py checkpoint:=/path/to/checkpoint      # rclpy, lifecycle
    dreamzero-policy --checkpoint /path/to/checkpoint --embodiment franka_droid               # built-in DDS backend

A thin adapter: it declares the parameters (params.py), converts messages <-> numpy / dataclasses and calls the
runtime (observation -> block_buffer -> session -> chunk -> execution -> safety); no tensor math here.

Lifecycle (rclpy.lifecycle on ROS; the same state machine in plain Python on the DDS backend):
  configure   read parameters, load the embodiment and the checkpoint, check that they fit (one clear error
              otherwise; the node stays unconfigured and up), warm up (one dummy model step), create the
              observation subscriptions and the command publishers. Observations are accepted from now on.
  activate    start a new episode, start the session worker and the control tick: the arm follows the policy.
  deactivate  send one hold trajectory at the current position and stop sending.
  cleanup     free the model and the runtime; shutdown does what is needed to get there from any state.
On the DDS backend the node configures and activates itself at start (`--no-autostart` keeps it unconfigured)
and offers the transitions as std_srvs/Trigger services `~/configure`, `~/activate`, `~/deactivate`, `~/cleanup`.
On rclpy the standard lifecycle services (`~/change_state`, `~/get_state`, ...) do that; the launch files drive
them (`autostart:=true`), or by hand: `ros2 lifecycle set /dreamzero_policy configure` then `activate`.

Topics (`~` = /<namespace>/dreamzero_policy):
  subscribed  each embodiment camera: sensor_msgs/Image (`<topic>`) or CompressedImage (`<topic>/compressed`),
              sensor-data QoS; the embodiment's joint states (sensor_msgs/JointState, sensor-data QoS);
              `/dreamzero/instruction` (std_msgs/String, reliable + transient local: publish it latched, e.g.
              `ros2 topic pub --once --qos-durability transient_local --qos-reliability reliable
              /dreamzero/instruction std_msgs/msg/String "{data: 'pick up the cup'}"`; parameter
              instruction_topic moves it).
  published   the embodiment's controller(s): trajectory_msgs/JointTrajectory (reliable; point i at
              time_from_start = (i+1) dt with positions and velocities; header.stamp = the planned start on the
              observation clock, 0 for a hold), the same trajectory as a control_msgs/FollowJointTrajectory goal
              for `follow_joint_trajectory` controllers (trajectory_goals.py: a new goal preempts, a hold cancels
              the active goal first; configure fails when the action server does not answer within 5 s), or one
              setpoint per control tick for JointState / Float64MultiArray controllers; `~/action_chunk`
              (dreamzero_msgs/ActionChunk, per model call); `~/status` (dreamzero_msgs/PolicyStatus,
              status_rate_hz and on every transition; reliable, transient local); `/diagnostics`
              (diagnostic_msgs/DiagnosticArray: every counter by name, latency per stage).
Services: `~/set_instruction` (dreamzero_msgs/SetInstruction), `~/reset` (std_srvs/Trigger: hold at the current
position and start a new episode; the next chunk resumes motion).

Episodes: a changed instruction starts a new episode (the executing trajectory continues until the first chunk of
the new episode replaces it); an explicit reset holds first; a hold caused by stale observations also starts a new
episode once observations flow again.

Bad input never moves the arm: a malformed image, a joint state with a missing or repeated joint, mismatched arrays
or NaN, a stamp that goes backwards: the message is dropped, counted (PolicyStatus refusals_*, /diagnostics), and
logged on one line at most once per log_period_s. Joint states with extra joints or another order are mapped by
name. A camera or the joint states going silent make the watchdog hold the arm (counted as stale observations).

Clock: stamps and staleness use the node's clock (the wall clock on the DDS backend; ROS time, honouring
use_sim_time, on rclpy); the robot's stamps must come from the same clock.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from dreamzero_policy import msgs, params
from dreamzero_policy.errors import (BadJointState, DreamZeroError, InstructionError, MalformedImage,
                                     ObservationError, OutOfOrderStamp, SafetyRefusal)
from dreamzero_policy.middleware import QoS, create_middleware, rclpy_available
from dreamzero_policy.middleware.qos import Durability, Reliability

_log = logging.getLogger("dreamzero_policy.node")

STATUS_QOS = QoS(Reliability.RELIABLE, Durability.TRANSIENT_LOCAL, 1)
LIFECYCLE_STATES = ("unconfigured", "inactive", "active", "finalized")
# PolicyStatus field <- safety refusal reasons (NO_TARGETS, "waiting for the model", is in /diagnostics only).
SAFETY_FIELDS = {
    "refusals_nan": ("NON_FINITE",),
    "refusals_limit_clamp": ("POSITION_LIMIT",),
    "refusals_step_clamp": ("STEP_LIMIT", "VELOCITY_LIMIT"),
    "refusals_stale_observation": ("STALE_CAMERA", "STALE_JOINTS"),
    "refusals_stale_chunk": ("STALE_CHUNK",),
}
STREAMING_INTERFACES = ("joint_state", "float64_multi_array")
_INPUT_ERRORS = ((MalformedImage, "malformed_image"), (BadJointState, "bad_joint_state"),
                 (OutOfOrderStamp, "out_of_order_stamp"), (ObservationError, "observation_error"))
CONTROLLER_TYPES = {"joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
                    "follow_joint_trajectory": "control_msgs/action/FollowJointTrajectory",
                    "joint_state": "sensor_msgs/msg/JointState",
                    "float64_multi_array": "std_msgs/msg/Float64MultiArray"}
TRAJECTORY_INTERFACES = ("joint_trajectory", "follow_joint_trajectory")
ACTION_SERVER_WAIT_S = 5.0  # configure fails when a follow_joint_trajectory action server does not answer by then


def _destroy(entity: Any) -> None:
    destroy = getattr(entity, "destroy", None)
    if callable(destroy):
        destroy()


class PolicyNode:
    """The node's logic on any middleware backend; the lifecycle drivers below call its transitions.

    Transition methods return (ok, message) and never raise. `read_params()` returns the current parameter values
    ({name: value}); they are validated at every configure.
    Threading: transitions, subscription callbacks, services and timers run on the middleware's executor thread;
    the session worker calls `_on_chunk`.
    """

    def __init__(self, mw, read_params: Callable[[], Mapping[str, Any]], logger: logging.Logger | None = None,
                 session_worker: bool = True):
        """`session_worker=False`: no inference thread; the caller drives `session.run_once` (offline replay)."""
        self.mw = mw
        self._session_worker = session_worker
        self._read_params = read_params
        self.log = logger or _log
        self.state = "unconfigured"
        self.config: params.PolicyConfig | None = None
        self.embodiment = None
        self.model = None
        self.buffer = None
        self.session = None
        self.safety = None
        self.commander = None
        self.latency = None
        self._control_timer = None
        self._controller_pubs: list[tuple[Any, Any]] = []  # (embodiment Controller, publisher or TrajectoryGoals)
        self._chunk_pub = None
        self._observation_subs: list = []
        self._graveyard: list = []  # entities destroyed on the next status tick (never inside a callback)
        self._inputs: Counter = Counter()
        # Newest accepted stamp per stream and the newest joint state, for the watchdog and holds. Kept here, not
        # read from the block buffer, whose episode reset forgets its data (the watchdog must not see that as a
        # silent camera).
        self._stamps: dict[str, int] = {}
        self._latest_joints = None
        self._chunks_published = 0
        self._configure_errors = 0
        self._last_error = ""
        self._instruction = ""
        self._lock = threading.Lock()

        startup = self._startup_params()
        self._rate_log = self._make_rate_log(startup["log_period_s"])
        self._status_pub = mw.create_publisher("~/status", "dreamzero_msgs/msg/PolicyStatus", STATUS_QOS)
        self._diag_pub = mw.create_publisher("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", QoS.RELIABLE)
        self._instruction_sub = mw.create_subscription(startup["instruction_topic"], "std_msgs/msg/String",
                                                       self._on_instruction_msg, QoS.LATCHED)
        self._services = [
            mw.create_service("~/set_instruction", "dreamzero_msgs/srv/SetInstruction", self._on_set_instruction),
            mw.create_service("~/reset", "std_srvs/srv/Trigger", self._on_reset),
        ]
        self._status_timer = mw.create_timer(1.0 / startup["status_rate_hz"], self._on_status_tick)

    def _startup_params(self) -> dict[str, Any]:
        try:
            return params.validate(self._read_params())
        except DreamZeroError as e:
            self.log.error("parameters: %s (defaults used until configure)", e)
            return params.defaults()

    def _make_rate_log(self, period_s: float):
        from dreamzero_policy.session import RateLimitedLog

        return RateLimitedLog(self.log, period_s)

    # ================================================= lifecycle ===================================================
    def configure(self) -> tuple[bool, str]:
        if self.state != "unconfigured":
            return False, f"configure: the node is {self.state}, not unconfigured"
        from dreamzero_policy.embodiment import load_embodiment
        from dreamzero_policy.session import load_model, warm_up

        tic = time.perf_counter()
        try:
            config = params.to_config(params.validate(self._read_params()))
            embodiment = params.apply_overrides(load_embodiment(config.embodiment), config)
            model = load_model(config, embodiment)
        except DreamZeroError as e:
            return self._configure_failed(str(e))
        except Exception as e:  # anything else a checkpoint can do to a loader: still one line, node stays up
            self.log.debug("configure", exc_info=True)
            return self._configure_failed(f"{type(e).__name__}: {e}")
        self.config, self.embodiment, self.model = config, embodiment, model
        self._rate_log = self._make_rate_log(config.log_period_s)
        try:
            if config.warmup:
                warm_up(model)
            self._build_runtime()
        except Exception as e:
            self._release()
            self.log.debug("configure", exc_info=True)
            return self._configure_failed(str(e) if isinstance(e, DreamZeroError) else f"{type(e).__name__}: {e}")
        self._set_state("inactive")
        message = (f"configured in {time.perf_counter() - tic:.1f} s: {model.model_name} from {model.checkpoint_path} "
                   f"on {model.device} for {embodiment.name} ({len(embodiment.joints)} joints, "
                   f"{embodiment.control_rate_hz:g} Hz, {model.frames_per_block} frames per block, warm-up "
                   f"{model.warmup_s:.2f} s)")
        self.log.info(message)
        return True, message

    def activate(self) -> tuple[bool, str]:
        if self.state != "inactive":
            return False, f"activate: the node is {self.state}, not inactive"
        self.session.request_reset("activated")
        self.commander.enable()
        if self._session_worker:
            self.session.start()
        self._control_timer = self.mw.create_timer(self.embodiment.dt_s, self._on_control_tick)
        self._set_state("active")
        message = "active: following the policy" + ("" if self.session.instruction else
                                                      " once an instruction arrives")
        self.log.info(message)
        return True, message

    def deactivate(self) -> tuple[bool, str]:
        if self.state != "active":
            return False, f"deactivate: the node is {self.state}, not active"
        if self._control_timer is not None:
            self._control_timer.cancel()
            self._control_timer = None
        held = self.commander.disable(hold=True)
        stopped = self.session.stop()
        self._set_state("inactive")
        message = "inactive: " + ("holding at the current position" if held is not None
                                  else "no joint state to hold at; nothing sent")
        if not stopped:
            message += " (the model call in progress will be discarded)"
        self.log.info(message)
        return True, message

    def cleanup(self) -> tuple[bool, str]:
        if self.state != "inactive":
            return False, f"cleanup: the node is {self.state}, not inactive"
        self._release()
        self._set_state("unconfigured")
        self.log.info("unconfigured: model released")
        return True, "unconfigured: model released"

    def shutdown(self) -> tuple[bool, str]:
        if self.state == "finalized":
            return True, "already finalized"
        if self.state == "active":
            self.deactivate()
        if self.state == "inactive":
            self.cleanup()
        self._set_state("finalized")
        return True, "finalized"

    def _configure_failed(self, error: str) -> tuple[bool, str]:
        self._configure_errors += 1
        self._last_error = error
        message = f"configure failed: {error}"
        self.log.error(message)
        self._publish_status()
        return False, message

    def _build_runtime(self) -> None:
        from dreamzero_policy.block_buffer import BlockBuffer, block_video_fps
        from dreamzero_policy.execution import ChunkBroker
        from dreamzero_policy.safety import SafetyFilter
        from dreamzero_policy.session import Commander, LatencyStats, Session

        emb, model, config = self.embodiment, self.model, self.config
        self.latency = LatencyStats()
        self.latency.record("warmup", model.warmup_s)
        self.buffer = BlockBuffer(emb, model.video, model.frames_per_block,
                                  fps=block_video_fps(emb, model.frames_per_block, config.block_lead_ms))
        self.safety = SafetyFilter(emb, log_period_s=config.log_period_s, logger=self.log)
        self.session = Session(model, self.buffer, on_chunk=self._on_chunk, latency=self.latency, logger=self.log,
                               log_period_s=config.log_period_s)
        streaming = emb.controller.interface in STREAMING_INTERFACES
        self._stamps, self._latest_joints = {}, None
        self.commander = Commander(emb, ChunkBroker(emb.dt_ns, config.crossfade_steps), self.safety,
                                   current=lambda: self._latest_joints, stream_stamps=lambda: dict(self._stamps),
                                   send=self._send_command, now_ns=self.mw.now_ns, streaming=streaming,
                                   on_hold=self._on_hold, latency=self.latency, logger=self.log,
                                   log_period_s=config.log_period_s)
        instruction = self._instruction or config.instruction
        if instruction:
            self.session.set_instruction(instruction)
            self._instruction = self.session.instruction
        for ctrl in (emb.controller, emb.gripper_controller):
            if ctrl is None:
                continue
            if ctrl.interface == "follow_joint_trajectory":
                from dreamzero_policy.trajectory_goals import TrajectoryGoals

                sink = TrajectoryGoals(self.mw, ctrl.name, ACTION_SERVER_WAIT_S, self._rate_log)
            else:
                sink = self.mw.create_publisher(ctrl.name, CONTROLLER_TYPES[ctrl.interface], QoS.RELIABLE)
            self._controller_pubs.append((ctrl, sink))
        self._chunk_pub = self.mw.create_publisher("~/action_chunk", "dreamzero_msgs/msg/ActionChunk", QoS.RELIABLE)
        for camera in emb.cameras:
            callback = (self._on_image if camera.transport == "raw" else self._on_compressed)
            self._observation_subs.append(self.mw.create_subscription(
                camera.subscribed_topic, camera.message_type,
                lambda msg, name=camera.name, cb=callback: cb(name, msg), QoS.SENSOR_DATA))
        self._observation_subs.append(self.mw.create_subscription(
            emb.joint_states_topic, "sensor_msgs/msg/JointState", self._on_joint_state, QoS.SENSOR_DATA))

    def _release(self) -> None:
        """Drop the runtime and the model; entities are destroyed on the next status tick (see _graveyard)."""
        from dreamzero_policy.session import release_model

        if self.session is not None:
            self.session.stop()
        if self._control_timer is not None:
            self._control_timer.cancel()
            self._control_timer = None
        with self._lock:
            self._graveyard += self._observation_subs + [p for _, p in self._controller_pubs]
            if self._chunk_pub is not None:
                self._graveyard.append(self._chunk_pub)
        self._observation_subs, self._controller_pubs, self._chunk_pub = [], [], None
        self.buffer = self.session = self.commander = self.safety = None
        self._stamps, self._latest_joints = {}, None
        release_model(self.model)
        self.model = self.embodiment = self.config = None

    def _set_state(self, label: str) -> None:
        assert label in LIFECYCLE_STATES, label
        self.state = label
        self._publish_status()

    # ================================================= observations ================================================
    def _on_image(self, camera: str, msg) -> None:
        from dreamzero_policy.observation import CameraFrame, decode_image

        self._observe(f"camera {camera}", lambda: CameraFrame(
            camera, msgs.time_to_ns(msg.header.stamp),
            decode_image(msg.encoding, msg.height, msg.width, msg.step, bool(msg.is_bigendian), msg.data)))

    def _on_compressed(self, camera: str, msg) -> None:
        from dreamzero_policy.observation import CameraFrame, decode_compressed

        self._observe(f"camera {camera}", lambda: CameraFrame(
            camera, msgs.time_to_ns(msg.header.stamp), decode_compressed(msg.format, msg.data)))

    def _on_joint_state(self, msg) -> None:
        from dreamzero_policy.observation import joint_observation

        emb = self.embodiment
        if emb is None:
            return
        names = list(msg.name)
        if names != emb.joint_names + emb.gripper_joints:
            if not self._inputs["joint_states_remapped"]:
                self.log.info("joint states: %d names in another order or with extra joints; mapped by name to %s",
                              len(names), emb.joint_names + emb.gripper_joints)
            self._inputs["joint_states_remapped"] += 1
        self._observe("joint states", lambda: joint_observation(
            names, msg.position, msg.velocity, msgs.time_to_ns(msg.header.stamp), emb))

    def _observe(self, source: str, decode: Callable[[], Any]) -> None:
        """Decode one observation and add it to the block buffer; count and log what is refused."""
        from dreamzero_policy.observation import JOINT_STATES, CameraFrame

        buffer = self.buffer
        if buffer is None:
            return
        try:
            observation = decode()
            if isinstance(observation, CameraFrame):
                buffer.add_frame(observation)
                self._stamps[observation.camera] = observation.stamp_ns
            else:
                buffer.add_joints(observation)
                self._stamps[JOINT_STATES], self._latest_joints = observation.stamp_ns, observation
            return
        except Exception as e:
            error = e
        kind = next((k for cls, k in _INPUT_ERRORS if isinstance(error, cls)), None)
        if kind is None:  # not one of ours: an image OpenCV chokes on is still a malformed image
            kind = "malformed_image" if source.startswith("camera") else "exception"
            self.log.debug("%s", source, exc_info=error)
            detail = f"{type(error).__name__}: {error}"
        else:
            detail = str(error)
        self._inputs[kind] += 1
        key = f"{kind}:{source}:{getattr(error, 'field', type(error).__name__)}"  # one line per problem and source
        self._rate_log(key, logging.WARNING, "%s dropped (%s): %s", source, kind.replace("_", " "), detail)

    # ================================================= instruction and reset =======================================
    def _set_instruction(self, text: str, force_reset: bool) -> tuple[bool, str]:
        session = self.session
        if session is None:
            if not " ".join(text.split()):
                return False, "instruction: expected a non-empty text"
            self._instruction = " ".join(text.split())
            return True, f"instruction stored; it applies at configure (node {self.state})"
        try:
            reset = session.set_instruction(text, force_reset=force_reset)
        except InstructionError as e:
            self._inputs["instruction_rejected"] += 1
            self._rate_log("instruction", logging.WARNING, "instruction refused: %s", e)
            return False, str(e)
        self._instruction = session.instruction
        if reset:
            self.log.info("instruction %r: new episode", session.instruction)
        return True, f"instruction {session.instruction!r}" + ("; new episode" if reset else "; unchanged")

    def _on_instruction_msg(self, msg) -> None:
        self._set_instruction(msg.data, force_reset=False)

    def _on_set_instruction(self, request):
        ok, message = self._set_instruction(request.instruction, force_reset=bool(request.reset))
        return msgs.msg_class("dreamzero_msgs/srv/SetInstruction_Response")(success=ok, message=message)

    def _on_reset(self, request):
        response = msgs.msg_class("std_srvs/srv/Trigger_Response")
        if self.session is None:
            return response(success=False, message=f"reset: the node is {self.state}; configure it first")
        held = self.commander.hold("reset") if self.state == "active" else None
        self.session.request_reset("reset requested")
        message = "new episode" + ("; holding at the current position until the next chunk" if held else "")
        self.log.info("reset: %s", message)
        return response(success=True, message=message)

    # ================================================= control =====================================================
    def _on_control_tick(self) -> None:
        commander = self.commander
        if commander is not None and self.state == "active":
            commander.tick()

    def _on_hold(self, reasons: tuple[str, ...]) -> None:
        """The commander just started holding: stale observations also start a new episode."""
        if any(r in ("STALE_CAMERA", "STALE_JOINTS") for r in reasons) and self.session is not None:
            self.session.request_reset("observations stale")

    def _on_chunk(self, result) -> None:
        """Session worker: a new chunk -> execution/safety/controller, then the ActionChunk message."""
        commander = self.commander
        if commander is None:
            return
        cmd = commander.submit(result.chunk)
        if cmd is not None and not cmd.held:
            self._chunks_published += 1
        pub = self._chunk_pub
        if pub is not None:
            pub.publish(self._action_chunk_msg(result))

    def _send_command(self, cmd, current) -> None:
        """SafeCommand -> the controller messages (called by the commander, under its lock)."""
        from dreamzero_policy.chunk import trajectory_points

        emb = self.embodiment
        names = emb.joint_names + emb.gripper_joints
        n_arm = len(emb.joint_names)
        gripper = cmd.gripper if cmd.gripper is not None else np.repeat(current.gripper[None], len(cmd.positions), 0)
        targets = np.concatenate([cmd.positions, gripper], axis=1)  # [M, J + G]
        if cmd.held:
            velocities = np.zeros_like(targets)
        else:
            start = np.concatenate([current.positions, current.gripper])
            velocities = trajectory_points(targets, cmd.dt_ns / 1e9, start).velocities  # [M, J + G]
        for ctrl, pub in self._controller_pubs:
            columns = [names.index(j) for j in ctrl.joints]
            if cmd.gripper is None and all(c >= n_arm for c in columns):
                continue  # a hold sends nothing to a gripper-only controller
            positions = np.ascontiguousarray(targets[:, columns])  # [M, K] C order: rows go on the wire
            speeds = np.ascontiguousarray(velocities[:, columns])
            if ctrl.interface in TRAJECTORY_INTERFACES:
                trajectory = joint_trajectory_msg(ctrl.joints, positions, speeds, cmd.dt_ns,
                                                  0 if cmd.held else cmd.start_ns)
                if ctrl.interface == "joint_trajectory":
                    pub.publish(trajectory)
                else:
                    pub.send(trajectory, hold=cmd.held)
            elif ctrl.interface == "joint_state":
                pub.publish(msgs.msg_class("sensor_msgs/msg/JointState")(
                    header=msgs.header(self.mw.now_ns()), name=list(ctrl.joints), position=positions[0],
                    velocity=speeds[0], effort=np.zeros(0)))
            else:
                layout = msgs.msg_class("std_msgs/msg/MultiArrayLayout")(dim=[], data_offset=0)
                pub.publish(msgs.msg_class("std_msgs/msg/Float64MultiArray")(layout=layout, data=positions[0]))

    def _action_chunk_msg(self, result):
        from dreamzero_policy.chunk import trajectory_points

        emb, chunk = self.embodiment, result.chunk
        names = emb.joint_names + emb.gripper_joints
        targets = np.concatenate([chunk.positions, chunk.gripper], axis=1)  # [T, J + G]
        start = np.concatenate([chunk.anchor.positions, chunk.anchor.gripper])
        points = trajectory_points(targets, chunk.dt_ns / 1e9, start)
        trajectory = joint_trajectory_msg(names, points.positions, points.velocities, chunk.dt_ns, chunk.t_obs_ns)
        raw = np.ascontiguousarray(result.raw_actions, np.float32)
        return msgs.msg_class("dreamzero_msgs/msg/ActionChunk")(
            header=msgs.header(chunk.t_obs_ns), chunk_index=result.index, joint_names=names, trajectory=trajectory,
            raw_actions=raw.reshape(-1), raw_steps=raw.shape[0], raw_dim=raw.shape[1],
            inference_latency=result.inference_s, instruction=result.instruction, session_call=result.session_call,
            current_start_frame=result.current_start_frame, session_reset=result.reset_reason is not None)

    # ================================================= status ======================================================
    def _on_status_tick(self) -> None:
        with self._lock:
            graveyard, self._graveyard = self._graveyard, []
        for entity in graveyard:
            try:
                _destroy(entity)
            except Exception as e:
                self.log.warning("could not destroy %r: %s", entity, e)
        self._publish_status()
        self._publish_diagnostics()

    def counters(self) -> dict[str, int]:
        """Every counter by name (the PolicyStatus fields are sums of these)."""
        out: dict[str, int] = {f"input.{k}": int(v) for k, v in self._inputs.items()}
        safety = self.safety.counters() if self.safety is not None else {r.name: 0 for r in SafetyRefusal}
        out.update({f"safety.{k}": int(v) for k, v in safety.items()})
        if self.session is not None:
            out.update({f"session.{k}": v for k, v in self.session.stats().items()})
            out.update({f"session.resets.{k}": v for k, v in self.session.resets_by_reason().items()})
        if self.commander is not None:
            out.update({f"commander.{k}": v for k, v in self.commander.counters().items()})
        for ctrl, sink in self._controller_pubs:
            if ctrl.interface == "follow_joint_trajectory":
                out.update({f"controller.{ctrl.name}.{k}": v for k, v in sink.counters().items()})
        if self.buffer is not None:
            out.update({f"block_buffer.{k}": v for k, v in self.buffer.stats().items()})
        out["middleware.callback_errors"] = int(self.mw.callback_errors)
        out["node.chunks_published"] = self._chunks_published
        out["node.configure_errors"] = self._configure_errors
        return out

    def status_msg(self):
        counts = self.counters()
        fields: dict[str, int] = {}
        for name, reasons in SAFETY_FIELDS.items():
            fields[name] = sum(counts.get(f"safety.{r}", 0) for r in reasons)
        fields["refusals_malformed_image"] = counts.get("input.malformed_image", 0)
        fields["refusals_bad_joint_state"] = counts.get("input.bad_joint_state", 0)
        fields["refusals_out_of_order_stamps"] = (counts.get("input.out_of_order_stamp", 0)
                                                  + counts.get("commander.chunks_out_of_order", 0))
        fields["refusals_exception"] = (counts.get("input.exception", 0) + counts.get("session.errors", 0)
                                        + counts.get("middleware.callback_errors", 0)
                                        + counts.get("commander.send_errors", 0))
        fields["refusals_total"] = sum(fields.values())
        p50, p90, p99 = self.latency.percentiles("inference") if self.latency is not None else (0.0, 0.0, 0.0)
        model = self.model
        return msgs.msg_class("dreamzero_msgs/msg/PolicyStatus")(
            header=msgs.header(self.mw.now_ns()), lifecycle_state=self.state, instruction=self._instruction,
            chunks_published=self._chunks_published, **fields,
            counter_names=list(counts), counter_values=np.array([max(0, int(v)) for v in counts.values()], np.uint64),
            latency_p50=p50, latency_p90=p90, latency_p99=p99,
            model_name=model.model_name if model else "", checkpoint=model.checkpoint_path if model else "",
            embodiment=self.embodiment.name if self.embodiment is not None else "",
            device=model.device if model else "")

    def _publish_status(self) -> None:
        try:
            self._status_pub.publish(self.status_msg())
        except Exception as e:
            self._rate_log("status", logging.ERROR, "status not published: %s: %s", type(e).__name__, e)

    def _publish_diagnostics(self) -> None:
        types = msgs.typestore().types
        key_value = types["diagnostic_msgs/msg/KeyValue"]
        values = [key_value(key="lifecycle_state", value=self.state), key_value(key="instruction",
                                                                                   value=self._instruction)]
        values += [key_value(key=k, value=str(v)) for k, v in sorted(self.counters().items())]
        if self.latency is not None:
            for stage, (p50, p90, p99, n) in self.latency.summary().items():
                values.append(key_value(key=f"latency.{stage}_ms",
                                        value=f"p50 {p50 * 1e3:.1f} p90 {p90 * 1e3:.1f} p99 {p99 * 1e3:.1f} n {n}"))
        if self._last_error:
            values.append(key_value(key="last_configure_error", value=self._last_error))
        level, message = 0, self.state
        if self.state == "unconfigured" and self._last_error:
            level, message = 2, f"configure failed: {self._last_error}"
        elif self.state != "active":
            level = 1
        elif self.commander is not None and self.commander.holding:
            level, message = 1, "active, holding"
        elif not self._instruction:
            level, message = 1, "active, waiting for an instruction"
        status = types["diagnostic_msgs/msg/DiagnosticStatus"](
            level=level, name=f"dreamzero_policy: {self.mw.namespace.rstrip('/')}/{self.mw.node_name}",
            message=message, hardware_id=self.model.device if self.model else "", values=values)
        try:
            self._diag_pub.publish(types["diagnostic_msgs/msg/DiagnosticArray"](
                header=msgs.header(self.mw.now_ns()), status=[status]))
        except Exception as e:
            self._rate_log("diagnostics", logging.ERROR, "diagnostics not published: %s: %s", type(e).__name__, e)


def joint_trajectory_msg(joint_names: Sequence[str], positions: np.ndarray, velocities: np.ndarray, dt_ns: int,
                         stamp_ns: int):
    """trajectory_msgs/JointTrajectory: point i at time_from_start (i + 1) dt with positions and velocities."""
    types = msgs.typestore().types
    point, duration = types["trajectory_msgs/msg/JointTrajectoryPoint"], types["builtin_interfaces/msg/Duration"]
    empty = np.zeros(0)
    points = []
    for i in range(positions.shape[0]):
        sec, nanosec = divmod((i + 1) * int(dt_ns), 1_000_000_000)
        points.append(point(positions=np.ascontiguousarray(positions[i], np.float64),
                            velocities=np.ascontiguousarray(velocities[i], np.float64), accelerations=empty,
                            effort=empty, time_from_start=duration(sec=sec, nanosec=nanosec)))
    return types["trajectory_msgs/msg/JointTrajectory"](header=msgs.header(stamp_ns), joint_names=list(joint_names),
                                                        points=points)


# ===================================================== drivers ======================================================
class PlainLifecycle:
    """The managed-node state machine in plain Python (DDS backend), with Trigger services for its transitions."""

    TRANSITIONS = ("configure", "activate", "deactivate", "cleanup", "shutdown")

    def __init__(self, node: PolicyNode, on_finalized: Callable[[], None] | None = None):
        self.node = node
        self._on_finalized = on_finalized
        trigger = msgs.msg_class("std_srvs/srv/Trigger_Response")
        for name in self.TRANSITIONS:
            node.mw.create_service(f"~/{name}", "std_srvs/srv/Trigger",
                                   lambda request, name=name: trigger(*self.trigger(name)))

    def trigger(self, transition: str) -> tuple[bool, str]:
        if transition not in self.TRANSITIONS:
            return False, f"unknown transition {transition!r}; valid: {list(self.TRANSITIONS)}"
        try:
            outcome = getattr(self.node, transition)()
            if self.node.state == "finalized" and self._on_finalized is not None:
                self._on_finalized()
            return outcome
        except Exception as e:  # a transition must never take the process down
            self.node.log.exception("%s failed", transition)
            return False, f"{transition} failed: {type(e).__name__}: {e}"


def _ros_node_class():
    """The rclpy lifecycle node class (rclpy is imported only here, when the rclpy backend runs)."""
    from rcl_interfaces.msg import SetParametersResult
    from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
    from rclpy.parameter import Parameter

    class RosPolicyNode(LifecycleNode):
        """rclpy.lifecycle node: parameters declared from params.PARAMS; transitions delegate to PolicyNode."""

        def __init__(self, node_name: str, namespace: str, overrides: Mapping[str, Any]):
            super().__init__(node_name, namespace=namespace,
                             parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
            for spec in params.PARAMS:
                self.declare_parameter(spec.name, spec.default, params.ros_descriptor(spec))
            self.add_on_set_parameters_callback(self._check_parameters)
            self.mw = create_middleware("rclpy", node=self)
            logger = logging.getLogger("dreamzero_policy")
            logger.addHandler(_RosLogHandler(self.get_logger()))
            logger.propagate = False
            self.policy = PolicyNode(self.mw, self._read_parameters, logging.getLogger("dreamzero_policy.node"))

        def _read_parameters(self) -> dict[str, Any]:
            return {spec.name: self.get_parameter(spec.name).value for spec in params.PARAMS}

        def _check_parameters(self, parameters) -> SetParametersResult:
            for p in parameters:
                if p.name in params.SPECS:
                    try:
                        params.check_value(p.name, p.value)
                    except DreamZeroError as e:
                        return SetParametersResult(successful=False, reason=str(e))
            return SetParametersResult(successful=True)

        @staticmethod
        def _result(outcome: tuple[bool, str]):
            return TransitionCallbackReturn.SUCCESS if outcome[0] else TransitionCallbackReturn.FAILURE

        def on_configure(self, state):
            return self._result(self.policy.configure())

        def on_activate(self, state):
            outcome = self.policy.activate()
            return super().on_activate(state) if outcome[0] else self._result(outcome)

        def on_deactivate(self, state):
            outcome = self.policy.deactivate()
            return super().on_deactivate(state) if outcome[0] else self._result(outcome)

        def on_cleanup(self, state):
            return self._result(self.policy.cleanup())

        def on_shutdown(self, state):
            return self._result(self.policy.shutdown())

        def on_error(self, state):
            self.policy.log.error("lifecycle error while %s; releasing the model", state.label)
            if self.policy.state == "active":
                self.policy.deactivate()
            if self.policy.state == "inactive":
                self.policy.cleanup()
            return TransitionCallbackReturn.SUCCESS

    return RosPolicyNode


class _RosLogHandler(logging.Handler):
    """Python logging -> the rclpy node logger (so the runtime's lines reach /rosout)."""

    def __init__(self, ros_logger):
        super().__init__()
        self._ros = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno >= logging.ERROR:
                self._ros.error(text)
            elif record.levelno >= logging.WARNING:
                self._ros.warning(text)
            elif record.levelno >= logging.INFO:
                self._ros.info(text)
            else:
                self._ros.debug(text)
        except Exception:
            self.handleError(record)


# ===================================================== command line =================================================
def split_ros_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(own arguments, ROS arguments): everything between `--ros-args` and `--` (or the end) is ROS's."""
    own, ros, inside = [], [], False
    for arg in argv:
        if arg == "--ros-args":
            inside = True
        elif inside and arg == "--":
            inside = False
        elif inside:
            ros.append(arg)
        else:
            own.append(arg)
    return own, ros


def parse_ros_args(ros: Sequence[str]) -> tuple[list[str], dict[str, Any], dict[str, str]]:
    """The parts of ROS arguments the DDS backend honours: (params files, -p values, -r __node/__ns)."""
    files, values, remaps = [], {}, {}
    it = iter(ros)
    for arg in it:
        if arg == "--params-file":
            files.append(next(it, ""))
        elif arg in ("-p", "--param"):
            name, _, text = next(it, "").partition(":=")
            if name.split(":")[-1] in params.SPECS:
                name = name.split(":")[-1]
                values[name] = params.parse_text_value(name, text)
        elif arg in ("-r", "--remap"):
            key, _, value = next(it, "").partition(":=")
            if key.split(":")[-1] in ("__node", "__name", "__ns"):
                remaps[key.split(":")[-1]] = value
    return files, values, remaps


def parse_command_line(argv: Sequence[str]) -> argparse.Namespace:
    """Command-line options; `options.values` holds the parameters from files, -p and flags (validated later)."""
    own, ros = split_ros_args(argv)
    parser = argparse.ArgumentParser(prog="dreamzero-policy", description=(
        "DreamZero policy node. Every parameter is also a flag (--num-steps 4); --params-file reads a ROS 2 "
        "parameter YAML (e.g. config/franka_droid.params.yaml). Precedence: defaults < parameter files "
        "(--params-file, then --ros-args --params-file) < --ros-args -p < flags."))
    parser.add_argument("--params-file", action="append", default=[], help="ROS 2 parameter YAML file")
    parser.add_argument("--autostart", action=argparse.BooleanOptionalAction, default=None,
                        help="configure and activate at start (default: yes on the dds backend, no on rclpy where "
                             "the launch file or `ros2 lifecycle set` drives the transitions); --no-autostart "
                             "stays unconfigured")
    parser.add_argument("--node-name", default=None, help=f"node name (default {params.NODE_NAME})")
    parser.add_argument("--namespace", default=None, help="node namespace (default /)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    for spec in params.PARAMS:
        kind = "true|false" if spec.type is bool else spec.type.__name__
        parser.add_argument(params.cli_flag(spec.name), dest=f"param_{spec.name}", default=None, metavar=kind.upper(),
                            help=f"{spec.description} [{spec.rule}; default {spec.default!r}]")
    options = parser.parse_args(own)
    files, ros_values, remaps = parse_ros_args(ros)
    options.node_name = options.node_name or remaps.get("__node") or remaps.get("__name") or params.NODE_NAME
    options.namespace = options.namespace or remaps.get("__ns") or "/"
    options.flag_values = {spec.name: params.parse_text_value(spec.name, getattr(options, f"param_{spec.name}"))
                           for spec in params.PARAMS if getattr(options, f"param_{spec.name}") is not None}
    values: dict[str, Any] = {}
    for path in options.params_file + files:
        values.update(params.load_params_file(path, options.node_name, options.namespace))
    values.update(ros_values)
    values.update(options.flag_values)
    options.values = values
    # rclpy reads parameter files and -p itself: --params-file flags go first into its ROS arguments, and the
    # flags become parameter overrides (which win, as they do here).
    options.ros_args = [arg for path in options.params_file for arg in ("--params-file", path)] + list(ros)
    middleware = values.get("middleware", "auto")
    options.middleware = ("rclpy" if rclpy_available() else "dds") if middleware == "auto" else middleware
    if options.autostart is None:
        options.autostart = options.middleware == "dds"
    return options


def run_dds(options: argparse.Namespace) -> int:
    """The node on the built-in DDS backend; the lifecycle runs in plain Python. Returns the exit code."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if options.values.get("use_sim_time"):
        _log.warning("use_sim_time is not supported on the dds backend: stamps are compared with the wall clock")
    mw = create_middleware("dds", node_name=options.node_name, namespace=options.namespace)
    node = None
    try:
        node = PolicyNode(mw, lambda: dict(options.values))
        lifecycle = PlainLifecycle(node, on_finalized=stop.set)
        if options.autostart and lifecycle.trigger("configure")[0]:
            lifecycle.trigger("activate")
        mw.spin(stop)
    finally:
        if node is not None:
            node.shutdown()
        mw.shutdown()
    return 0


def run_rclpy(options: argparse.Namespace) -> int:
    """The node as an rclpy lifecycle node (rclpy handles the ROS arguments). Returns the exit code."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=["dreamzero-policy", "--ros-args", *options.ros_args] if options.ros_args else ["dreamzero-policy"])
    node = _ros_node_class()(options.node_name, options.namespace, options.flag_values)
    try:
        if options.autostart:
            node.trigger_configure()
            if node.policy.state == "inactive":
                node.trigger_activate()
        node.mw.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.policy.shutdown()
        node.mw.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        options = parse_command_line(sys.argv[1:] if argv is None else argv)
    except DreamZeroError as e:
        print(f"dreamzero-policy: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=options.log_level.upper(), stream=sys.stderr,
                        format="[%(levelname)s] [%(asctime)s] [%(name)s]: %(message)s")
    if options.middleware == "rclpy" and not rclpy_available():
        _log.error("middleware rclpy needs a sourced ROS 2 install (import rclpy fails); use --middleware dds")
        return 2
    return run_rclpy(options) if options.middleware == "rclpy" else run_dds(options)


if __name__ == "__main__":
    sys.exit(main())
