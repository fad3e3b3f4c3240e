"""Check this implementation against reference data made with the official DreamZero code.

    python -m model_core.verify DIR [--atol 1e-4]

DIR is in the golden format (MODEL_SPEC.md section 10): config.json, model.safetensors (release key names),
io.npz (a teacher-forcing forward and a sequence of KV-cache calls) and scheduler.npz. Prints one line per check
with its max abs error and exits non-zero if any check fails.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from model_core.attention import rope_frequencies, video_rope_split
from model_core.checkpoint import load_model
from model_core.dit import Registers
from model_core.kv_cache import KVCache
from model_core.schedulers import FlowUniPC, release_sigmas, training_schedule


class Report:
    def __init__(self, atol: float):
        self.atol = atol
        self.failed = 0
        self.count = 0

    def check(self, name: str, actual, expected, atol: float | None = None, exact: bool = False) -> None:
        actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
        tol = 0.0 if exact else (self.atol if atol is None else atol)
        if actual.shape != expected.shape:
            ok, detail = False, f"shape {list(actual.shape)} != expected {list(expected.shape)}"
        else:
            err = float(np.abs(actual - expected).max()) if actual.size else 0.0
            ok, detail = err <= tol, f"max abs err {err:.3e} (tol {tol:.0e})"
        self.count += 1
        self.failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name:<32} {detail}", flush=True)


def _tensors(npz: Path) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in np.load(npz).items()}


def verify_model(directory: Path, report: Report) -> None:
    model, ckpt = load_model(directory)
    report.check("weights load unchanged", 0.0, 0.0)
    d = _tensors(directory / "io.npz")
    clip = d.get("clip_feature")
    context = model.encode_context(d["context"], clip)
    y = d.get("y_full") if model.cfg.concat_first_frame_latent else None
    with torch.no_grad():
        if "train_x_noisy" in d:
            regs = Registers(d["train_action_noisy"], d["train_timestep_action"], d["train_state"])
            video, actions = model.forward_train(d["train_x_noisy"], d["train_clean_x"], d["train_timestep"], regs,
                                                 context, y=y)
            report.check("train: video velocity", video, d["train_video_pred"])
            report.check("train: action velocity", actions, d["train_action_pred"])
        cache = KVCache(model.cfg)
        calls = sorted({k.split("_")[0] for k in d if k.startswith("inf") and k[3:4].isdigit()})
        for call in calls:
            key = lambda name: f"{call}_{name}"  # noqa: E731
            regs = None
            if key("action") in d:
                regs = Registers(d[key("action")], d[key("timestep_action")], d[key("state")])
            start = int(d[key("start_frame")])
            report.check(f"{call}: cache length before", cache.length, int(d[key("cache_len_before")]), exact=True)
            y_call = None if y is None else y[:, :, start:start + d[key("x")].shape[2]]
            video, actions = model.forward_cached(d[key("x")], d[key("timestep")], start, cache, context, regs,
                                                  y=y_call, append=regs is None)
            report.check(f"{call}: video velocity", video, d[key("video_pred")])
            if regs is not None:
                report.check(f"{call}: action velocity", actions, d[key("action_pred")])
            report.check(f"{call}: cache length after", cache.length, int(d[key("cache_len_after")]), exact=True)
            for tag, layer in (("layer0", 0), ("layerL", model.cfg.num_layers - 1)):
                if key(f"cache_{tag}_after") in d:
                    report.check(f"{call}: cache contents {tag}", torch.stack(cache.layer(layer)),
                                 d[key(f"cache_{tag}_after")])
    head_dim = model.cfg.head_dim
    d_t, d_h, d_w = video_rope_split(head_dim)
    for name, dim in (("t", d_t), ("h", d_h), ("w", d_w), ("action", head_dim), ("state", head_dim)):
        table = d.get(f"rope_freqs_{name}")
        if table is not None:
            ours = torch.view_as_real(rope_frequencies(torch.arange(table.shape[0]), dim))
            report.check(f"rope table {name}", ours, table, atol=1e-12)


def verify_scheduler(directory: Path, report: Report) -> None:
    s = _tensors(directory / "scheduler.npz")
    steps = len(s["unipc_timesteps"])
    sigmas, timesteps = release_sigmas(steps)
    report.check("unipc sigmas", sigmas, s["unipc_sigmas"], exact=True)
    report.check("unipc timesteps", timesteps, s["unipc_timesteps"], exact=True)
    # The golden trajectory integrates the toy velocity field v(x) = x - target from x0.
    sampler, x, traj = FlowUniPC(sigmas), s["unipc_x0"].clone(), []
    for _ in range(steps):
        x = sampler.step(x - s["unipc_target"], x)
        traj.append(x)
    report.check("unipc trajectory", torch.stack(traj), s["unipc_traj"], atol=1e-5)
    train = training_schedule()
    report.check("training sigmas", train["sigmas"], s["fm_train_sigmas"], exact=True)
    report.check("training timesteps", train["timesteps"], s["fm_train_timesteps"], exact=True)
    report.check("training loss weights", train["weights"], s["fm_train_weights"], atol=1e-5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--atol", type=float, default=1e-4, help="tolerance on model outputs (default 1e-4)")
    args = parser.parse_args(argv)
    report = Report(args.atol)
    torch.manual_seed(0)
    if not (args.directory / "io.npz").exists() and not (args.directory / "scheduler.npz").exists():
        print(f"{args.directory}: no io.npz or scheduler.npz (not a golden directory)", file=sys.stderr)
        return 2
    if (args.directory / "io.npz").exists():
        verify_model(args.directory, report)
    if (args.directory / "scheduler.npz").exists():
        verify_scheduler(args.directory, report)
    print(f"{report.count - report.failed} passed, {report.failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
