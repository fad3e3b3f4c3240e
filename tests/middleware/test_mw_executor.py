"""The DDS backend's executor contract inside one process: one callback thread, timers, late entities, errors."""
from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest

from dreamzero_policy import msgs
from dreamzero_policy.middleware import MiddlewareError, QoS, create_middleware

from mwtest_util import wait_until

STORE = msgs.typestore()
String = STORE.types["std_msgs/msg/String"]


def test_callbacks_run_on_the_single_executor_thread(make_mw):
    pub_mw, sub_mw = make_mw("pub"), make_mw("sub")
    threads = queue.Queue()
    sub_mw.create_subscription("/t", "std_msgs/msg/String", lambda m: threads.put(("sub", threading.get_ident())),
                               QoS.RELIABLE)
    sub_mw.create_timer(0.01, lambda: threads.put(("timer", threading.get_ident())))
    executor = sub_mw.spin_background()
    pub = pub_mw.create_publisher("/t", "std_msgs/msg/String", QoS.RELIABLE)
    assert wait_until(lambda: pub.subscription_count() == 1, 10.0)
    pub.publish(String(data="x"))
    seen = {}
    deadline = time.monotonic() + 10.0
    while len(seen) < 2 and time.monotonic() < deadline:
        kind, ident = threads.get(timeout=10.0)
        seen[kind] = ident
    assert seen == {"sub": executor.ident, "timer": executor.ident}


def test_entities_created_after_spinning_started(make_mw):
    """A subscription and a timer added while the executor waits are served without restarting it."""
    pub_mw, sub_mw = make_mw("pub"), make_mw("sub")
    sub_mw.spin_background()
    time.sleep(0.05)                                     # the executor is now blocked in its wait
    got, ticks = queue.Queue(), queue.Queue()
    sub_mw.create_subscription("/late", "std_msgs/msg/String", got.put, QoS.RELIABLE)
    sub_mw.create_timer(0.02, lambda: ticks.put(time.monotonic()))
    pub = pub_mw.create_publisher("/late", "std_msgs/msg/String", QoS.RELIABLE)
    assert wait_until(lambda: pub.subscription_count() == 1, 10.0)
    pub.publish(String(data="after start"))
    assert got.get(timeout=10.0).data == "after start"
    ticks.get(timeout=5.0)


def test_timer_period_and_cancel(make_mw):
    mw = make_mw("timers")
    stamps = []
    timer = mw.create_timer(0.02, lambda: stamps.append(time.monotonic()))
    t_end = time.monotonic() + 0.5
    while time.monotonic() < t_end:
        mw.spin_once(0.1)
    # 0.5 s at 50 Hz = 25 ticks; allow a loaded 2-core machine some slack but not a stall or a busy loop
    assert 15 <= len(stamps) <= 27, len(stamps)
    assert np.median(np.diff(stamps)) == pytest.approx(0.02, abs=0.008)
    timer.cancel()
    n = len(stamps)
    t_end = time.monotonic() + 0.1
    while time.monotonic() < t_end:
        mw.spin_once(0.05)
    assert len(stamps) == n


def test_spin_once_returns_after_timeout_when_idle(make_mw):
    mw = make_mw("idle")
    t0 = time.monotonic()
    assert mw.spin_once(0.05) == 0
    assert 0.04 <= time.monotonic() - t0 < 1.0


def test_only_one_thread_may_spin(make_mw):
    mw = make_mw("exclusive")
    mw.spin_background()
    time.sleep(0.05)
    with pytest.raises(MiddlewareError, match="already spinning"):
        mw.spin_once(0.01)
    with pytest.raises(MiddlewareError, match="already running"):
        mw.spin_background()


def test_spin_stops_on_event(make_mw):
    mw = make_mw("stoppable")
    stop = threading.Event()
    t = threading.Thread(target=mw.spin, args=(stop,))
    t.start()
    time.sleep(0.05)
    stop.set()
    t.join(2.0)
    assert not t.is_alive()


def test_raising_callback_is_counted_and_executor_continues(make_mw, caplog):
    pub_mw, sub_mw = make_mw("pub"), make_mw("sub")
    got = queue.Queue()

    def callback(msg):
        if msg.data == "bad":
            raise RuntimeError("boom")
        got.put(msg.data)

    sub_mw.create_subscription("/errs", "std_msgs/msg/String", callback, QoS.RELIABLE)
    sub_mw.spin_background()
    pub = pub_mw.create_publisher("/errs", "std_msgs/msg/String", QoS.RELIABLE)
    assert wait_until(lambda: pub.subscription_count() == 1, 10.0)
    with caplog.at_level("ERROR", logger="dreamzero_policy.middleware"):
        pub.publish(String(data="bad"))
        pub.publish(String(data="good"))
        assert got.get(timeout=10.0) == "good"
    assert sub_mw.callback_errors == 1
    assert any("boom" in r.exc_text for r in caplog.records if r.exc_text)


def test_shutdown_from_a_callback_and_idempotent(make_mw):
    mw = make_mw("self_stopping")
    mw.create_timer(0.01, mw.shutdown)
    t = mw.spin_background()
    t.join(5.0)
    assert not t.is_alive() and mw.closed
    mw.shutdown()
    with pytest.raises(MiddlewareError, match="shut down"):
        mw.create_publisher("/x", "std_msgs/msg/String", QoS.RELIABLE)


def test_publish_after_shutdown_raises(make_mw):
    mw = make_mw("closed")
    pub = mw.create_publisher("/y", "std_msgs/msg/String", QoS.RELIABLE)
    mw.shutdown()
    with pytest.raises(MiddlewareError, match="shut down"):
        pub.publish(String(data="late"))
    assert mw.spin_once(0.01) == 0


def test_publish_raw_rejects_non_cdr(make_mw):
    pub = make_mw("raw").create_publisher("/raw", "std_msgs/msg/String", QoS.RELIABLE)
    with pytest.raises(ValueError, match="00 01 00 00"):
        pub.publish_raw(b"\x01\x02\x03\x04hello")
    pub.publish_raw(msgs.serialize(String(data="ok")))


def test_same_topic_two_types_is_refused(make_mw):
    mw = make_mw("types")
    mw.create_publisher("/dup", "std_msgs/msg/String", QoS.RELIABLE)
    with pytest.raises(MiddlewareError, match="already has type std_msgs/msg/String"):
        mw.create_publisher("/dup", "sensor_msgs/msg/JointState", QoS.RELIABLE)


def test_private_and_relative_names_resolve_like_ros(make_mw):
    mw = create_middleware("dds", node_name="policy", domain_id=make_mw("x").domain_id, namespace="/robot1")
    try:
        assert mw.create_publisher("~/status", "std_msgs/msg/String", QoS.RELIABLE).topic == "/robot1/policy/status"
        assert mw.create_publisher("cmd", "std_msgs/msg/String", QoS.RELIABLE).topic == "/robot1/cmd"
        assert mw.create_publisher("/abs", "std_msgs/msg/String", QoS.RELIABLE).topic == "/abs"
    finally:
        mw.shutdown()


def test_now_ns_is_wall_clock(make_mw):
    mw = make_mw("clock")
    assert abs(mw.now_ns() - time.time_ns()) < 50_000_000
