"""Block causality, cached-vs-teacher-forcing equivalence and the release's state-token quirk (MODEL_SPEC 5)."""
import dataclasses

import pytest
import torch

from model_core.config import DiTConfig
from model_core.dit import CausalWanModel, Registers, block_causal_mask
from model_core.kv_cache import KVCache

CFG = DiTConfig(model_type="ti2v", dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=4, out_dim=4,
                frame_seqlen=8, concat_first_frame_latent=False, text_dim=16, text_len=8, clip_dim=16, freq_dim=32,
                num_action_per_block=4, action_dim=8, max_state_dim=8, hidden_size=16, max_chunk_size=2)
NB = 2  # blocks -> 1 + 2*2 = 5 latent frames, the whole window
FR = 1 + NB * CFG.num_frame_per_block


def make_model(cfg=CFG, seed=0):
    torch.manual_seed(seed)
    model = CausalWanModel(cfg).eval()
    with torch.no_grad():  # the release zero-inits the head; random weights make every path observable
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


def make_inputs(cfg=CFG, seed=1):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(
        clean=rnd(1, cfg.out_dim, FR, 4, 8), noisy=rnd(1, cfg.out_dim, FR, 4, 8),
        t=torch.tensor([[900.0, 700.0, 700.0, 300.0, 300.0]]),
        actions=rnd(1, NB * cfg.num_action_per_block, cfg.action_dim),
        t_actions=torch.tensor([[700.0] * 4 + [300.0] * 4]), states=rnd(1, NB, cfg.max_state_dim),
        text=rnd(1, cfg.text_len, cfg.text_dim), clip=rnd(1, 5, cfg.clip_dim))


def train_forward(model, x):
    ctx = model.encode_context(x["text"], x["clip"])
    with torch.no_grad():
        return model.forward_train(x["noisy"], x["clean"], x["t"], Registers(x["actions"], x["t_actions"],
                                                                               x["states"]), ctx)


def test_mask_matches_the_rules():
    fs, Ta = CFG.frame_seqlen, CFG.num_action_per_block
    m = block_causal_mask(CFG, FR, NB)
    Lv = FR * fs
    clean = lambda f: f * fs  # noqa: E731  first token of clean frame f
    noisy = lambda f: Lv + f * fs  # noqa: E731
    act = lambda b: 2 * Lv + b * Ta  # noqa: E731
    state = lambda b: 2 * Lv + NB * Ta + b  # noqa: E731
    assert m[clean(0), clean(0)] and not m[clean(0), clean(1)]
    assert m[clean(3), clean(1)] and m[clean(3), clean(4)] and m[clean(3), clean(0)]  # block 2 sees <= 2
    assert not m[noisy(0), clean(0)] and m[noisy(0), noisy(0)] and not m[noisy(0), act(0)]
    assert m[noisy(3), clean(2)] and not m[noisy(3), clean(3)] and m[noisy(3), noisy(4)]  # clean < own block
    assert m[noisy(3), act(1)] and m[noisy(3), state(1)] and not m[noisy(3), act(0)] and not m[noisy(3), noisy(1)]
    assert m[act(1), clean(0)] and m[act(1), noisy(3)] and not m[act(0), noisy(3)]
    assert m[state(1)].sum() == 1 and m[state(1), state(1)]


@pytest.mark.parametrize("what", ["clean", "noisy", "actions", "states"])
def test_training_forward_never_flows_backwards(what):
    model, x = make_model(), make_inputs()
    video, actions = train_forward(model, x)
    y = {k: v.clone() for k, v in x.items()}
    if what in ("clean", "noisy"):
        y[what][:, :, 3:] += 1.0  # the last block (frames 3-4)
    else:
        y[what][:, -(CFG.num_action_per_block if what == "actions" else 1):] += 1.0
    video2, actions2 = train_forward(model, y)
    assert torch.equal(video[:, :, :3], video2[:, :, :3])  # frame 0 and block 1 untouched
    assert torch.equal(actions[:, :4], actions2[:, :4])
    changed = (video2 - video).abs().max() + (actions2 - actions).abs().max()
    assert changed > 1e-3 or what == "clean"  # the perturbation does reach its own block
    if what == "clean":  # clean block 2 is seen by no denoising token at all (only by later blocks)
        assert torch.equal(video, video2) and torch.equal(actions, actions2)


def cached_rollout(model, x, block):
    """Prefill frame 0, append clean blocks < block, denoise `block` -> video [1, C, 2, H, W], actions."""
    ctx = model.encode_context(x["text"], x["clip"])
    cache = KVCache(model.cfg)
    fb, Ta = CFG.num_frame_per_block, CFG.num_action_per_block
    with torch.no_grad():
        model.forward_cached(x["clean"][:, :, :1], torch.zeros(1, 1), 0, cache, ctx, append=True)
        for b in range(1, block):
            s = 1 + (b - 1) * fb
            model.forward_cached(x["clean"][:, :, s:s + fb], torch.zeros(1, fb), s, cache, ctx, append=True)
        s = 1 + (block - 1) * fb
        regs = Registers(x["actions"][:, (block - 1) * Ta:block * Ta], x["t_actions"][:, (block - 1) * Ta:block * Ta],
                         x["states"][:, block - 1:block])
        return model.forward_cached(x["noisy"][:, :, s:s + fb], x["t"][:, s:s + fb], s, cache, ctx, regs)


