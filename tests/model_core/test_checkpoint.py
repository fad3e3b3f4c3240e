"""Checkpoint layouts: single file, shards + index, action_head prefix, LoRA merge; errors name key and shapes."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from model_core.checkpoint import load_checkpoint, load_model, lora_key_names, save_checkpoint
from model_core.errors import CheckpointError
from model_core.dit import CausalWanModel

from tests.model_core.test_causality import CFG, make_model


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_golden_directory_loads_unchanged(golden_dir):
    model, ckpt = load_model(golden_dir)
    stored = load_file(str(golden_dir / "model.safetensors"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stored.items())
    assert ckpt.config.dim == 64 and ckpt.config.model_type == "ti2v"


@pytest.mark.parametrize("shard", [None, 20_000])
def test_save_then_load_is_bit_exact(tmp_path, shard):
    model = make_model()
    meta = {"droid": {"statistics": {"action": {"joint_position": {"q01": [0.0], "q99": [1.0]}}}}}
    save_checkpoint(model, tmp_path, metadata=meta, max_shard_bytes=shard)
    if shard:
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 1
        assert all(k.startswith("action_head.model.") for k in index["weight_map"])
    loaded, ckpt = load_model(tmp_path)
    assert _same_weights(model, loaded)
    assert ckpt.metadata == meta


def test_lora_keys_are_merged(tmp_path):
    model = make_model()
    tensors = {"action_head.model.base_model.model." + k: v for k, v in model.state_dict().items()}
    name = "blocks.0.self_attn.q"
    base, a_key, b_key = lora_key_names(name)
    weight = tensors.pop("action_head.model.base_model.model." + name + ".weight")
    A, B = torch.randn(4, CFG.dim), torch.randn(CFG.dim, 4)
    tensors.update({base: weight, a_key: A, b_key: B})
    tensors["action_head.model.base_model.model." + name + ".base_layer.bias"] = \
        tensors.pop("action_head.model.base_model.model." + name + ".bias")
    tensors["vae.decoder.conv_in.weight"] = torch.zeros(1)  # other components beside the DiT are ignored
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"action_head_cfg": {"diffusion_model_cfg": CFG.to_dict()}}))
    ckpt = load_checkpoint(tmp_path)
    assert torch.allclose(ckpt.state_dict[name + ".weight"], weight + B @ A)


def test_wrong_shapes_name_the_key_and_both_shapes(tmp_path):
    save_checkpoint(make_model(), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["ffn_dim"] = 96
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path)
    assert "blocks.0.ffn.0.weight: model expects [96, 32], checkpoint has [64, 32]" in str(err.value)


def test_missing_and_unexpected_tensors_are_listed(tmp_path):
    tensors = dict(make_model().state_dict())
    tensors.pop("head.head.bias")
    tensors["blocks.0.extra"] = torch.zeros(3)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(CFG.to_dict()))
    with pytest.raises(CheckpointError, match=r"missing head\.head\.bias \[16\][\s\S]*unexpected blocks\.0\.extra"):
        load_checkpoint(tmp_path)


def test_corrupt_and_absent_files_are_clear(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CFG.to_dict()))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")


def test_meta_build_has_no_storage():
    with torch.device("meta"):
        model = CausalWanModel(CFG)
    assert all(p.is_meta for p in model.parameters())
