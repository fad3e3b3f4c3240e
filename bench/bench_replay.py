"""Replay throughput: recorded seconds replayed per wall second (dreamzero-replay's runner, tiny model, CPU).

    python bench/bench_replay.py [--episodes 2] [--task reach] [--format mcap] [--threads 1] [--repeats 2]

Records `--episodes` expert episodes with the simulator (3 cameras at 15 Hz, 180x320, joint states 30 Hz: the
recording's own rates), writes a random tiny checkpoint, and replays every bag through the live node's runtime in bag
time (observation decoding, block buffer, session, chunk decoding, splice, safety, output bag written):

- oracle:      the recorded commands instead of the model (the runtime, bag reading and writing alone);
- tiny 2 st.:  the tiny model, 2 sampler steps, no guidance (what the tests run);
- tiny 16 st.: the tiny model with the release sampler (16 UniPC steps, CFG 5: two DiT branches);
- + video:     the 2-step model with --decode-video (the VAE decodes every imagined block; PSNR / SSIM).

Each row is the fastest of `--repeats` runs (2 shared cores are noisy). `speed` = recorded s / wall s; above 1 the
replay is faster than real time. The report (JSON + HTML with plots) is timed once, separately.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from dreamzero_policy.embodiment import load_embodiment
from dreamzero_policy.replay.bagio import open_bag
from dreamzero_policy.replay.engines import oracle_factory
from dreamzero_policy.replay.report import write_report
from dreamzero_policy.replay.runner import BagReplay, ReplayOptions


def _checkpoint(directory: Path) -> Path:
    from model_core.factory import save_bundle, tiny_components

    emb = load_embodiment("franka_droid")
    q = lambda lo, hi: {"q01": [float(v) for v in lo], "q99": [float(v) for v in hi]}  # noqa: E731
    stats = {"state": {"joint_position": q(emb.lower * 0.8, emb.upper * 0.8), "gripper_position": q([0.0], [1.0])},
             "action": {"joint_position": q([-0.3] * 7, [0.3] * 7), "gripper_position": q([0.0], [1.0])}}
    dit, vae, text, image = tiny_components(seed=0)
    save_bundle(directory, dit, vae, text, image, video_hw=(64, 128),
                metadata={emb.metadata_key: {"statistics": stats}})
    return directory


def _replay(bags: list[Path], options: ReplayOptions, out: Path, factory=None) -> dict:
    recorded = wall = configure = 0.0
    messages = chunks = 0
    latencies = []
    result = None
    for k, path in enumerate(bags):
        with open_bag(path) as bag:
            replay = BagReplay(bag, options, out / f"{k}", factory)
            result = replay.run()
        recorded += result.timing["recorded_s"]
        wall += result.timing["replay_wall_s"]
        configure += result.timing["configure_s"]
        messages += result.replay_counters["messages_copied"]
        chunks += len(result.chunks)
        latencies += [c.latency_s for c in result.chunks]
    latencies.sort()
    return {"recorded_s": recorded, "wall_s": wall, "speed": recorded / wall, "messages_per_s": messages / wall,
            "chunks": chunks, "p50_ms": 1e3 * latencies[len(latencies) // 2] if latencies else 0.0,
            "configure_s": configure / len(bags), "result": result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=2, help="episodes to record and replay")
    parser.add_argument("--task", default="reach", choices=("reach", "push", "pick"))
    parser.add_argument("--format", default="mcap", choices=("mcap", "sqlite3"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on 2 shared cores)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per row; the fastest is shown")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from sim.record import record

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tic = time.perf_counter()
        summaries = record(args.task, args.episodes, root / "bags", args.format)
        bags = [Path(s["path"]) for s in summaries]
        print(f"recorded {len(bags)} {args.task} episodes ({args.format}, 3 cameras 180x320 at 15 Hz) in "
              f"{time.perf_counter() - tic:.1f} s; torch threads {args.threads}")
        checkpoint = _checkpoint(root / "ckpt")
        fast = {"checkpoint": str(checkpoint), "num_steps": 2, "cfg_scale": 1.0, "warmup": False}
        rows = [
            ("oracle (no model)", ReplayOptions(node_params=fast), oracle_factory()),
            ("tiny, 2 steps, no CFG", ReplayOptions(node_params=fast), None),
            ("tiny, 16 steps, CFG 5", ReplayOptions(node_params={"checkpoint": str(checkpoint), "warmup": False}),
             None),
            ("tiny, 2 steps + video", ReplayOptions(node_params=fast, decode_video=True), None),
        ]
        print(f"\n{'setting':<24}{'recorded s':>11}{'wall s':>9}{'speed x':>9}{'msgs/s':>9}{'chunks':>8}"
              f"{'p50 ms':>9}{'configure s':>13}")
        last = None
        for row, (name, options, factory) in enumerate(rows):
            best = None
            for repeat in range(args.repeats):
                run = _replay(bags, options, root / "out" / f"{row}_{repeat}", factory)
                if best is None or run["wall_s"] < best["wall_s"]:
                    best = run
            print(f"{name:<24}{best['recorded_s']:>11.1f}{best['wall_s']:>9.2f}{best['speed']:>9.2f}"
                  f"{best['messages_per_s']:>9.0f}{best['chunks']:>8d}{best['p50_ms']:>9.1f}"
                  f"{best['configure_s']:>13.2f}")
            last = best["result"]
        tic = time.perf_counter()
        write_report(last, root / "report")
        size = (root / "report" / "report.html").stat().st_size
        print(f"\nreport of one bag (JSON + HTML with plots and video frames, {size / 1e6:.1f} MB): "
              f"{time.perf_counter() - tic:.2f} s")


if __name__ == "__main__":
    main()
