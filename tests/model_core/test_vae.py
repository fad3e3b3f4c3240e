"""Wan VAEs (model_core/vae.py): original checkpoint layout, loading, shapes, streaming encode."""
import pytest
import safetensors.torch
import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

from model_core.errors import CheckpointError, ConfigError, InputError
from model_core.vae import VARIANTS, WanVAE, wan_key_map

VARIANT_NAMES = ["wan21", "wan22"]


# --- the original key layout, written out from Wan's module structure -----------------------------------------
# Wan2.1 `wan/modules/vae.py` and Wan2.2 `wan/modules/vae2_2.py`: ResidualBlock = residual Sequential(RMS_norm [0],
# SiLU, CausalConv3d [2], RMS_norm [3], SiLU, Dropout, CausalConv3d [6]) + `shortcut` 1x1x1 conv when widths differ;
# Resample = `resample` Sequential(pad or upsample, Conv2d [1]) + `time_conv` for the 3d modes; middle =
# (ResidualBlock, AttentionBlock(norm, to_qkv, proj), ResidualBlock); head = (RMS_norm [0], SiLU, CausalConv3d [2]).

def _conv(key, out, inp, k, bias=True):
    return {f"{key}.weight": (out, inp, *k), **({f"{key}.bias": (out,)} if bias else {})}


def _resblock(key, inp, out):
    d = {f"{key}.residual.0.gamma": (inp, 1, 1, 1), **_conv(f"{key}.residual.2", out, inp, (3, 3, 3)),
         f"{key}.residual.3.gamma": (out, 1, 1, 1), **_conv(f"{key}.residual.6", out, out, (3, 3, 3))}
    return d | (_conv(f"{key}.shortcut", out, inp, (1, 1, 1)) if inp != out else {})


def _middle_head(side, c, c_head, out_channels):
    return {**_resblock(f"{side}.middle.0", c, c), f"{side}.middle.1.norm.gamma": (c, 1, 1),
            **_conv(f"{side}.middle.1.to_qkv", 3 * c, c, (1, 1)), **_conv(f"{side}.middle.1.proj", c, c, (1, 1)),
            **_resblock(f"{side}.middle.2", c, c), f"{side}.head.0.gamma": (c_head, 1, 1, 1),
            **_conv(f"{side}.head.2", out_channels, c_head, (3, 3, 3))}


