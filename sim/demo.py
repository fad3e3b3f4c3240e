"""The closed-loop demo: the sim and the policy node as two processes over DDS, N reach episodes, a report.

    python -m sim.demo                                  # 10 episodes of the bundled tiny_reach policy -> out/demo/
    python -m sim.demo --episodes 2 --out /tmp/demo     # a quick check

What runs (all on loopback, on a private DDS domain; no ROS install needed):

    sim process     python -m sim.serve --backend dds --task reach ...   the robot's topics, /sim/reset, /sim/task_info
    node process    python -m dreamzero_policy.node --middleware dds --checkpoint sim/assets/tiny_reach
                        --embodiment sim/assets/tiny_reach/embodiment.yaml (the checkpoint's own, see there) ...
    this process    resets each episode (/sim/reset, then the node's ~/reset), judges success from /sim/task_info,
                    collects the node's ~/action_chunk and ~/status, records one episode's cameras, writes the report

Episode e runs seed `--seed + e` (the bundled policy was trained on seeds 0..399 and its VAE fitted on 20000..20299;
the default 10000.. are unseen).
An episode lasts `--episode-s` seconds of sim time from its reset (default: the task's 4.8 s horizon plus one chunk,
1.6 s, for the node's inference latency, which the in-process evaluation does not pay) and succeeds when
/sim/task_info (published every sim second) reports success. The node runs in real time against the sim's stamps:
chunk actions that are already due when a chunk arrives are skipped, and the arm holds between chunks while the
model runs (block_lead_ms 0 keeps the model's 5 fps training video rate, which the sim's 5 Hz cameras match).

Output in `--out`: report.json (everything), report.md (summary table), episode_000.mp4 (the first episode's
cameras side by side), sim.log and node.log. Exit status: 0 when the demo ran (whatever the success rate), 1 when it
could not run (a process died, the node never became active, an episode produced no chunk, a service failed), 130
when interrupted. Child processes are stopped on every exit path (their process groups get SIGTERM, then SIGKILL).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "tiny_reach"
NODE = "/dreamzero_policy"
CHUNK_TOPIC, STATUS_TOPIC = f"{NODE}/action_chunk", f"{NODE}/status"
CAMERAS = ("wrist", "exterior_1", "exterior_2")


class DemoError(RuntimeError):
    """The demo could not run (not: the policy failed the task)."""


class Interrupted(BaseException):
    """SIGINT / SIGTERM / SIGHUP arrived. Not KeyboardInterrupt: CPython (3.11) remembers a KeyboardInterrupt raised
    inside exec() (rosbags compiles its serializers with it) as unhandled and exits by SIGINT even after we caught it."""


class Child:
    """A child process in its own process group, its output going to a log file."""

    def __init__(self, name: str, args: list[str], env: dict, log_path: Path):
        self.name, self.args, self.log_path = name, args, log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check(self) -> None:
        if not self.alive():
            raise DemoError(f"the {self.name} process exited with status {self.proc.returncode}; last lines of "
                            f"{self.log_path}:\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM to the process group, SIGKILL after `timeout_s`; always reaps the process."""
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                pass
        try:  # leftovers of the group (none expected)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()
        return self.proc.returncode


