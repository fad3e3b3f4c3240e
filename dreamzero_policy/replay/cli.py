"""`dreamzero-replay`: replay recorded episodes through a checkpoint and compare with what was done.

    dreamzero-replay data/reach/episode_000000 --checkpoint ckpt --out /tmp/replay
    dreamzero-replay data/reach/* --checkpoint ckpt --embodiment franka_droid --ground-truth joint_states \\
        --decode-video --inference-delay-ms 150 --out /tmp/replay

Output (written to a temporary folder next to --out and renamed at the end, so a failed replay leaves nothing):
    OUT/summary.json, OUT/summary.html       the aggregate over all bags (also printed as a table)
    OUT/<bag>/report.json, report.html       per bag: metrics, latency, safety counters, plots
    OUT/<bag>/replay_bag/                    rosbag2 (metadata v9): the input topics + the node's outputs
                                             (~/action_chunk, ~/status, /diagnostics, and the controller commands
                                             under /dreamzero_replay/... where the input already has the topic)
Exit status: 0 on success, 1 when a bag or the checkpoint cannot be replayed (one line on stderr says why),
2 for a bad command line.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from dreamzero_policy import params
from dreamzero_policy.errors import DreamZeroError

_log = logging.getLogger("dreamzero_policy.replay")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dreamzero-replay", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Replay rosbags (rosbag2 sqlite3 / MCAP, split or zstd-compressed, and ROS 1 bags) through the "
                    "DreamZero policy node's own runtime in bag time, and compare its chunks with the recorded "
                    "commands or joint states.",
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    parser.add_argument("bags", nargs="+", metavar="BAG", help="rosbag2 directory, .mcap/.db3 file, directory of "
                        "storage files without metadata.yaml, or ROS 1 .bag file")
    parser.add_argument("--embodiment", help="embodiment name or YAML file (node parameter; default franka_droid)")
    parser.add_argument("--checkpoint", help="checkpoint directory (node parameter)")
    parser.add_argument("--out", help="output folder (must not exist or be empty; default ./dreamzero_replay_<time>)")
    parser.add_argument("--ground-truth", choices=("commands", "joint_states"), default="commands",
                        help="compare with the recorded controller commands (default) or the future joint states")
    parser.add_argument("--decode-video", action="store_true",
                        help="decode the model's imagined video with its VAE; PSNR / SSIM against the real frames")
    parser.add_argument("--instruction", help="instruction when the bag has none on the instruction topic")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N (node parameter)")
    parser.add_argument("--params-file", action="append", default=[], help="node parameter YAML (ROS 2 format)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="a node parameter, e.g. -p num_steps:=4 (see dreamzero-policy --help)")
    parser.add_argument("--inference-delay-ms", default="0", metavar="MS|measured",
                        help="simulated inference delay: the chunk reaches execution this long after its block "
                             "completed (bag time); 'measured' uses each call's measured latency (not deterministic)"
                             ". Default 0")
    parser.add_argument("--stamps", choices=("header", "log"), default="header",
                        help="observation time: the messages' header stamps, as the node uses them (default), or "
                             "the bag's log times (for drivers that leave stamps unset)")
    parser.add_argument("--topic", action="append", default=[], metavar="BAG_TOPIC:=NODE_TOPIC",
                        help="feed a bag topic to a node topic of another name")
    parser.add_argument("--start", type=float, default=0.0, help="replay from this many seconds into the bag")
    parser.add_argument("--end", type=float, default=None, help="replay until this many seconds into the bag")
    parser.add_argument("--output-storage", choices=("same", "mcap", "sqlite3"), default="same",
                        help="storage of the output bag (same: the input's; ROS 1 input: mcap)")
    parser.add_argument("--policy", choices=("model", "oracle"), default="model",
                        help="oracle: replay the recorded ground truth as the model's output through the whole "
                             "runtime (checks a bag and an embodiment mapping; its errors are zero)")
    parser.add_argument("--no-html", action="store_true", help="JSON reports only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--force", action="store_true", help="replace an existing --out folder")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log the node's lines (-vv: debug)")
    return parser


def _node_params(args: argparse.Namespace) -> dict:
    values: dict = {}
    for path in args.params_file:
        values.update(params.load_params_file(path))
    for item in args.param:
        name, sep, text = item.partition(":=")
        if not sep:
            raise DreamZeroError("-p", "NAME:=VALUE", repr(item))
        values[name] = params.parse_text_value(name, text)
    for name in ("embodiment", "checkpoint", "instruction", "device"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    return values


def _topic_map(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        bag_topic, sep, node_topic = item.partition(":=")
        if not sep or not bag_topic or not node_topic.startswith("/"):
            raise DreamZeroError("--topic", "BAG_TOPIC:=/node/topic", repr(item))
        out[bag_topic] = node_topic
    return out


def _names(paths: Sequence[str]) -> list[str]:
    names, seen = [], {}
    for p in paths:
        path = Path(p)
        base = (path.name if path.is_dir() else path.stem) or "bag"
        n = seen[base] = seen.get(base, 0) + 1
        names.append(base if n == 1 else f"{base}_{n}")
    return names


def run(args: argparse.Namespace) -> int:
    from dreamzero_policy.replay.bagio import open_bag
    from dreamzero_policy.replay.engines import oracle_factory
    from dreamzero_policy.replay.report import (aggregate, format_table, summary_html, summary_row,
                                                write_report)
    from dreamzero_policy.replay.runner import BagReplay, ReplayOptions, node_config

    delay = args.inference_delay_ms
    if delay != "measured":
        try:
            delay = float(delay)
        except ValueError:
            raise DreamZeroError("--inference-delay-ms", "a number or 'measured'", repr(delay)) from None
    options = ReplayOptions(node_params=_node_params(args), ground_truth=args.ground_truth, inference_delay_ms=delay,
                            stamps=args.stamps, topic_map=_topic_map(args.topic), start_s=args.start, end_s=args.end,
                            decode_video=args.decode_video, output_storage=args.output_storage,
                            progress=not args.no_progress)
    _, config, embodiment = node_config(options.node_params)
    if not config.checkpoint or not Path(config.checkpoint).expanduser().exists():
        raise DreamZeroError("--checkpoint", "an existing checkpoint directory", repr(config.checkpoint),
                             "the model replay compares (also for --policy oracle: its normalisation statistics)")
    out = Path(args.out or f"dreamzero_replay_{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise DreamZeroError("--out", "a new or empty folder (or --force)", f"{out} exists")
    factory = oracle_factory() if args.policy == "oracle" else None
    names = _names(args.bags)
    # Every bag is checked before the first one runs: a bad bag fails in seconds, not after an hour of replay.
    for path in args.bags:
        with open_bag(path) as bag:
            for warning in BagReplay(bag, options).warnings:
                _log.warning("%s: %s", path, warning)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        rows, accumulators, latencies = [], [], []
        for path, name in zip(args.bags, names):
            with open_bag(path) as bag:
                result = BagReplay(bag, options, partial / name, factory).run()
            report = write_report(result, partial / name, html_page=not args.no_html)
            rows.append(summary_row(report, name))
            accumulators.append(result.errors)
            latencies += [c.latency_s for c in result.chunks]
            _log.info("%s: %d chunks, arm MAE %s", name, len(result.chunks), report["metrics"]["arm"]["mae"])
        total = aggregate(rows, accumulators, latencies, embodiment.joint_names)
        summary = {"format": "dreamzero-replay-summary/1", "embodiment": embodiment.name,
                   "checkpoint": config.checkpoint, "policy": args.policy, "ground_truth": args.ground_truth,
                   "bags": [dict(r, path=str(Path(p).resolve()), report=f"{n}/report.json")
                            for r, p, n in zip(rows, args.bags, names)], "all": total}
        (partial / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False))
        if not args.no_html:
            (partial / "summary.html").write_text(summary_html(rows, total, [f"{n}/report.html" for n in names]))
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    print(format_table(rows, total))
    print(f"reports: {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr, format="[%(levelname)s] [%(name)s]: %(message)s")
    try:
        return run(args)
    except DreamZeroError as e:
        print(f"dreamzero-replay: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dreamzero-replay: interrupted; no output written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
