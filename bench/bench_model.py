"""Per-chunk latency of the closed-loop model on this machine: KV cache vs recomputing history, fp32 vs int8.

    python bench/bench_model.py [--presets tiny small] [--calls 12] [--steps 16] [--cfg 5.0]

Builds the engine through the same code as deployment (random weights: latency does not depend on them) and
runs an episode of `--calls` control calls (the cache resets every 4 calls, as the release's window rule says).
"recompute" rebuilds every key of the observed history at each DiT evaluation: what a model without a KV cache
must do; its actions are also compared with the cached ones (they must agree).
Prints one table per preset plus FLOPs per chunk and achieved GFLOP/s against a measured fp32 matmul rate.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from model_core.backends import apply_backend
from model_core.config import TINY_VIDEO_HW, preset
from model_core.dit import CausalWanModel
from model_core.engine import EngineConfig, WorldActionEngine
from model_core.kv_cache import KVCache
from model_core.text_encoder import PromptEncoder
from model_core.vae import WanVAE


class RecomputeEngine(WorldActionEngine):
    """The same engine without a persistent cache: every DiT call re-encodes the whole observed history."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.history: list[tuple[torch.Tensor, int]] = []

    def _append(self, latents, t, stage):
        if self.current_start_frame == 0:
            self.history = []
        self.history = [(x, s) for x, s in self.history if s < self.current_start_frame]
        self.history.append((latents, self.current_start_frame))
        super()._append(latents, t, stage)

    def _velocities(self, video, actions, t_video, t_action, states):
        fresh, fresh_u = KVCache(self.dit.cfg), KVCache(self.dit.cfg) if self.uncond_cache is not None else None
        cond, uncond = self._contexts
        for latents, start in self.history:
            zeros = torch.zeros(1, latents.shape[2])
            self.dit.forward_cached(latents, zeros, start, fresh, cond, append=True)
            if fresh_u is not None:
                self.dit.forward_cached(latents, zeros, start, fresh_u, uncond, append=True)
        self.cache, self.uncond_cache = fresh, fresh_u
        return super()._velocities(video, actions, t_video, t_action, states)


def matmul_gflops(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    tic = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - tic) / 1e9


def make_engine(name: str, backend: str, cls, steps: int, cfg_scale: float, seed: int = 0):
    cfg = preset(name)
    torch.manual_seed(seed)
    dit = CausalWanModel(cfg).eval()
    with torch.no_grad():  # the release zero-inits the head; give every path some signal
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    vae = WanVAE.tiny("wan21", seed=seed)
    text = PromptEncoder.tiny(seed=seed, cache_dir="/tmp/dreamzero_bench_prompts")
    dit = apply_backend(dit, backend)
    engine = cls(dit, vae, text, None, EngineConfig(video_hw=TINY_VIDEO_HW, num_steps=steps, cfg_scale=cfg_scale))
    return engine


def run_episode(engine, calls: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    H, W = engine.config.video_hw
    latencies, actions, denoise_flops = [], [], None
    for i in range(calls):
        frames = rng.integers(0, 255, (1 if i == 0 else engine.frames_per_block, H, W, 3), dtype=np.uint8)
        state = rng.uniform(-1, 1, 8).astype(np.float32)
        if i == 1 and denoise_flops is None:
            counter = FlopCounterMode(display=False)
            with counter:
                engine._denoise(torch.zeros(1, 1, engine.dit.cfg.max_state_dim))
            denoise_flops = counter.get_total_flops()
        tic = time.perf_counter()
        out = engine.step(frames, state, "pick up the red cube")
        latencies.append(time.perf_counter() - tic)
        actions.append(out.actions)
    return np.array(latencies), np.stack(actions), denoise_flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--calls", type=int, default=12)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--cfg", type=float, default=5.0)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    peak = matmul_gflops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32 matmul 1024^3: {peak:.0f} GFLOP/s")
    print(f"{args.steps} sampler steps, CFG {args.cfg} ({2 if args.cfg > 1 else 1} DiT runs per step), "
          f"{args.calls} calls per episode (cache reset every 4 calls)\n")
    for name in args.presets:
        params = sum(p.numel() for p in CausalWanModel(preset(name)).parameters()) / 1e6
        print(f"== preset {name} ({params:.1f}M DiT parameters) ==")
        rows, ref = [], None
        for mode, cls in (("cache", WorldActionEngine), ("recompute", RecomputeEngine)):
            for backend in ("eager", "int8_dynamic"):
                if mode == "recompute" and backend == "int8_dynamic":
                    continue
                engine = make_engine(name, backend, cls, args.steps, args.cfg)
                lat, acts, flops = run_episode(engine, args.calls)
                if ref is None:
                    ref = acts
                rel = float(np.linalg.norm(acts - ref) / np.linalg.norm(ref))
                rows.append((mode, "fp32" if backend == "eager" else "int8", lat, rel, flops))
        print(f"{'mode':<10}{'dtype':<6}" + "".join(f"{'call' + str(i + 1):>8}" for i in range(args.calls))
              + f"{'last/1st':>10}{'mean ms':>9}{'rel.err':>9}")
        for mode, dt, lat, rel, _ in rows:
            cells = "".join(f"{1e3 * x:8.1f}" for x in lat)
            # compare calls at the same place in the window: first continuation call vs the last one
            cont = [i for i in range(args.calls) if i % 4 != 0]
            ratio = lat[cont[-1]] / lat[cont[0]]
            print(f"{mode:<10}{dt:<6}{cells}{ratio:10.2f}{1e3 * lat.mean():9.1f}{rel:9.4f}")
        base = rows[0]
        int8 = next(r for r in rows if r[1] == "int8")
        flops = base[4]
        mean_denoise = base[2][1:].mean()
        print(f"int8 speed-up over fp32 (cached): {base[2].mean() / int8[2].mean():.2f}x, "
              f"relative action error {int8[3] * 100:.2f}%")
        print(f"DiT FLOPs per chunk (denoise, {args.steps} steps): {flops / 1e9:.2f} GFLOP; achieved "
              f"{flops / mean_denoise / 1e9:.1f} GFLOP/s of a measured {peak:.0f} GFLOP/s "
              f"({100 * flops / mean_denoise / 1e9 / peak:.0f}%; call time includes VAE and cache appends)\n")


if __name__ == "__main__":
    main()
