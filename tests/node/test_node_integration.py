"""The node end to end, in separate processes over real DDS on loopback.

  robot process   tests/node/robot.py: three cameras (wrist rgb8 Image 30 Hz, exterior_1 JPEG CompressedImage 15 Hz,
                  exterior_2 bgr8 Image 30 Hz, 320x180) and joint states at 30 Hz; follows the trajectories it gets
  node process    python -m dreamzero_policy.node (built-in DDS backend) with the tiny random-weight checkpoint
  misfit process  the node with a checkpoint whose statistics do not fit franka_droid (namespace /misfit)
  this process    subscribes to the controller topics, ~/action_chunk, ~/status and /diagnostics (raw CDR bytes),
                  publishes the instruction, calls the services

The tests share the processes and run in file order; each phase takes a few seconds.
"""
from __future__ import annotations

import signal
import time

import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from dreamzero_policy import msgs
from dreamzero_policy.embodiment import load_embodiment
from dreamzero_policy.middleware import QoS, create_middleware
from nodetest_util import REPO, Monitor, start_node, start_robot, wait_until

FRANKA = load_embodiment("franka_droid")
ARM, GRIPPER = FRANKA.controller.name, FRANKA.gripper_controller.name
CHUNK, STATUS = "/dreamzero_policy/action_chunk", "/dreamzero_policy/status"
MISFIT_STATUS, DIAG = "/misfit/dreamzero_policy/status", "/diagnostics"
BLOCK_PERIOD_S = FRANKA.action_horizon / FRANKA.control_rate_hz  # one block of 8 frames at 5 fps = one chunk
PLAIN = get_typestore(Stores.ROS2_JAZZY)  # plain rosbags, no dreamzero types: what any ROS 2 tool sees


class System:
    def __init__(self, mw, monitor, robot, node, misfit):
        self.mw, self.monitor, self.robot, self.node, self.misfit = mw, monitor, robot, node, misfit
        self.instruction_pub = mw.create_publisher("/dreamzero/instruction", "std_msgs/msg/String", QoS.LATCHED)
        self.clients = {}

    # --- decoded views ---
    def trajectories(self, topic: str = ARM, start: int = 0):
        return [(t, PLAIN.deserialize_cdr(b, "trajectory_msgs/msg/JointTrajectory"))
                for t, b in self.monitor.since(topic, start)]

    def chunks(self, start: int = 0):
        return [(t, msgs.deserialize(b, "dreamzero_msgs/msg/ActionChunk")) for t, b in self.monitor.since(CHUNK, start)]

    def status(self, topic: str = STATUS):
        received = self.monitor.since(topic)
        return msgs.deserialize(received[-1][1], "dreamzero_msgs/msg/PolicyStatus") if received else None

    def diagnostics(self, node: str = "/dreamzero_policy") -> tuple[int, str, dict] | None:
        for _, data in reversed(self.monitor.since(DIAG)):
            for status in PLAIN.deserialize_cdr(data, "diagnostic_msgs/msg/DiagnosticArray").status:
                if status.name.endswith(f": {node}"):
                    return status.level, status.message, {kv.key: kv.value for kv in status.values}
        return None

    def counter(self, key: str, node: str = "/dreamzero_policy") -> int:
        diag = self.diagnostics(node)
        return int(diag[2].get(key, 0)) if diag else 0

    def wait_counter(self, key: str, at_least: int, node: str = "/dreamzero_policy", timeout_s: float = 5.0) -> int:
        """The /diagnostics counter `key` once it reaches `at_least` (published at 1 Hz)."""
        value = wait_until(lambda: (v := self.counter(key, node)) >= at_least and v, timeout_s)
        assert value, f"{key} = {self.counter(key, node)} < {at_least}"
        return value

    def wait_chunk(self, start: int, predicate=lambda c: True, timeout_s: float = 20.0):
        found = wait_until(lambda: next((c for _, c in self.chunks(start) if predicate(c)), None), timeout_s)
        assert found is not None, f"no matching ActionChunk within {timeout_s} s\n{self.node.log()}"
        return found

    def wait_status(self, predicate, topic: str = STATUS, timeout_s: float = 10.0):
        found = wait_until(lambda: (s := self.status(topic)) is not None and predicate(s) and s, timeout_s)
        assert found, f"status never matched; last: {self.status(topic)}\n{self.node.log()}"
        return found

    def call(self, service: str, srvtype: str = "std_srvs/srv/Trigger", **fields):
        if service not in self.clients:
            self.clients[service] = self.mw.create_client(service, srvtype)
            assert self.clients[service].wait_for_service(10.0), service
        request = msgs.msg_class(f"{srvtype}_Request")
        request = request(**fields) if fields else request(structure_needs_at_least_one_member=0)
        return self.clients[service].call(request, timeout_s=30.0)


