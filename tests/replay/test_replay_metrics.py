"""Replay on simulator bags: exact metrics through the oracle seam, the same outputs as the live node, the splice
timing of the simulated inference delay."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from dreamzero_policy import msgs
from dreamzero_policy.replay import ReplayOptions, oracle_factory, replay_bag
from dreamzero_policy.replay.bagio import open_bag
from replaytest_util import node_params

ARM_TOPIC = "/fr3_arm_controller/joint_trajectory"
CHUNK_TOPIC = "/dreamzero_policy/action_chunk"
EXACT = 1e-9  # float64 round-off of normalise -> unnormalise and relative -> absolute


@pytest.mark.parametrize("fmt", ["mcap", "sqlite3"])
def test_oracle_replay_has_zero_error(sim_bags, tiny_checkpoint, fmt):
    """A policy that returns the recorded commands scores zero on every joint, step and gripper."""
    for bag in sim_bags[fmt]:
        result = replay_bag(bag, ReplayOptions(node_params=node_params(tiny_checkpoint)),
                            engine_factory=oracle_factory())
        summary = result.errors.summary()
        assert len(result.chunks) >= 3 and summary["chunks"] == len(result.chunks)
        for joint, m in summary["per_joint"].items():
            assert m["samples"] > 20, joint
            assert m["mae"] < EXACT and m["rmse"] < EXACT and m["final_step_error"] < EXACT, (joint, m)
            assert m["max_abs_error"] < EXACT
        assert all(v < EXACT for v in summary["per_step"]["mae"] if v is not None)
        assert summary["per_step"]["samples"][0] > summary["per_step"]["samples"][-1] > 0  # late steps run past
        assert summary["gripper"]["fr3_finger_joint1"]["agreement"] == 1.0
        assert result.model["engine"] == "OracleEngine"


def test_oracle_with_a_known_bias_scores_exactly_the_bias(sim_bags, tiny_checkpoint):
    bias = np.array([0.01, -0.02, 0.03, 0.0, 0.05, -0.01, 0.02, -0.004])  # 7 arm joints (rad) + finger (m)
    result = replay_bag(sim_bags["mcap"][0], ReplayOptions(node_params=node_params(tiny_checkpoint)),
                        engine_factory=oracle_factory(bias))
    summary = result.errors.summary()
    for k, joint in enumerate(result.joints):
        m = summary["per_joint"][joint]
        assert abs(m["mae"] - abs(bias[k])) < EXACT, (joint, m)
        assert abs(m["rmse"] - abs(bias[k])) < EXACT
        assert abs(m["mean_error"] - bias[k]) < EXACT
        assert abs(m["final_step_error"] - abs(bias[k])) < EXACT
    arm = np.abs(bias[:7]).mean()
    assert abs(summary["arm"]["mae"] - arm) < EXACT
    assert abs(summary["arm"]["rmse"] - np.sqrt((bias[:7] ** 2).mean())) < EXACT
    assert all(abs(v - arm) < EXACT for v in summary["per_step"]["mae"] if v is not None)
    assert summary["gripper"]["fr3_finger_joint1"]["agreement"] == 1.0  # 4 mm does not flip open/closed


def _live_node_outputs(bag_path, values) -> list:
    """The live node: PolicyNode.activate() starts its own session worker thread, fed the bag's messages in order
    (the test waits for the worker after each message, so the blocks it sees are the same as in replay)."""
    from dreamzero_policy.node import PolicyNode
    from dreamzero_policy.replay.middleware import BagClock, BagTimeMiddleware

    with open_bag(bag_path) as bag:
        messages = [(c.topic, t, bag.deserialize(raw, c.msgtype)) for c, t, raw in bag.messages()]
    outputs = []
    clock = BagClock(messages[0][1])
    mw = BagTimeMiddleware(clock, sink=lambda topic, msgtype, msg, t: outputs.append((t, topic, msgtype, msg)))
    node = PolicyNode(mw, lambda: dict(values))
    ok, message = node.configure()
    assert ok, message
    session = node.session
    go, done = threading.Semaphore(0), threading.Semaphore(0)
    run_once = session.run_once

    def one_step_per_message(timeout_s=0.0):  # called by the worker thread's own loop (Session._run)
        if not go.acquire(timeout=timeout_s or 0.1):
            return None
        try:
            return run_once(0.0)
        finally:
            done.release()

    session.run_once = one_step_per_message
    try:
        assert node.activate()[0] and session.running
        for topic, t, msg in messages:
            mw.run_timers_until(t - 1)
            clock.advance(t)
            if mw.subscribed(topic):
                mw.deliver(topic, msg)
                go.release()
                assert done.acquire(timeout=120), "the session worker did not finish"
        mw.run_timers_until(messages[-1][1])
        mw.sink = None
    finally:
        node.shutdown()
        mw.shutdown()
    return outputs


def _comparable(outputs) -> list[tuple[int, str, bytes]]:
    out = []
    for t, topic, msgtype, msg in outputs:
        if topic == CHUNK_TOPIC:
            msg.inference_latency = 0.0  # wall-clock time: the only field that may differ
        elif not topic.endswith("/joint_trajectory"):
            continue  # status and diagnostics carry wall-clock latencies
        out.append((t, topic, msgs.serialize(msg, msgtype)))
    return out


def test_replay_publishes_exactly_what_the_live_node_publishes(sim_bags, tiny_checkpoint):
    """Same sensor stream -> byte-identical ActionChunk and controller messages at the same bag times, from the
    replay (synchronous session, bag-time delivery) and from the live node (its own worker thread)."""
    values = node_params(tiny_checkpoint)
    bag = sim_bags["mcap"][0]
    replayed = replay_bag(bag, ReplayOptions(node_params=values), keep_node_outputs=True)
    live = _comparable(_live_node_outputs(bag, values))
    ours = _comparable(replayed.node_outputs)
    chunks = [m for m in ours if m[1] == CHUNK_TOPIC]
    assert len(chunks) == len(replayed.chunks) >= 3
    assert {m[1] for m in ours} == {CHUNK_TOPIC, ARM_TOPIC, "/fr3_gripper_controller/joint_trajectory"}
    assert [(t, topic) for t, topic, _ in ours] == [(t, topic) for t, topic, _ in live]
    assert ours == live
    decoded = [msgs.deserialize(data, "dreamzero_msgs/msg/ActionChunk") for _, _, data in chunks]
    assert [c.session_call for c in decoded] == list(range(len(decoded))) and decoded[0].session_reset


def test_simulated_inference_delay_drops_the_actions_due_while_the_model_ran(sim_bags, tiny_checkpoint):
    bag = sim_bags["mcap"][1]
    dt_ns = round(1e9 / 15)
    runs = {}
    for delay_ms in (0.0, 500.0):
        runs[delay_ms] = replay_bag(bag, ReplayOptions(node_params=node_params(tiny_checkpoint),
                                                       inference_delay_ms=delay_ms), keep_node_outputs=True)
    for delay_ms, result in runs.items():
        delivered = [c for c in result.chunks if c.fate == "delivered"]
        assert len(delivered) >= 2
        for record in delivered:
            assert record.t_delivered_ns == record.t_inference_ns + round(delay_ms * 1e6)
            trajectory = next(m for t, topic, _, m in result.node_outputs
                              if topic == ARM_TOPIC and t == record.t_delivered_ns)
            consumed = (record.t_delivered_ns - record.t_obs_ns) // dt_ns
            assert consumed >= int(delay_ms * 1e6 // dt_ns)
            assert len(trajectory.points) == 24 - consumed
            assert msgs.time_to_ns(trajectory.header.stamp) == record.t_obs_ns + consumed * dt_ns
    assert [c.fate for c in runs[500.0].chunks][-1] == "after end"  # the last block + 0.5 s: past the bag's end
    # The model saw the same blocks: the chunks themselves do not depend on the simulated delay.
    assert [c.t_obs_ns for c in runs[0.0].chunks] == [c.t_obs_ns for c in runs[500.0].chunks]
    for a, b in zip(runs[0.0].chunks, runs[500.0].chunks):
        np.testing.assert_array_equal(a.predicted, b.predicted)