@pytest.mark.parametrize("block", [1, 2])
def test_cached_inference_equals_teacher_forcing_with_training_state_attention(block):
    model, x = make_model(), make_inputs()
    model.cached_state_attention = "training"
    video, actions = train_forward(model, x)
    v, a = cached_rollout(model, x, block)
    s = 1 + (block - 1) * CFG.num_frame_per_block
    assert torch.allclose(v, video[:, :, s:s + 2], atol=1e-5)
    assert torch.allclose(a, actions[:, (block - 1) * 4:block * 4], atol=1e-5)


def test_release_state_quirk_changes_cached_outputs_with_two_layers_only():
    """The release lets the state token attend to everything at inference; in training it sees only itself."""
    for layers, differs in ((1, False), (2, True)):
        cfg = dataclasses.replace(CFG, num_layers=layers)
        model, x = make_model(cfg), make_inputs(cfg)
        video, actions = train_forward(model, x)
        model.cached_state_attention = "release"
        v, a = cached_rollout(model, x, 2)
        err = max((v - video[:, :, 3:5]).abs().max(), (a - actions[:, 4:]).abs().max()).item()
        assert (err > 1e-4) == differs, (layers, err)


def test_denoising_calls_read_but_never_write_the_cache():
    model, x = make_model(), make_inputs()
    ctx = model.encode_context(x["text"], x["clip"])
    cache = KVCache(CFG)
    with torch.no_grad():
        model.forward_cached(x["clean"][:, :, :1], torch.zeros(1, 1), 0, cache, ctx, append=True)
        before = [t.clone() for t in cache.layer(1)]
        regs = Registers(x["actions"][:, :4], x["t_actions"][:, :4], x["states"][:, :1])
        model.forward_cached(x["noisy"][:, :, 1:3], x["t"][:, 1:3], 1, cache, ctx, regs)
    assert cache.length == CFG.frame_seqlen
    assert all(torch.equal(a, b) for a, b in zip(before, cache.layer(1)))


def test_reference_and_sdpa_kernels_agree():
    model, x = make_model(), make_inputs()
    v1, a1 = train_forward(model, x)
    model.attention_kernel = "reference"
    v2, a2 = train_forward(model, x)
    assert torch.allclose(v1, v2, atol=1e-5) and torch.allclose(a1, a2, atol=1e-5)


CFG_I2V = dataclasses.replace(CFG, model_type="i2v", in_dim=2 * CFG.out_dim + 4, concat_first_frame_latent=True)


def test_i2v_first_frame_latent_path_matches_between_training_and_cache():
    """i2v: y (4 mask channels + first-frame latent) is concatenated on channels in both passes."""
    model, x = make_model(CFG_I2V), make_inputs(CFG_I2V)
    model.cached_state_attention = "training"
    y = torch.randn(1, CFG_I2V.in_dim - CFG_I2V.out_dim, FR, 4, 8)
    ctx = model.encode_context(x["text"], x["clip"])
    regs = Registers(x["actions"], x["t_actions"], x["states"])
    with torch.no_grad():
        video, actions = model.forward_train(x["noisy"], x["clean"], x["t"], regs, ctx, y=y)
        cache = KVCache(CFG_I2V)
        model.forward_cached(x["clean"][:, :, :1], torch.zeros(1, 1), 0, cache, ctx, y=y[:, :, :1], append=True)
        model.forward_cached(x["clean"][:, :, 1:3], torch.zeros(1, 2), 1, cache, ctx, y=y[:, :, 1:3], append=True)
        r2 = Registers(x["actions"][:, 4:], x["t_actions"][:, 4:], x["states"][:, 1:])
        v, a = model.forward_cached(x["noisy"][:, :, 3:5], x["t"][:, 3:5], 3, cache, ctx, r2, y=y[:, :, 3:5])
        video_no_y, _ = model.forward_train(x["noisy"], x["clean"], x["t"], regs, ctx, y=torch.zeros_like(y))
    assert torch.allclose(v, video[:, :, 3:5], atol=1e-5) and torch.allclose(a, actions[:, 4:], atol=1e-5)
    assert (video_no_y - video).abs().max() > 1e-3  # the first-frame latent is really used


def test_i2v_without_y_is_one_clear_error():
    from model_core.errors import InputError
    model, x = make_model(CFG_I2V), make_inputs(CFG_I2V)
    with pytest.raises(InputError, match="y: required"):
        train_forward(model, x)


@pytest.mark.parametrize("field, bad, message", [
    ("noisy", lambda t: t[:, :3], "expected shape"),
    ("actions", lambda t: t[:, :, :5], r"registers.actions: expected shape \[1, 8, 8\], got \[1, 8, 5\]"),
    ("states", lambda t: t * float("nan"), "registers.states: contains NaN"),
    ("t", lambda t: t[:, :4], r"noisy_video timesteps: expected shape \[1, 5\], got \[1, 4\]"),
])
def test_bad_inputs_raise_one_clear_error(field, bad, message):
    from model_core.errors import InputError
    model, x = make_model(), make_inputs()
    x[field] = bad(x[field])
    with pytest.raises(InputError, match=message):
        train_forward(model, x)
