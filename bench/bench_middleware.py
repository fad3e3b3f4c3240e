"""Round-trip latency and throughput of the DDS middleware between two processes on loopback.

    python bench/bench_middleware.py [--iters 200] [--throughput-n 200] [--domain N] [--network]

Starts a second process (this script with --echo) that republishes every payload it receives, unchanged, on an
`_echo` topic; this process publishes a message, waits for its echo and records the time (ping-pong, one message in
flight). Cases: a 640x480 rgb8 sensor_msgs/Image (921,652 CDR bytes; reliable and best effort), a 7+1 joint
sensor_msgs/JointState, a 50 kB CompressedImage. Both processes use the same code path as the node (create_middleware("dds"), rosbags CDR,
callbacks on the executor thread). Throughput: N messages with up to 4 in flight (reliable; the window stays below
the keep-last depth so no sample is overwritten), timed until the last echo is back. The "stock binding" line times what the cyclonedds binding's own IdlStruct (de)serialization costs for
the same image (sequence<uint8> as a Python list), the path this backend avoids.

Loopback only by default (CYCLONEDDS_URI = the package's loopback config); --network keeps the environment's.
The machine's load matters (2 shared cores here): the load average is printed with the results.
"""
from __future__ import annotations

import argparse
from importlib.metadata import version
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dreamzero_policy import msgs  # noqa: E402
from dreamzero_policy.middleware import QoS, create_middleware  # noqa: E402
from dreamzero_policy.middleware.dds_backend import loopback_uri  # noqa: E402

WINDOW = 4      # messages in flight in the throughput test (keep-last depth of QoS.RELIABLE is 10)

CASES = {   # name -> (message type, QoS of both directions)
    "image": ("sensor_msgs/msg/Image", QoS.RELIABLE),
    "image_be": ("sensor_msgs/msg/Image", QoS.SENSOR_DATA),      # the usual camera QoS (best effort)
    "joint_states": ("sensor_msgs/msg/JointState", QoS.RELIABLE),
    "compressed": ("sensor_msgs/msg/CompressedImage", QoS.RELIABLE),
}


def make_messages() -> dict:
    store = msgs.typestore()
    rng = np.random.default_rng(0)
    t = store.types
    return {
        "image": t["sensor_msgs/msg/Image"](
            header=msgs.header(time.time_ns(), "camera"), height=480, width=640, encoding="rgb8", is_bigendian=0,
            step=1920, data=rng.integers(0, 256, 480 * 640 * 3, dtype=np.uint8)),
        "joint_states": t["sensor_msgs/msg/JointState"](
            header=msgs.header(time.time_ns(), ""), name=[f"fr3_joint{i}" for i in range(1, 8)] + ["fr3_finger_joint1"],
            position=rng.normal(size=8), velocity=rng.normal(size=8), effort=rng.normal(size=8)),
        "compressed": t["sensor_msgs/msg/CompressedImage"](
            header=msgs.header(time.time_ns(), "camera"), format="jpeg",
            data=rng.integers(0, 256, 50_000, dtype=np.uint8)),
    }


def run_echo(domain: int) -> None:
    mw = create_middleware("dds", node_name="bench_echo", domain_id=domain)
    for name, (msgtype, qos) in CASES.items():
        pub = mw.create_publisher(f"/bench/{name}_echo", msgtype, qos)
        mw.create_subscription(f"/bench/{name}", msgtype, lambda d, pub=pub: pub.publish_raw(d), qos, raw=True)
    mw.spin_background()
    print("ready", flush=True)
    sys.stdin.read()            # until the parent closes our stdin
    mw.shutdown()


