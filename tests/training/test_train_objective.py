"""The flow-matching objective (noise levels, targets, weights, Flash) and the LoRA adapters' release layout."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from model_core.checkpoint import load_model, save_checkpoint
from model_core.config import preset
from model_core.dit import CausalWanModel, Registers
from model_core.schedulers import training_schedule
from model_core.training.config import ObjectiveConfig
from model_core.training.lora import LoRALinear, adapter_config, apply_lora, merged_state_dict
from model_core.training.objective import FlowMatchingObjective, step_seed
from model_core.training.train import RELEASE_LORA_PREFIX

CFG = preset("tiny")
NB = 2


def objective(**kw) -> FlowMatchingObjective:
    return FlowMatchingObjective(ObjectiveConfig(**kw), CFG)


def batch(B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, CFG.action_dim)
    mask[:, :8] = 1
    return {"latents": torch.randn(B, 16, 1 + 2 * NB, 8, 16, generator=g),
            "actions": torch.randn(B, NB * 24, CFG.action_dim, generator=g) * mask[:, None],
            "states": torch.randn(B, NB, CFG.max_state_dim, generator=g),
            "text": torch.randn(B, CFG.text_len, CFG.text_dim, generator=g), "action_mask": mask}


def test_levels_one_per_block_frame_zero_apart_actions_shared():
    obj = objective()
    video, actions = obj.sample_levels(512, NB, np.random.default_rng(0))
    assert video.shape == (512, 5) and actions.shape == (512, NB)
    assert (video[:, 1] == video[:, 2]).all() and (video[:, 3] == video[:, 4]).all()
    np.testing.assert_array_equal(actions, video[:, 1::2])
    assert (video[:, 0] != video[:, 1]).mean() > 0.9  # frame 0 draws its own level
    assert video.min() >= 0 and video.max() < 1000
    dec_v, dec_a = objective(decouple_action_noise=True).sample_levels(512, NB, np.random.default_rng(0))
    assert (dec_a != dec_v[:, 1::2]).mean() > 0.9


def test_flash_levels_biased_to_high_video_noise_and_uniform_actions():
    obj = objective(flash=True)
    video, actions = obj.sample_levels(4000, NB, np.random.default_rng(1))
    sigma = obj.sigmas[torch.from_numpy(video)].numpy()
    assert sigma.mean() == pytest.approx(7 / 8, abs=0.01)  # Beta(7, 1) mean
    assert (sigma > 0.5).mean() > 0.98
    assert actions.mean() == pytest.approx(499.5, abs=15)  # uniform over the 1000 level ids
    assert (actions != video[:, 1::2]).mean() > 0.9  # decoupled


def test_weights_and_levels_are_the_release_table():
    obj, table = objective(), training_schedule(5.0)
    assert torch.equal(obj.sigmas, table["sigmas"]) and torch.equal(obj.weights, table["weights"])
    assert obj.weights.mean().item() == pytest.approx(1.0, abs=1e-5)
    assert obj.timesteps[0].item() == pytest.approx(1000.0) and obj.sigmas[999] < obj.sigmas[0]


def test_noising_targets_and_weighted_loss():
    obj, b = objective(), batch()
    noise = obj.draw(b, seed=3)
    seen = {}
    pred_v, pred_a = torch.randn(2, 16, 5, 8, 16), torch.randn(2, NB * 24, CFG.action_dim)

    def forward_train(noisy, clean, t, registers, context, y=None):
        seen.update(noisy=noisy, clean=clean, t=t, registers=registers)
        return pred_v, pred_a

    stub = SimpleNamespace(encode_context=lambda text, clip: None, forward_train=forward_train)
    parts = obj.loss(stub, b, noise)
    sig_v = obj.sigmas[noise.video_ids]
    s = sig_v[:, None, :, None, None]
    expect_noisy = (1 - s) * b["latents"] + s * noise.video_noise
    assert torch.allclose(seen["noisy"], expect_noisy) and torch.equal(seen["clean"], b["latents"])
    assert torch.allclose(seen["t"], 1000 * sig_v)
    sig_a = obj.sigmas[noise.action_ids].repeat_interleave(24, dim=1)
    assert torch.allclose(seen["registers"].timesteps, 1000 * sig_a)
    # video: per-frame MSE x w(frame level), mean over frames and batch
    err_v = (pred_v - (noise.video_noise - b["latents"])).pow(2).mean(dim=(1, 3, 4))
    assert parts.video.item() == pytest.approx((err_v * obj.weights[noise.video_ids]).mean().item(), rel=1e-5)
    # actions: MSE over the 8 real dims only, per block, x w(block level)
    err_a = (pred_a - (noise.action_noise - b["actions"]))[..., :8].pow(2).mean(-1).view(2, NB, 24).mean(-1)
    assert parts.action.item() == pytest.approx((err_a * obj.weights[noise.action_ids]).mean().item(), rel=1e-5)
    assert parts.loss.item() == pytest.approx(parts.video.item() + parts.action.item(), rel=1e-6)


def test_perfect_prediction_gives_zero_loss_and_padding_is_ignored():
    obj, b = objective(first_frame_loss=False, action_loss_weight=2.0), batch()
    noise = obj.draw(b, seed=5)
    target_v, target_a = noise.video_noise - b["latents"], (noise.action_noise - b["actions"]).clone()
    target_a[..., 8:] += 100.0  # padding dims never count
    garbage = target_v.clone()
    garbage[:, :, 0] += 100.0  # nor does frame 0 with first_frame_loss off
    stub = SimpleNamespace(encode_context=lambda t, c: None, forward_train=lambda *a, **k: (garbage, target_a))
    parts = obj.loss(stub, b, noise)
    assert parts.loss.item() == pytest.approx(0.0, abs=1e-10)


def test_draws_are_reproducible_from_the_step_seed():
    obj, b = objective(), batch()
    n1, n2 = obj.draw(b, step_seed(0, 7, 1)), obj.draw(b, step_seed(0, 7, 1))
    n3 = obj.draw(b, step_seed(0, 7, 0))
    assert torch.equal(n1.video_noise, n2.video_noise) and torch.equal(n1.video_ids, n2.video_ids)
    assert not torch.equal(n1.video_noise, n3.video_noise)


# --- LoRA ------------------------------------------------------------------------------------------------------------

def small_dit(seed=0) -> CausalWanModel:
    torch.manual_seed(seed)
    model = CausalWanModel(CFG).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def forward(model, seed=1):
    b = batch(1, seed)
    noise = objective().draw(b, 11)
    noisy, t, regs = objective().noised(b, noise)
    with torch.no_grad():
        return model.forward_train(noisy, b["latents"], t, regs, model.encode_context(b["text"], None))


def test_lora_targets_follow_peft_suffix_matching():
    model = small_dit()
    names = apply_lora(model, 4, 4.0, ("q", "k", "v", "o", "ffn.0", "ffn.2"))
    per_block = {n.split(".", 2)[2] for n in names}
    assert per_block == {"self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                         "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2"}
    assert len(names) == 10 * CFG.num_layers  # k_img / v_img, embeddings, head: untouched
    keys = set(model.state_dict())
    assert {"blocks.0.self_attn.q.base_layer.weight", "blocks.0.self_attn.q.base_layer.bias",
            "blocks.0.self_attn.q.lora_A.default.weight", "blocks.0.ffn.2.lora_B.default.weight"} <= keys
    assert model.blocks[0].self_attn.q.lora_A["default"].weight.shape == (4, CFG.dim)


def test_fresh_adapters_do_not_change_the_model():
    model = small_dit()
    before = forward(model)
    apply_lora(model, 4, 4.0, ("q", "k", "v", "o", "ffn.0", "ffn.2"))
    after = forward(model)
    assert all(torch.equal(x, y) for x, y in zip(before, after))


def test_release_layout_checkpoint_merges_on_load(tmp_path):
    model = small_dit()
    apply_lora(model, 4, 8.0, ("q", "k", "v", "o", "ffn.0", "ffn.2"))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B["default"].weight.normal_(std=0.05)
    trained = forward(model)
    save_checkpoint(model, tmp_path, prefix=RELEASE_LORA_PREFIX)
    (tmp_path / "adapter_config.json").write_text(json.dumps(adapter_config(4, 8.0, ("q",))))
    from safetensors import safe_open
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert all(k.startswith(RELEASE_LORA_PREFIX) for k in keys)
    assert RELEASE_LORA_PREFIX + "blocks.1.cross_attn.v.lora_B.default.weight" in keys
    loaded, _ = load_model(tmp_path)
    merged = merged_state_dict(model)
    assert set(loaded.state_dict()) == set(merged)
    assert all(torch.equal(loaded.state_dict()[k], merged[k]) for k in merged)  # bit-exact merge (alpha / r = 2)
    for x, y in zip(forward(loaded), trained):
        assert torch.allclose(x, y, atol=1e-5)
