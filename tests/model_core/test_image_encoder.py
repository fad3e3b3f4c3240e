"""CLIP image encoder (model_core/image_encoder.py): Wan checkpoint layout, use_31_block math, preprocessing."""
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

from model_core.errors import CheckpointError, InputError
from model_core.image_encoder import VIT_H_14_31, ImageEncoder, hf_to_wan_clip

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def wan_clip_visual_layout(width, blocks, patch, tokens, mlp):
    """Wan `XLMRobertaCLIP.visual` tensors (pool 'token'; pre_norm => patch conv without bias), from
    wan/modules/clip.py; without the head, which the encoder does not use."""
    d = {"visual.patch_embedding.weight": (width, 3, patch, patch), "visual.cls_embedding": (1, 1, width),
         "visual.pos_embedding": (1, tokens, width)}
    for norm in ("pre_norm", "post_norm"):
        d |= {f"visual.{norm}.weight": (width,), f"visual.{norm}.bias": (width,)}
    for i in range(blocks):
        p = f"visual.transformer.{i}."
        for name, shape in (("norm1", (width,)), ("norm2", (width,)), ("attn.to_qkv", (3 * width, width)),
                            ("attn.proj", (width, width)), ("mlp.0", (mlp, width)), ("mlp.2", (width, mlp))):
            d |= {p + name + ".weight": shape, p + name + ".bias": shape[:1]}
    return d


def full_tiny_checkpoint(enc, seed=1):
    """What a real file holds beyond the used tensors: the last block, the head and the text tower."""
    g = torch.Generator().manual_seed(seed)
    state = dict(enc.original_state_dict())
    for key, value in list(state.items()):
        if key.startswith("visual.transformer.1."):
            state[key.replace(".1.", ".2.", 1)] = torch.randn(value.shape, generator=g) * 0.2
    state |= {"visual.head": torch.randn(32, 24, generator=g), "log_scale": torch.tensor(4.6),
              "textual.token_embedding.weight": torch.randn(10, 16, generator=g)}
    return state


def reference_wan_clip(state, images, blocks, heads=4, size=56, patch=14):
    """Wan's CLIPModel.visual(use_31_block) written out: resize, normalise, ViT without the last block."""
    x = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False)
    x = (x * 0.5 + 0.5 - MEAN) / STD
    x = F.conv2d(x, state["visual.patch_embedding.weight"], stride=patch).flatten(2).transpose(1, 2)
    b, _, width = x.shape
    x = torch.cat([state["visual.cls_embedding"].expand(b, -1, -1), x], dim=1) + state["visual.pos_embedding"]

    def ln(t, name):
        return F.layer_norm(t, (width,), state[name + ".weight"], state[name + ".bias"], eps=1e-5)

    x = ln(x, "visual.pre_norm")
    for i in range(blocks):
        p = f"visual.transformer.{i}."
        h = F.linear(ln(x, p + "norm1"), state[p + "attn.to_qkv.weight"], state[p + "attn.to_qkv.bias"])
        q, k, v = h.view(b, -1, 3, heads, width // heads).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x + F.linear(a.transpose(1, 2).reshape(b, -1, width), state[p + "attn.proj.weight"],
                         state[p + "attn.proj.bias"])
        h = F.gelu(F.linear(ln(x, p + "norm2"), state[p + "mlp.0.weight"], state[p + "mlp.0.bias"]))
        x = x + F.linear(h, state[p + "mlp.2.weight"], state[p + "mlp.2.bias"])
    return x


def images(b=2, h=40, w=72, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_tiny_checkpoint_has_the_wan_clip_layout():
    state = ImageEncoder.tiny().original_state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == wan_clip_visual_layout(32, 2, 14, 17, 128)


def test_real_vit_h_14_maps_onto_the_wan_clip_layout():
    with torch.device("meta"):
        model = CLIPVisionModel(CLIPVisionConfig(**VIT_H_14_31))
    mapped = {k: tuple(v.shape) for k, v in hf_to_wan_clip(getattr(model, "vision_model", model).state_dict()).items()}
    assert mapped == wan_clip_visual_layout(1280, 31, 14, 257, 5120)  # blocks 0..30 of the file's 0..31


def test_full_checkpoint_reloads_identically_and_matches_the_wan_math(tmp_path):
    enc = ImageEncoder.tiny()
    state = full_tiny_checkpoint(enc)
    torch.save(state, tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
    loaded = ImageEncoder.from_pretrained(tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
                                          tiny=True)
    x = images()
    out = loaded.encode(x)
    assert out.shape == (2, 17, 32) and torch.equal(out, enc.encode(x))
    torch.testing.assert_close(out, reference_wan_clip(state, x, blocks=2), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, reference_wan_clip(state, x, blocks=3), atol=1e-3)  # the penultimate block


def test_wrong_shape_checkpoint_names_the_key_and_both_shapes():
    state = full_tiny_checkpoint(ImageEncoder.tiny())
    state["visual.transformer.1.mlp.0.weight"] = torch.zeros(100, 32)
    with pytest.raises(CheckpointError, match=r"'visual\.transformer\.1\.mlp\.0\.weight' has shape \[100, 32\] "
                                              r"but the model expects \[128, 32\]"):
        ImageEncoder.from_state_dict(state, tiny=True)


def test_unknown_tensors_are_rejected_and_unused_ones_ignored():
    state = full_tiny_checkpoint(ImageEncoder.tiny())
    ImageEncoder.from_state_dict(state, tiny=True)
    state["visual.transformer.3.norm1.weight"] = torch.zeros(32)  # a 4th block: not ViT-H/14's layout
    with pytest.raises(CheckpointError, match=r"unexpected tensors: \['visual\.transformer\.3\.norm1\.weight'\]"):
        ImageEncoder.from_state_dict(state, tiny=True)


def test_any_input_size_and_bad_input():
    enc = ImageEncoder.tiny()
    assert (enc.num_tokens, enc.width) == (17, 32)
    assert enc.encode(images(1, 176, 320)).shape == (1, 17, 32)
    with pytest.raises(InputError, match=r"\[B, 3, H, W\]"):
        enc.encode(torch.zeros(1, 1, 3, 56, 56))