class Monitor:
    """This process's DDS participant: task info, chunks, status and (while recording) the cameras."""

    def __init__(self, domain_id: int):
        from dreamzero_policy.middleware import QoS, create_middleware
        from dreamzero_policy.middleware.qos import Durability, Reliability

        self.mw = create_middleware("dds", node_name="dreamzero_demo", domain_id=domain_id)
        self._lock = threading.Lock()
        self.task_info: list[tuple[float, dict]] = []  # (receive time, JSON)
        self.chunks: list[tuple[float, bytes]] = []
        self.status: bytes | None = None
        self.frames: dict[str, list[tuple[int, np.ndarray]]] = {c: [] for c in CAMERAS}
        self.recording = False
        self.mw.create_subscription("/sim/task_info", "std_msgs/msg/String", self._on_task_info, QoS.LATCHED)
        self.mw.create_subscription(CHUNK_TOPIC, "dreamzero_msgs/msg/ActionChunk", self._on_chunk,
                                    QoS.RELIABLE.with_depth(100), raw=True)
        self.mw.create_subscription(STATUS_TOPIC, "dreamzero_msgs/msg/PolicyStatus", self._on_status,
                                    QoS(Reliability.RELIABLE, Durability.TRANSIENT_LOCAL, 1), raw=True)
        for camera in CAMERAS:
            self.mw.create_subscription(f"/cameras/{camera}/image_raw", "sensor_msgs/msg/Image",
                                        lambda msg, c=camera: self._on_image(c, msg), QoS.SENSOR_DATA)
        self.sim_reset = self.mw.create_client("/sim/reset", "std_srvs/srv/Trigger")
        self.node_reset = self.mw.create_client(f"{NODE}/reset", "std_srvs/srv/Trigger")
        self.mw.spin_background()

    def _on_task_info(self, msg) -> None:
        with self._lock:
            self.task_info.append((time.monotonic(), json.loads(msg.data)))

    def _on_chunk(self, data) -> None:
        with self._lock:
            self.chunks.append((time.monotonic(), bytes(data)))

    def _on_status(self, data) -> None:
        with self._lock:
            self.status = bytes(data)

    def _on_image(self, camera: str, msg) -> None:
        if not self.recording:
            return
        from sim.rosmsg import image_from_msg, stamp_to_ns

        with self._lock:
            self.frames[camera].append((stamp_to_ns(msg.header.stamp), image_from_msg(msg)))

    # --- views ---
    def infos_for(self, seed: int) -> list[dict]:
        with self._lock:
            return [info for _, info in self.task_info if info.get("seed") == seed]

    def chunk_count(self) -> int:
        with self._lock:
            return len(self.chunks)

    def chunks_since(self, index: int) -> list:
        from dreamzero_policy import msgs

        with self._lock:
            raw = [data for _, data in self.chunks[index:]]
        return [msgs.deserialize(data, "dreamzero_msgs/msg/ActionChunk") for data in raw]

    def policy_status(self):
        from dreamzero_policy import msgs

        with self._lock:
            data = self.status
        return None if data is None else msgs.deserialize(data, "dreamzero_msgs/msg/PolicyStatus")

    def trigger(self, client, what: str, timeout_s: float = 20.0) -> str:
        from dreamzero_policy import msgs

        response = client.call(msgs.msg_class("std_srvs/srv/Trigger_Request")(), timeout_s=timeout_s)
        if response is None or not response.success:
            raise DemoError(f"{what} failed: {getattr(response, 'message', 'no response')}")
        return response.message

    def take_frames(self) -> list[np.ndarray]:
        """The recorded frames tiled side by side (cameras matched by stamp), then forget them."""
        from sim.video import tile

        with self._lock:
            frames, self.frames = self.frames, {c: [] for c in CAMERAS}
        by_stamp = [dict(frames[c]) for c in CAMERAS]
        stamps = sorted(set.intersection(*(set(d) for d in by_stamp))) if all(by_stamp) else []
        return [tile(d[s] for d in by_stamp) for s in stamps]

    def close(self) -> None:
        self.mw.shutdown()