def is_hold(traj) -> bool:
    return len(traj.points) == 1 and traj.header.stamp.sec == 0 and traj.header.stamp.nanosec == 0


@pytest.fixture(scope="module")
def system(dds_env, node_domain_id, tiny_checkpoint, misfit_checkpoint, mixed_camera_embodiment):
    mw = create_middleware("dds", node_name="test_monitor", domain_id=node_domain_id)
    monitor = Monitor(mw, {ARM: "trajectory_msgs/msg/JointTrajectory", GRIPPER: "trajectory_msgs/msg/JointTrajectory",
                           CHUNK: "dreamzero_msgs/msg/ActionChunk", STATUS: "dreamzero_msgs/msg/PolicyStatus",
                           MISFIT_STATUS: "dreamzero_msgs/msg/PolicyStatus",
                           DIAG: "diagnostic_msgs/msg/DiagnosticArray"})
    mw.spin_background()
    # The sampler is cut to 1 step without CFG, and the allowed inference delay raised to 1.5 s (< the 1.6 s chunk),
    # so that a shared 2-core machine keeps up with 5 fps blocks.
    node = start_node(dds_env, "--params-file", str(REPO / "config" / "franka_droid.params.yaml"),
                      "--checkpoint", str(tiny_checkpoint), "--embodiment", str(mixed_camera_embodiment),
                      "--device", "cpu", "--num-steps", "1", "--cfg-scale", "1.0", "--inference-delay-ms", "1500",
                      "--instruction", "pick up the red cup", "--log-period-s", "30")
    misfit = start_node(dds_env, "--checkpoint", str(misfit_checkpoint), "--embodiment", "franka_droid",
                        "--namespace", "/misfit", "--device", "cpu")
    robot = None
    try:
        robot = start_robot(mixed_camera_embodiment, node_domain_id, dds_env)
        system = System(mw, monitor, robot, node, misfit)
        assert wait_until(lambda: monitor.count(CHUNK) >= 1, 120), f"no chunk from the node\n{node.log()}"
        yield system
    finally:
        import os
        if os.environ.get("DZ_DUMP"):
            print("\n".join(node.lines), "\n=====\n", "\n".join(misfit.lines))
        for proc in (node, misfit, robot):
            if proc is not None:
                proc.stop(terminate=True)
        mw.shutdown()


def test_chunks_arrive_as_standard_trajectories(system):
    assert wait_until(lambda: system.monitor.count(CHUNK) >= 3, 30), system.node.log()
    first = system.chunks()[0][1]
    assert first.session_reset and first.session_call == 0 and first.current_start_frame == 1
    for _, chunk in system.chunks():
        assert chunk.instruction == "pick up the red cup"
        assert list(chunk.joint_names) == FRANKA.joint_names + FRANKA.gripper_joints
        assert (chunk.raw_steps, chunk.raw_dim, chunk.raw_actions.size) == (24, 8, 24 * 8)
        assert len(chunk.trajectory.points) == 24 and chunk.inference_latency > 0

    moves = [traj for _, traj in system.trajectories() if not is_hold(traj)]
    assert moves, "no trajectory on the arm controller"
    for traj in moves:  # decoded by plain rosbags: a standard trajectory_msgs/msg/JointTrajectory
        assert list(traj.joint_names) == FRANKA.joint_names
        assert 1 <= len(traj.points) <= 24  # the actions already due when the chunk arrived are dropped
        times = np.array([msgs.time_to_ns(p.time_from_start) for p in traj.points])
        assert np.all(np.diff(times) > 0) and abs(times[0] - FRANKA.dt_ns) <= 1
        positions = np.array([p.positions for p in traj.points])
        velocities = np.array([p.velocities for p in traj.points])
        assert positions.shape == velocities.shape == (len(traj.points), 7)
        assert np.all(positions >= FRANKA.lower - 1e-9) and np.all(positions <= FRANKA.upper + 1e-9)
        assert np.isfinite(velocities).all() and np.all(velocities[-1] == 0)
        assert msgs.time_to_ns(traj.header.stamp) > 0  # the planned start on the observation clock
    grippers = [traj for _, traj in system.trajectories(GRIPPER)]
    assert grippers and all(list(g.joint_names) == ["fr3_finger_joint1"] for g in grippers)
    assert all(0.0 <= p.positions[0] <= 0.04 for g in grippers for p in g.points)