def wan21_layout(dim, z, r=2):
    down, up = [False, True, True], [True, True, False]
    enc = [dim * u for u in (1, 1, 2, 4, 4)]
    d = {**_conv("encoder.conv1", dim, 3, (3, 3, 3)), **_middle_head("encoder", enc[-1], enc[-1], 2 * z)}
    k = 0
    for i in range(4):
        c_in, c_out = enc[i], enc[i + 1]
        for _ in range(r):
            d |= _resblock(f"encoder.downsamples.{k}", c_in, c_out)
            k, c_in = k + 1, c_out
        if i < 3:
            d |= _conv(f"encoder.downsamples.{k}.resample.1", c_out, c_out, (3, 3))
            d |= _conv(f"encoder.downsamples.{k}.time_conv", c_out, c_out, (3, 1, 1)) if down[i] else {}
            k += 1
    dec = [dim * u for u in (4, 4, 4, 2, 1)]
    d |= {**_conv("decoder.conv1", dec[0], z, (3, 3, 3)), **_middle_head("decoder", dec[0], dec[-1], 3)}
    k = 0
    for i in range(4):
        c_in, c_out = dec[i] // (2 if i > 0 else 1), dec[i + 1]  # Wan2.1 upsamples halve the width
        for _ in range(r + 1):
            d |= _resblock(f"decoder.upsamples.{k}", c_in, c_out)
            k, c_in = k + 1, c_out
        if i < 3:
            d |= _conv(f"decoder.upsamples.{k}.resample.1", c_out // 2, c_out, (3, 3))
            d |= _conv(f"decoder.upsamples.{k}.time_conv", 2 * c_out, c_out, (3, 1, 1)) if up[i] else {}
            k += 1
    return d | _conv("conv1", 2 * z, 2 * z, (1, 1, 1)) | _conv("conv2", z, z, (1, 1, 1))


def wan22_layout(dim, dec_dim, z, r=2):
    down, up = [False, True, True], [True, True, False]
    enc = [dim * u for u in (1, 1, 2, 4, 4)]
    d = {**_conv("encoder.conv1", dim, 12, (3, 3, 3)), **_middle_head("encoder", enc[-1], enc[-1], 2 * z)}
    for i in range(4):
        c_in, c_out = enc[i], enc[i + 1]
        for j in range(r):
            d |= _resblock(f"encoder.downsamples.{i}.downsamples.{j}", c_in, c_out)
            c_in = c_out
        if i < 3:
            d |= _conv(f"encoder.downsamples.{i}.downsamples.{r}.resample.1", c_out, c_out, (3, 3))
            if down[i]:
                d |= _conv(f"encoder.downsamples.{i}.downsamples.{r}.time_conv", c_out, c_out, (3, 1, 1))
    dec = [dec_dim * u for u in (4, 4, 4, 2, 1)]
    d |= {**_conv("decoder.conv1", dec[0], z, (3, 3, 3)), **_middle_head("decoder", dec[0], dec[-1], 12)}
    for i in range(4):
        c_in, c_out = dec[i], dec[i + 1]
        for j in range(r + 1):
            d |= _resblock(f"decoder.upsamples.{i}.upsamples.{j}", c_in, c_out)
            c_in = c_out
        if i < 3:
            d |= _conv(f"decoder.upsamples.{i}.upsamples.{r + 1}.resample.1", c_out, c_out, (3, 3))
            if up[i]:
                d |= _conv(f"decoder.upsamples.{i}.upsamples.{r + 1}.time_conv", 2 * c_out, c_out, (3, 1, 1))
    return d | _conv("conv1", 2 * z, 2 * z, (1, 1, 1)) | _conv("conv2", z, z, (1, 1, 1))


TINY_LAYOUT = {"wan21": lambda: wan21_layout(8, 16), "wan22": lambda: wan22_layout(8, 12, 48)}
REAL_LAYOUT = {"wan21": lambda: wan21_layout(96, 16), "wan22": lambda: wan22_layout(160, 256, 48)}


@pytest.fixture(scope="module", params=VARIANT_NAMES)
def tiny(request):
    return WanVAE.tiny(request.param)


def video(t, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, t, size, size, generator=g) * 2 - 1


def shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


# --- layout and loading -----------------------------------------------------------------------------------------

def test_tiny_original_state_dict_has_the_wan_layout(tiny):
    assert shapes(tiny.original_state_dict()) == TINY_LAYOUT[tiny.variant]()


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_real_config_maps_onto_the_real_wan_layout(variant):
    with torch.device("meta"):
        model = AutoencoderKLWan(**VARIANTS[variant])
    state = model.state_dict()
    assert {wan: tuple(state[k].shape) for k, wan in wan_key_map(model).items()} == REAL_LAYOUT[variant]()
    if variant == "wan21":  # the Wan paper's 127M-parameter Wan-VAE
        assert round(sum(v.numel() for v in state.values()) / 1e6) == 127


def test_wan21_converter_agrees_with_diffusers_single_file_converter():
    vae = WanVAE.tiny("wan21")
    original = vae.original_state_dict()
    theirs = convert_wan_vae_to_diffusers(original)
    names = wan_key_map(vae.model)
    assert set(theirs) == set(names)
    assert all(theirs[k] is original[names[k]] for k in names)


@pytest.mark.parametrize("variant,fmt", [("wan21", "zip"), ("wan21", "legacy"), ("wan22", "safetensors")])
def test_checkpoint_in_original_layout_reloads_identically(variant, fmt, tmp_path):
    vae = WanVAE.tiny(variant)
    path = tmp_path / ("vae.safetensors" if fmt == "safetensors" else "vae.pth")
    state = {k: v.contiguous() for k, v in vae.original_state_dict().items()}
    if fmt == "safetensors":
        safetensors.torch.save_file(state, path)
    else:  # torch's zip format, or the pre-1.6 pickle format (read without mmap)
        torch.save(state, path, _use_new_zipfile_serialization=fmt == "zip")
    loaded = WanVAE.from_pretrained(path, variant=variant, tiny=True)
    x = video(5)
    z = vae.encode(x)
    assert torch.equal(loaded.encode(x), z)
    assert torch.equal(loaded.decode(z), vae.decode(z))


def test_wrong_shape_checkpoint_names_the_key_and_both_shapes(tmp_path):
    state = WanVAE.tiny("wan21").original_state_dict()
    state["decoder.head.2.weight"] = torch.zeros(3, 9, 3, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"'decoder\.head\.2\.weight' has shape \[3, 9, 3, 3, 3\] "
                                              r"but the model expects \[3, 8, 3, 3, 3\]"):
        WanVAE.from_pretrained(tmp_path / "bad.pth", variant="wan21", tiny=True)


def test_missing_tensor_unknown_variant_and_missing_file_are_clear_errors(tmp_path):
    state = WanVAE.tiny("wan21").original_state_dict()
    del state["conv2.bias"]
    with pytest.raises(CheckpointError, match=r"lacks tensors: \['conv2\.bias'\]"):
        WanVAE.from_state_dict(state, "wan21", tiny=True)
    with pytest.raises(ConfigError, match="wan21"):
        WanVAE.tiny("wan3")
    with pytest.raises(CheckpointError, match="does not exist"):
        WanVAE.from_pretrained(tmp_path / "nope.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        WanVAE.from_pretrained(tmp_path / "garbage.pth")


# --- shapes -----------------------------------------------------------------------------------------------------

def test_strides_and_latent_shapes(tiny):
    s = {"wan21": 8, "wan22": 16}[tiny.variant]
    assert (tiny.spatial_stride, tiny.temporal_stride, tiny.z_dim) == (s, 4, {"wan21": 16, "wan22": 48}[tiny.variant])
    for k in (0, 1, 2):
        z = tiny.encode(video(1 + 4 * k, size=32))
        assert z.shape == (1, tiny.z_dim, 1 + k, 32 // s, 32 // s) and z.dtype == torch.float32
    assert tiny.decode(z).shape == (1, 3, 9, 32, 32)
    assert tiny.encode_block(video(8)).shape == (1, tiny.z_dim, 2, 32 // s, 32 // s)


def test_bad_video_shapes_are_rejected(tiny):
    with pytest.raises(InputError, match="T = 4"):
        tiny.encode(video(4))
    with pytest.raises(InputError, match="divisible by the spatial stride"):
        tiny.encode(torch.zeros(1, 3, 1, 20, 40))


# --- streaming --------------------------------------------------------------------------------------------------

def test_encode_matches_diffusers_encode(tiny):
    x = video(9)
    mu = tiny.model.encode(x).latent_dist.mean
    mean, std = (torch.tensor(VARIANTS[tiny.variant][k]).view(1, -1, 1, 1, 1) for k in ("latents_mean", "latents_std"))
    expected = (mu - mean) / std
    torch.testing.assert_close(tiny.encode(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("splits", [[1, 4, 4], [5, 8], [1, 12]])
def test_incremental_encoding_equals_whole_video_encoding(tiny, splits):
    x = video(sum(splits), seed=1)
    tiny.reset_stream()
    pieces, start = [], 0
    for n in splits:
        pieces.append(tiny.encode_incremental(x[:, :, start:start + n]))
        start += n
    assert [p.shape[2] for p in pieces] == [(n + 3) // 4 for n in splits]
    assert torch.equal(torch.cat(pieces, dim=2), tiny.encode(x))


def test_stream_rejects_bad_continuations(tiny):
    tiny.reset_stream()
    tiny.encode_incremental(video(1))
    with pytest.raises(InputError, match="positive multiple of 4"):
        tiny.encode_incremental(video(5))
    with pytest.raises(InputError, match="reset_stream"):
        tiny.encode_incremental(video(4, size=64))
    tiny.reset_stream()
    assert tiny.encode_incremental(video(1, size=64)).shape[2] == 1
