"""Closed-loop engine: reset rules, bounded cache over a long episode, samplers, step skipping, Flash, bad input."""
import dataclasses

import numpy as np
import pytest
import torch

from model_core.config import preset
from model_core.engine import EngineConfig, WorldActionEngine
from model_core.errors import ConfigError, InputError
from model_core.factory import tiny_components

# Smaller than the tiny preset so that 50-call episodes stay fast: 32x64 frames -> 4x8 latents -> 8 tokens.
CFG = dataclasses.replace(preset("tiny"), frame_seqlen=8, num_layers=2)
H, W = TINY_VIDEO_HW = (32, 64)


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    dit, vae, text, image = tiny_components(seed=0, dit_config=CFG)
    text.cache_dir = tmp_path_factory.mktemp("prompts")
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return dit, vae, text, image


def make(components, **overrides):
    dit, vae, text, image = components
    cfg = dict(video_hw=TINY_VIDEO_HW, num_steps=2, cfg_scale=5.0) | overrides
    return WorldActionEngine(dit, vae, text, image, EngineConfig(**cfg))


def frames(n, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, H, W, 3), dtype=np.uint8)


STATE = np.linspace(-1, 1, 8).astype(np.float32)


def test_fifty_calls_never_grow_the_cache(components):
    engine = make(components)
    ptr, nbytes = engine.cache.keys.data_ptr(), engine.cache.nbytes()
    reasons, starts = [], []
    for i in range(50):
        out = engine.step(frames(1 if i == 0 else engine.frames_per_block, i), STATE, "reach the red cube")
        reasons.append(out.reset)
        starts.append(out.current_start_frame)
        for cache in (engine.cache, engine.uncond_cache):
            assert cache.length <= cache.window_tokens
        assert out.actions.shape == (24, 32) and np.isfinite(out.actions).all()
    assert engine.cache.keys.data_ptr() == ptr and engine.cache.nbytes() == nbytes
    assert reasons[0] == "first call" and reasons[4] == "window full" and reasons[1:4] == [None] * 3
    assert starts[:5] == [1, 3, 5, 7, 1]
    assert engine.cache.length <= engine.dit.cfg.window_tokens


def test_reset_rules(components):
    engine = make(components)
    assert engine.step(frames(1), STATE, "a").reset == "first call"
    assert engine.step(frames(8), STATE, "a").reset is None
    assert engine.step(frames(8), STATE, "b").reset == "instruction changed"
    assert engine.step(frames(1), STATE, "b").reset == "single-frame input"


def test_same_inputs_same_actions_and_the_seed_matters(components):
    a = make(components).step(frames(1), STATE, "a").actions
    b = make(components).step(frames(1), STATE, "a").actions
    c = make(components, seed=7).step(frames(1), STATE, "a").actions
    assert np.array_equal(a, b) and not np.allclose(a, c)


def count_dit_calls(engine):
    calls = []
    original = engine.dit.forward_cached

    def counting(*args, **kwargs):
        calls.append(kwargs.get("append", False))
        return original(*args, **kwargs)

    engine.dit.forward_cached = counting
    return calls


@pytest.mark.parametrize("overrides, denoise_calls", [
    (dict(num_steps=16, num_dit_runs=8, cfg_scale=1.0), 8),
    (dict(num_steps=16, cfg_scale=1.0), 16),
    (dict(num_steps=4, cfg_scale=5.0), 8),
    (dict(flash=True, cfg_scale=1.0), 1),
])
def test_dit_evaluations_per_chunk(components, overrides, denoise_calls):
    engine = make(components, **overrides)
    calls = count_dit_calls(engine)
    engine.step(frames(1), STATE, "a")
    assert calls.count(False) == denoise_calls
    assert calls.count(True) == (1 if overrides["cfg_scale"] == 1.0 else 2)  # prefill per branch


def test_euler_and_unipc_both_run(components):
    a = make(components, sampler="euler", num_steps=4).step(frames(1), STATE, "a").actions
    b = make(components, sampler="unipc", num_steps=4).step(frames(1), STATE, "a").actions
    assert np.isfinite(a).all() and np.isfinite(b).all() and not np.allclose(a, b)


@pytest.mark.parametrize("bad, message", [
    (lambda: (frames(1)[:, :16], STATE), r"frames: expected shape \[\*, 32, 64, 3\], got \[1, 16, 64, 3\]"),
    (lambda: (frames(1).astype(np.float32), STATE), "expected dtype uint8"),
    (lambda: (frames(1), np.full(8, np.nan, np.float32)), "state: contains NaN"),
    (lambda: (frames(1), np.zeros(65, np.float32)), r"state: expected shape \[S\] with S <= 64"),
])
def test_bad_inputs(components, bad, message):
    engine = make(components)
    f, s = bad()
    with pytest.raises(InputError, match=message):
        engine.step(f, s, "a")


def test_continuation_needs_a_whole_block(components):
    engine = make(components)
    engine.step(frames(1), STATE, "a")
    with pytest.raises(InputError, match="needs 8 new frames"):
        engine.step(frames(5), STATE, "a")


def test_config_errors_name_the_field(components):
    with pytest.raises(ConfigError, match="engine.cfg_scale=0.5"):
        EngineConfig(video_hw=TINY_VIDEO_HW, cfg_scale=0.5)
    with pytest.raises(ConfigError, match="no DiT step-skipping schedule"):
        EngineConfig(video_hw=TINY_VIDEO_HW, num_dit_runs=5)
    with pytest.raises(ConfigError, match=r"engine.video_hw=\(64, 64\)"):
        make(components, video_hw=(64, 64))