def wait_for(predicate, timeout_s: float, what: str, children: list[Child], interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        for child in children:
            child.check()
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    a = np.asarray(values) * 1e3
    return {"n": len(values), "mean_ms": round(float(a.mean()), 1), "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p90_ms": round(float(np.percentile(a, 90)), 1), "max_ms": round(float(a.max()), 1)}


def run_episode(monitor: Monitor, children: list[Child], seed: int, episode_s: float, record: bool) -> dict:
    """Reset the sim (to `seed`) and the node, run until success or `episode_s` sim seconds; the episode's row."""
    first_chunk = monitor.chunk_count()
    tic = time.monotonic()
    instruction = monitor.trigger(monitor.sim_reset, "/sim/reset")
    wait_for(lambda: monitor.infos_for(seed), 10, f"/sim/task_info of seed {seed}", children)
    monitor.take_frames()  # nothing of the previous scene in the video
    monitor.recording = record
    # The node holds at the current position and starts a new episode (its next block is one frame of the new
    # scene); needed because a repeated instruction alone does not reset it. The short wait lets its latest joint
    # state be the reset pose, so the hold does not pull the arm back to where the last episode ended.
    time.sleep(0.2)
    first_chunk = monitor.chunk_count()
    monitor.trigger(monitor.node_reset, f"{NODE}/reset")
    checks = int(np.ceil(episode_s)) + 1  # task_info at sim seconds 0, 1, ..., ceil(episode_s)
    wall_limit = 10.0 + 6.0 * episode_s  # a sim far slower than this is broken
    success_at = None
    while True:
        infos = monitor.infos_for(seed)
        hit = next((i for i, info in enumerate(infos) if info.get("success")), None)
        if hit is not None:
            success_at = hit
            break
        if len(infos) >= checks:
            break
        for child in children:
            child.check()
        if time.monotonic() - tic > wall_limit:
            raise DemoError(f"episode seed {seed}: the sim published {len(infos)} task_info messages in "
                            f"{wall_limit:.0f} s (expected one per sim second)")
        time.sleep(0.05)
    monitor.recording = False
    chunks = [c for c in monitor.chunks_since(first_chunk) if c.instruction]
    if not chunks:
        raise DemoError(f"episode seed {seed}: the node published no action chunk (see node.log)")
    infos = monitor.infos_for(seed)
    return {"seed": seed, "instruction": instruction, "success": success_at is not None,
            "success_at_s": success_at, "sim_s": len(infos) - 1, "wall_s": round(time.monotonic() - tic, 2),
            "chunks": len(chunks), "inference_latency_s": [round(float(c.inference_latency), 4) for c in chunks],
            "rejected_trajectories": infos[-1].get("rejected_trajectories", 0) if infos else 0}


def training_summary(checkpoint: Path) -> str:
    """What the checkpoint's metadata says it was trained on (one line for the report)."""
    try:
        metadata = json.loads((checkpoint / "experiment_cfg" / "metadata.json").read_text())
        dataset = next(v["dataset"] for v in metadata.values() if isinstance(v, dict) and "dataset" in v)
        return (f"trained on {len(dataset['train_episodes'])} episodes of {Path(dataset['root']).name} "
                f"(episode indices {min(dataset['train_episodes'])}..{max(dataset['train_episodes'])})")
    except (OSError, ValueError, KeyError, StopIteration):
        return "training data not recorded in the checkpoint's metadata"


def write_report(out: Path, report: dict) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=1))
    s, lat = report["summary"], report["summary"]["chunk_latency"]
    lines = [
        "# DreamZero closed-loop demo", "",
        f"Policy `{report['checkpoint']}` ({report['model_name']}), task `{report['task']}`, "
        f"{report['sampling']}, node and sim as separate processes over DDS (loopback, domain {report['domain_id']}).",
        "",
        f"**Success: {s['successes']}/{s['episodes']} = {100 * s['success_rate']:.0f}%** "
        f"(Wilson 95% CI {100 * s['wilson95'][0]:.0f}-{100 * s['wilson95'][1]:.0f}%), seeds "
        f"{report['seeds'][0]}..{report['seeds'][-1]}; {report['training']}.", "",
        f"Chunk latency (node ActionChunk.inference_latency, {lat.get('n', 0)} chunks): "
        f"mean {lat.get('mean_ms', 0)} ms, p50 {lat.get('p50_ms', 0)} ms, p90 {lat.get('p90_ms', 0)} ms; "
        f"node PolicyStatus p50/p90 {s['status_latency_ms'][0]}/{s['status_latency_ms'][1]} ms.", "",
        f"Video of episode 0: [{report['video']}]({report['video']})" if report.get("video") else "No video.", "",
        "| episode | seed | instruction | success | at sim s | chunks | mean latency ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(report["episodes"]):
        mean = 1e3 * float(np.mean(row["inference_latency_s"])) if row["inference_latency_s"] else 0.0
        lines.append(f"| {i} | {row['seed']} | {row['instruction']} | {'yes' if row['success'] else 'no'} | "
                     f"{'' if row['success_at_s'] is None else row['success_at_s']} | {row['chunks']} | {mean:.0f} |")
    refusals = report.get("node_refusals") or {}
    if refusals:
        lines += ["", "Node refusals: " + ", ".join(f"{k} {v}" for k, v in refusals.items())]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sim.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=10000, help="seed of the first episode "
                        "(the bundled policy's training: 0..399; its VAE's: 20000..20299)")
    parser.add_argument("--out", default="out/demo", help="report folder (created)")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--task", default="reach")
    parser.add_argument("--num-steps", type=int, default=0, help="node num_steps (0: the checkpoint's; no effect "
                                                                  "while Flash is on)")
    parser.add_argument("--flash", choices=("auto", "true"), default="auto",
                        help="node flash parameter (auto: the checkpoint's setting, one-step for the bundled one)")
    parser.add_argument("--episode-s", type=float, default=6.4, help="sim seconds per episode")
    parser.add_argument("--image-hz", type=int, default=5, help="sim camera rate (5: the model's video rate)")
    parser.add_argument("--height", type=int, default=90, help="camera image height (the training data's)")
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--domain-id", type=int, default=None, help="DDS domain (default: a private one per run)")
    parser.add_argument("--startup-timeout-s", type=float, default=120.0)
    parser.add_argument("--node-arg", action="append", default=[], help="extra node flag, e.g. --node-arg=--backend "
                                                                          "--node-arg=int8_dynamic")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be >= 1")
    return args