def test_node_keeps_up(system):
    start = system.monitor.count(CHUNK)
    assert wait_until(lambda: system.monitor.count(CHUNK) >= start + 3, 4 * BLOCK_PERIOD_S + 10), system.node.log()
    received = system.chunks()
    times = np.array([t for t, _ in received[1:]]) / 1e9  # after the single-frame reset chunk
    rate = (len(times) - 1) / (times[-1] - times[0])
    ages = [(t - msgs.time_to_ns(c.header.stamp)) / 1e9 for t, c in received]  # observation -> chunk received
    latencies = [c.inference_latency for _, c in received]
    print(f"\nchunk rate {rate:.3f}/s (blocks {1 / BLOCK_PERIOD_S:.3f}/s); inference latency "
          f"p50 {np.median(latencies):.3f} s, max {max(latencies):.3f} s; observation->chunk age p50 "
          f"{np.median(ages):.3f} s, max {max(ages):.3f} s; {len(received)} chunks")
    assert rate >= 0.5 / BLOCK_PERIOD_S, f"chunk rate {rate:.3f}/s against {1 / BLOCK_PERIOD_S:.3f} blocks/s"
    assert max(ages[-3:]) < 2 * BLOCK_PERIOD_S, ages  # no backlog: every chunk is built from recent frames
    counts = system.wait_status(lambda s: s.chunks_published >= 3)
    assert counts.latency_p50 > 0 and counts.latency_p99 >= counts.latency_p50
    diag = system.diagnostics()[2]
    accounted = sum(int(diag.get(f"session.{k}", 0)) for k in ("chunks", "chunks_discarded", "errors",
                                                                "blocks_without_instruction"))
    assert 0 <= int(diag["block_buffer.blocks"]) - accounted <= 1, diag  # every block handed over is accounted for
    assert "latency.engine.denoise_ms" in diag and "latency.inference_ms" in diag
    print("per stage: " + "; ".join(f"{k[8:-3]} {v}" for k, v in diag.items() if k.startswith("latency.")))
    print(f"plan ran out (NO_TARGETS holds) {diag['safety.NO_TARGETS']} times in {diag['session.chunks']} chunks; "
          f"blocks skipped {diag['session.blocks_skipped']}")


def test_instruction_change_resets_the_session(system):
    start = system.monitor.count(CHUNK)
    system.instruction_pub.publish(msgs.msg_class("std_msgs/msg/String")(data="Stack the green blocks"))
    chunk = system.wait_chunk(start, lambda c: c.instruction == "Stack the green blocks")
    assert chunk.session_reset and chunk.session_call == 0 and chunk.current_start_frame == 1
    system.wait_status(lambda s: s.instruction == "Stack the green blocks")
    system.wait_counter("session.resets.instruction changed", 1)


def test_set_instruction_service(system):
    refused = system.call("/dreamzero_policy/set_instruction", "dreamzero_msgs/srv/SetInstruction",
                          instruction="  ", reset=False)
    assert not refused.success and "non-empty" in refused.message
    start = system.monitor.count(CHUNK)
    done = system.call("/dreamzero_policy/set_instruction", "dreamzero_msgs/srv/SetInstruction",
                       instruction="open the drawer", reset=False)
    assert done.success and "new episode" in done.message
    chunk = system.wait_chunk(start, lambda c: c.instruction == "open the drawer")
    assert chunk.session_reset and chunk.session_call == 0


def test_reset_service_holds_then_starts_a_new_episode(system):
    arm_start, chunk_start = system.monitor.count(ARM), system.monitor.count(CHUNK)
    response = system.call("/dreamzero_policy/reset")
    assert response.success and "new episode" in response.message
    hold = wait_until(lambda: next((t for _, t in system.trajectories(ARM, arm_start) if is_hold(t)), None), 5)
    assert hold is not None, "no hold trajectory after ~/reset"
    assert np.all(np.array(hold.points[0].velocities) == 0)
    chunk = system.wait_chunk(chunk_start)
    assert chunk.session_reset and chunk.session_call == 0 and chunk.current_start_frame == 1
    system.wait_counter("session.resets.reset requested", 1)
    # episode resets (instruction, service) never look like silent streams to the watchdog
    assert system.counter("safety.STALE_CAMERA") == system.counter("safety.STALE_JOINTS") == 0


BAD_INPUTS = ("malformed_image", "corrupt_compressed", "nan_joint", "missing_joint", "backwards_stamp",
              "reordered_joints")