def percentiles(xs_ms) -> tuple:
    a = np.asarray(xs_ms)
    return np.percentile(a, 50), np.percentile(a, 90), np.percentile(a, 99), a.max()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--throughput-n", type=int, default=200)
    ap.add_argument("--domain", type=int, default=150 + os.getpid() % 80)
    ap.add_argument("--network", action="store_true", help="keep CYCLONEDDS_URI from the environment")
    ap.add_argument("--echo", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.network:
        os.environ["CYCLONEDDS_URI"] = loopback_uri()
    if args.echo:
        run_echo(args.domain)
        return

    peer = subprocess.Popen([sys.executable, __file__, "--echo", "--domain", str(args.domain)]
                            + (["--network"] if args.network else []),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    mw = create_middleware("dds", node_name="bench", domain_id=args.domain)
    try:
        if peer.stdout.readline().strip() != "ready":
            raise SystemExit("echo process failed to start")
        messages = make_messages()
        events = {name: threading.Event() for name in CASES}
        counts = dict.fromkeys(CASES, 0)
        last_rx = dict.fromkeys(CASES, 0.0)

        def on_echo(data, name):
            counts[name] += 1
            last_rx[name] = time.perf_counter()
            events[name].set()

        pubs = {}
        for name, (msgtype, qos) in CASES.items():
            mw.create_subscription(f"/bench/{name}_echo", msgtype, lambda d, n=name: on_echo(d, n), qos, raw=True)
            pubs[name] = mw.create_publisher(f"/bench/{name}", msgtype, qos)
        mw.spin_background()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not all(p.subscription_count() for p in pubs.values()):
            time.sleep(0.01)

        time.sleep(0.5)        # let the echo process's writers match ours too
        rows = []
        for name in CASES:
            msg = messages[name.removesuffix("_be")]
            cdr = msgs.serialize(msg)
            rtts, lost = [], 0
            for i in range(args.warmup + args.iters):
                events[name].clear()
                t0 = time.perf_counter()
                pubs[name].publish(msg)          # serialize + write, as the node does
                if not events[name].wait(1.0):
                    if CASES[name][1].reliable:
                        raise SystemExit(f"{name}: reliable echo lost (iteration {i})")
                    lost += 1                      # best effort: a lost sample is allowed, count it
                    continue
                if i >= args.warmup:
                    rtts.append((time.perf_counter() - t0) * 1e3)
            rows.append((name, len(cdr), len(rtts), lost, *percentiles(rtts), float(np.mean(rtts))))

        tput = []
        for name in (n for n in CASES if CASES[n][1].reliable):
            cdr = msgs.serialize(messages[name])
            start_count = counts[name]
            sent = 0
            t0 = time.perf_counter()
            deadline = time.monotonic() + 30
            while counts[name] - start_count < args.throughput_n and time.monotonic() < deadline:
                # keep at most WINDOW messages in flight: below the keep-last depth, so nothing is overwritten
                if sent < args.throughput_n and sent - (counts[name] - start_count) < WINDOW:
                    pubs[name].publish_raw(cdr)
                    sent += 1
                else:
                    events[name].clear()
                    events[name].wait(0.01)
            got = counts[name] - start_count
            dt = last_rx[name] - t0
            tput.append((name, sent, got, got / dt, got * len(cdr) / dt / 1e6))

        # The stock binding's own (de)serialization of the same image (sequence<uint8> as a Python list).
        from dreamzero_policy.middleware.dds_types import idl_struct
        img_t = idl_struct("sensor_msgs/msg/Image", msgs.typestore())
        cdr = msgs.serialize(messages["image"])
        stock = []
        for _ in range(3):
            t0 = time.perf_counter()
            obj = img_t.deserialize(cdr)
            obj.serialize()
            stock.append((time.perf_counter() - t0) * 1e3)
    finally:
        mw.shutdown()
        try:
            peer.stdin.close()
            peer.wait(timeout=5)
        except Exception:
            peer.kill()

    load = os.getloadavg()
    print(f"\nDDS middleware round trip, two processes on {'the network config' if args.network else 'loopback'}"
          f" (cyclonedds {version('cyclonedds')}, load avg {load[0]:.2f}, {os.cpu_count()} cores)")
    print(f"{'case':<14}{'CDR bytes':>11}{'n':>6}{'lost':>6}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
          f"{'mean ms':>9}")
    for name, size, n, lost, p50, p90, p99, mx, mean in rows:
        print(f"{name:<14}{size:>11,}{n:>6}{lost:>6}{p50:>9.3f}{p90:>9.3f}{p99:>9.3f}{mx:>9.3f}{mean:>9.3f}")
    print("(image_be: best effort both ways, QoS.SENSOR_DATA; all others QoS.RELIABLE)")
    print(f"\nthroughput (reliable, {WINDOW} in flight, time until the last echo returned)")
    print(f"{'case':<14}{'sent':>6}{'echoed':>8}{'msg/s':>10}{'MB/s one way':>14}")
    for name, sent, got, rate, mbs in tput:
        print(f"{name:<14}{sent:>6}{got:>8}{rate:>10.1f}{mbs:>14.1f}")
    print(f"\nstock binding IdlStruct deserialize+serialize of the same image (no transport): "
          f"{np.median(stock):.1f} ms median of 3")


if __name__ == "__main__":
    main()