def child_env(domain_id: int) -> dict:
    from dreamzero_policy.middleware.dds_backend import loopback_uri

    env = dict(os.environ)
    env.update(CYCLONEDDS_URI=loopback_uri(), ROS_DOMAIN_ID=str(domain_id), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p))
    # Two processes share the CPU: one torch thread in the node avoids oversubscription (much slower otherwise).
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    domain_id = args.domain_id if args.domain_id is not None else 1 + (os.getpid() * 7 + int(time.time())) % 232
    env = child_env(domain_id)
    # The monitor joins the same domain with the same loopback configuration (set before its participant exists).
    os.environ["CYCLONEDDS_URI"], os.environ["ROS_DOMAIN_ID"] = env["CYCLONEDDS_URI"], env["ROS_DOMAIN_ID"]
    checkpoint = Path(args.checkpoint).expanduser().resolve()
    children: list[Child] = []
    monitor: Monitor | None = None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def interrupted(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    for sig in previous:
        signal.signal(sig, interrupted)
    code, tic = 1, time.monotonic()
    try:
        if not (checkpoint / "config.json").is_file():
            raise DemoError(f"no checkpoint at {checkpoint} (config.json missing)")
        print(f"demo: {args.episodes} {args.task} episodes, seeds {args.seed}..{args.seed + args.episodes - 1}, "
              f"checkpoint {checkpoint}, DDS domain {domain_id} on loopback", flush=True)
        monitor = Monitor(domain_id)
        children.append(Child("sim", [sys.executable, "-m", "sim.serve", "--backend", "dds", "--task", args.task,
                                      "--seed", str(args.seed - 1), "--image-hz", str(args.image_hz),
                                      "--height", str(args.height), "--width", str(args.width)],
                              env, out / "sim.log"))
        from sim.policy import checkpoint_embodiment

        embodiment = checkpoint_embodiment(checkpoint)
        node_args = [sys.executable, "-m", "dreamzero_policy.node", "--middleware", "dds", "--checkpoint",
                     str(checkpoint), "--embodiment", embodiment, "--device", "cpu", "--block-lead-ms", "0",
                     "--log-period-s", "30"]
        if args.num_steps:
            node_args += ["--num-steps", str(args.num_steps)]
        if args.flash == "true":
            node_args += ["--flash", "true"]
        children.append(Child("node", node_args + list(args.node_arg), env, out / "node.log"))
        print(f"demo: started sim (pid {children[0].pid}) and policy node (pid {children[1].pid}); waiting for them",
              flush=True)
        wait_for(lambda: monitor.task_info, args.startup_timeout_s, "the sim's /sim/task_info", children)
        node = children[1]

        def node_active():
            if "configure failed" in node.tail(40):
                raise DemoError(f"the policy node could not configure; last lines of {node.log_path}:\n{node.tail()}")
            s = monitor.policy_status()
            return s is not None and s.lifecycle_state == "active" and s

        status = wait_for(node_active, args.startup_timeout_s, "the policy node to become active", children)
        for client, name in ((monitor.sim_reset, "/sim/reset"), (monitor.node_reset, f"{NODE}/reset")):
            if not client.wait_for_service(30.0):
                raise DemoError(f"service {name} not available")
        print(f"demo: node active ({status.model_name} on {status.device}) after "
              f"{time.monotonic() - tic:.1f} s", flush=True)

        rows, video = [], None
        for e in range(args.episodes):
            row = run_episode(monitor, children, args.seed + e, args.episode_s, record=e == 0)
            rows.append(row)
            lat = row["inference_latency_s"]
            print(f"demo: episode {e} seed {row['seed']} {row['instruction']!r}: "
                  f"{'success at sim ' + str(row['success_at_s']) + ' s' if row['success'] else 'failure'}, "
                  f"{row['chunks']} chunks, mean latency {1e3 * np.mean(lat):.0f} ms", flush=True)
            if e == 0:
                frames = monitor.take_frames()
                if frames:
                    from sim.video import write_mp4

                    write_mp4(out / "episode_000.mp4", frames, fps=args.image_hz)
                    video = "episode_000.mp4"
        status = monitor.policy_status()
        from sim.evaluate import wilson_interval

        successes = sum(r["success"] for r in rows)
        low, high = wilson_interval(successes, len(rows))
        latencies = [v for r in rows for v in r["inference_latency_s"]]
        refusals = {name: int(getattr(status, name)) for name in (
            "refusals_nan", "refusals_limit_clamp", "refusals_step_clamp", "refusals_stale_observation",
            "refusals_stale_chunk", "refusals_malformed_image", "refusals_bad_joint_state",
            "refusals_out_of_order_stamps", "refusals_exception")} if status is not None else {}
        config = json.loads((checkpoint / "config.json").read_text())
        engine = config.get("dreamzero_policy", {}).get("engine", {})
        flash = args.flash == "true" or bool(engine.get("flash", False))  # the node cannot switch Flash off
        sampling = "Flash 1-step sampling" if flash else \
            f"{args.num_steps or engine.get('num_steps', 16)}-step {engine.get('sampler', 'unipc')} sampling"
        report = {
            "task": args.task, "checkpoint": str(checkpoint), "model_name": status.model_name if status else "",
            "sampling": sampling, "training": training_summary(checkpoint), "embodiment": embodiment,
            "domain_id": domain_id, "seeds": [r["seed"] for r in rows],
            "episode_s": args.episode_s, "image_hz": args.image_hz, "image_hw": [args.height, args.width],
            "summary": {"episodes": len(rows), "successes": successes, "success_rate": successes / len(rows),
                        "wilson95": [low, high], "chunk_latency": percentiles(latencies),
                        "status_latency_ms": [round(1e3 * status.latency_p50, 1), round(1e3 * status.latency_p90, 1)]
                        if status is not None else [0.0, 0.0],
                        "wall_s": round(time.monotonic() - tic, 1)},
            "node_refusals": {k: v for k, v in refusals.items() if v},
            "node_counters": dict(zip(status.counter_names, (int(v) for v in status.counter_values)))
            if status is not None else {},
            "episodes": rows, "video": video, "pids": {c.name: c.pid for c in children},
        }
        write_report(out, report)
        lat = report["summary"]["chunk_latency"]
        print(f"demo: success {successes}/{len(rows)} = {100 * successes / len(rows):.0f}% "
              f"(Wilson 95% CI {100 * low:.0f}-{100 * high:.0f}%); chunk latency mean {lat['mean_ms']} ms, "
              f"p50 {lat['p50_ms']} ms, p90 {lat['p90_ms']} ms ({lat['n']} chunks, {sampling})", flush=True)
        print(f"demo: report {out / 'report.md'}, {out / 'report.json'}"
              + (f", video {out / video}" if video else "") + f" ({time.monotonic() - tic:.0f} s)", flush=True)
        code = 0
    except DemoError as error:
        print(f"demo: failed: {error}", file=sys.stderr, flush=True)
        code = 1
    except (Interrupted, KeyboardInterrupt):
        print("demo: interrupted", file=sys.stderr, flush=True)
        code = 130
    finally:
        for sig, handler in previous.items():  # a second signal during cleanup must not skip it
            signal.signal(sig, signal.SIG_IGN)
        if monitor is not None:
            monitor.close()
        for child in reversed(children):
            child.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


if __name__ == "__main__":
    sys.exit(main())