def test_bad_inputs_are_refused_counted_and_logged_once(system):
    before = system.status()
    for kind in BAD_INPUTS:
        system.robot.send(cmd="bad", kind=kind)
        system.robot.expect("sent", kind=kind)
    after = system.wait_status(lambda s: s.refusals_malformed_image >= before.refusals_malformed_image + 2
                               and s.refusals_bad_joint_state >= before.refusals_bad_joint_state + 2
                               and s.refusals_out_of_order_stamps >= before.refusals_out_of_order_stamps + 1)
    assert after.refusals_bad_joint_state == before.refusals_bad_joint_state + 2  # reordered joints are fine
    assert after.refusals_total >= before.refusals_total + 5
    table = dict(zip(after.counter_names, after.counter_values.tolist()))  # every counter, by name
    assert table["input.malformed_image"] == after.refusals_malformed_image
    assert "safety.VELOCITY_LIMIT" in table and "session.blocks_skipped" in table
    log = system.node.lines
    for text in ("camera wrist dropped (malformed image)", "camera exterior_1 dropped (malformed image)",
                 "joint states dropped (bad joint state): position[fr3_joint3]",
                 "joint states dropped (bad joint state): name: expected joint 'fr3_joint4' present",
                 "joint states dropped (out of order stamp)"):
        assert sum(text in line for line in log) == 1, (text, "\n".join(log[-40:]))
    start = system.monitor.count(CHUNK)
    system.wait_chunk(start)  # still running
    assert system.node.alive
    assert all(np.isfinite(np.array([p.positions for p in t.points])).all() for _, t in system.trajectories())


def test_camera_stop_holds_and_counts_stale_observations(system):
    arm_start = system.monitor.count(ARM)
    stale_before = system.status().refusals_stale_observation
    system.robot.send(cmd="stop_camera", camera="exterior_2")
    hold_at = wait_until(lambda: next((i for i, (_, t) in enumerate(system.trajectories(ARM, arm_start))
                                       if is_hold(t)), None) is not None and time.monotonic(), 5)
    assert hold_at, f"no hold after a camera stopped\n{system.node.log()}"
    held_from = len(system.trajectories(ARM, arm_start))
    time.sleep(1.5)
    after = system.trajectories(ARM, arm_start)[held_from:]
    assert not after, f"{len(after)} trajectories sent while holding"
    status = system.wait_status(lambda s: s.refusals_stale_observation >= stale_before + 10)
    assert wait_until(lambda: (d := system.diagnostics()) and d[0] == 1 and d[1] == "active, holding"
                      and int(d[2]["safety.STALE_CAMERA"]) >= 10, 5), system.diagnostics()
    chunk_start = system.monitor.count(CHUNK)
    system.robot.send(cmd="start_camera", camera="exterior_2")
    chunk = system.wait_chunk(chunk_start)
    assert chunk.session_reset
    system.wait_counter("session.resets.observations stale", 1)
    assert wait_until(lambda: any(not is_hold(t) for _, t in system.trajectories(ARM, arm_start + held_from)), 10)
    assert status.lifecycle_state == "active"


def test_deactivate_holds_and_activate_resumes(system):
    arm_start = system.monitor.count(ARM)
    response = system.call("/dreamzero_policy/deactivate")
    assert response.success and "holding" in response.message
    system.wait_status(lambda s: s.lifecycle_state == "inactive")
    sent = system.trajectories(ARM, arm_start)
    assert sent and is_hold(sent[-1][1])
    time.sleep(1.0)
    assert len(system.trajectories(ARM, arm_start)) == len(sent)  # inactive: nothing more
    chunk_start = system.monitor.count(CHUNK)
    assert system.call("/dreamzero_policy/activate").success
    chunk = system.wait_chunk(chunk_start)
    assert chunk.session_reset and system.status().lifecycle_state == "active"


def test_misfit_checkpoint_leaves_the_node_up_and_unconfigured(system):
    status = system.wait_status(lambda s: s.lifecycle_state == "unconfigured", topic=MISFIT_STATUS)
    assert status.chunks_published == 0 and system.misfit.alive
    failures = [line for line in system.misfit.lines if "configure failed" in line]
    assert len(failures) == 1 and "'gripper_position'" in failures[0] and "franka_droid" in failures[0], failures
    retry = system.call("/misfit/dreamzero_policy/configure")
    assert not retry.success and "gripper_position" in retry.message
    level, message, values = wait_until(lambda: (d := system.diagnostics("/misfit/dreamzero_policy"))
                                        and int(d[2]["node.configure_errors"]) >= 2 and d, 5)
    assert level == 2 and message.startswith("configure failed")


def test_sigterm_holds_and_exits_cleanly(system):
    arm_start = system.monitor.count(ARM)
    system.node.proc.send_signal(signal.SIGTERM)
    assert system.node.proc.wait(timeout=30) == 0, system.node.log()
    assert wait_until(lambda: any(is_hold(t) for _, t in system.trajectories(ARM, arm_start)), 5)
