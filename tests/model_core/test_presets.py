"""The big presets have exactly the real checkpoints' parameter counts, key names and shapes (built on meta)."""
import re

import pytest
import torch

from model_core.config import preset
from model_core.dit import CausalWanModel
from model_core.errors import ConfigError


def _reference_keys(path):
    keys = {}
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            continue
        name, shape = line.split("\t")
        keys[name] = [int(v) for v in shape.strip("[]").split(",")]
    return keys


@pytest.mark.parametrize("name, keys_file, params, tensors", [
    ("wan22_5b", "keys_5B.txt", 5_606_692_832, 997),
    ("wan21_14b", "keys_14B.txt", 16_484_292_448, 1317),
])
def test_big_presets_match_real_checkpoints(fixtures_dir, name, keys_file, params, tensors):
    cfg = preset(name)
    with torch.device("meta"):
        model = CausalWanModel(cfg)
    assert sum(p.numel() for p in model.parameters()) == params
    sd = model.state_dict()
    assert len(sd) == tensors
    reference = _reference_keys(fixtures_dir / keys_file)
    ours = {k: list(v.shape) for k, v in sd.items() if not re.match(r"blocks\.([1-9]|\d\d+)\.", k)}
    assert ours == reference
    for i in range(cfg.num_layers):  # "blocks.1..N repeat blocks.0.*"
        assert list(sd[f"blocks.{i}.self_attn.q.weight"].shape) == [cfg.dim, cfg.dim]


def test_window_and_tokens_of_the_release():
    cfg = preset("wan21_14b")
    assert cfg.local_attn_size == 9 and cfg.window_tokens == 9 * 880 and cfg.head_dim == 128


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ConfigError, match="valid presets"):
        preset("wan3_1t")
