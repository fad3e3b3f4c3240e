"""Training throughput on this machine: samples/s of the trainer's own optimizer step, per preset and mode.

    python bench/bench_train.py [--presets tiny small] [--modes full lora] [--chunks 2 4] [--batch 2] [--steps 8]

Builds everything through `model_core.training.train.Trainer` (the code `dreamzero-train` runs) on a small
synthetic LeRobot v2.1 dataset (tests/training/lerobot_fixtures.py: 3 episodes, DROID feature names, 64x128 model
frames), encodes it once (the time is reported as the cache's samples/s), then times `--steps` optimizer steps after
`--warmup` untimed ones: forward (teacher forcing over the block-causal mask), backward, clipping, AdamW.
`small` has no image conditioning here (the tiny CLIP's width differs from its clip_dim).
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model_core.training.config import parse_config  # noqa: E402
from model_core.training.train import StepBatches, Trainer  # noqa: E402
from tests.training.lerobot_fixtures import make_episode, train_config, write_v21  # noqa: E402


def bench_one(root: Path, work: Path, preset: str, mode: str, chunks: int, batch: int, steps: int,
              warmup: int) -> dict:
    cfg = parse_config(train_config(
        root, work / f"{preset}-{mode}-{chunks}", model={"preset": preset, "encoders": "tiny"},
        dataset={"num_chunks": chunks, "sample_stride": 8, "cache_dir": str(work / "cache")},
        objective={"mode": mode}, optim={"lr": 1e-4, "batch_size": batch},
        schedule={"max_steps": warmup + steps, "log_every": 1000, "save_every": 100000}))
    tic = time.perf_counter()
    trainer = Trainer(cfg)  # includes encoding the dataset once (cached per geometry)
    setup_s = time.perf_counter() - tic
    sampler = StepBatches(len(trainer.train_set), batch, 1, 0, 1, 0, 0, warmup + steps)
    batches = iter(torch.utils.data.DataLoader(trainer.train_set, batch_sampler=sampler))
    for step in range(warmup):
        trainer._optimizer_step(batches, step)
    tic = time.perf_counter()
    for step in range(warmup, warmup + steps):
        trainer._optimizer_step(batches, step)
    elapsed = time.perf_counter() - tic
    dit = trainer.dit
    latents = 1 + 2 * chunks
    tokens = 2 * latents * dit.cfg.frame_seqlen + chunks * (dit.cfg.num_action_per_block + 1)
    row = {"preset": preset, "mode": mode, "chunks": chunks, "batch": batch,
           "params_M": sum(p.numel() for p in dit.parameters()) / 1e6,
           "trainable_M": sum(p.numel() for p in dit.parameters() if p.requires_grad) / 1e6,
           "tokens": tokens, "step_ms": 1000 * elapsed / steps, "samples_s": batch * steps / elapsed,
           "setup_s": setup_s, "samples": len(trainer.train_set)}
    trainer.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--modes", nargs="+", default=["full", "lora"], choices=["full", "lora"])
    parser.add_argument("--chunks", nargs="+", type=int, default=[2, 4], help="chunks per sample (release: 4)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'cuda' if torch.cuda.is_available() else 'cpu'}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        length = 24 * max(args.chunks) + 16
        root = write_v21(work / "dataset", [make_episode(i, length) for i in range(3)])
        rows = [bench_one(root, work, p, m, c, args.batch, args.steps, args.warmup)
                for p in args.presets for c in args.chunks for m in args.modes]
    header = (f"{'preset':<7}{'mode':<6}{'chunks':>7}{'batch':>6}{'params M':>10}{'train M':>9}{'tokens':>8}"
              f"{'step ms':>9}{'samples/s':>11}{'setup s':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['preset']:<7}{r['mode']:<6}{r['chunks']:>7}{r['batch']:>6}{r['params_M']:>10.1f}"
              f"{r['trainable_M']:>9.2f}{r['tokens']:>8}{r['step_ms']:>9.0f}{r['samples_s']:>11.2f}"
              f"{r['setup_s']:>9.1f}")
    print("setup s: building the trainer, incl. encoding the dataset the first time a geometry is seen "
          f"({rows[0]['samples']} samples at {args.chunks[0]} chunks)")


if __name__ == "__main__":
    main()
