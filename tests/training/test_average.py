"""Checkpoint averaging: the mean of the weights, the last source's side files, one error per incompatible source."""
import json
from dataclasses import replace

import pytest
import torch

from model_core.checkpoint import load_checkpoint, load_model, save_checkpoint
from model_core.errors import CheckpointError
from model_core.training.average import average_checkpoints, main

from tests.model_core.test_causality import CFG, make_model

META = {"droid": {"statistics": {"action": {"joint_position": {"q01": [0.0], "q99": [1.0]}}}}}


def _checkpoint(directory, seed, metadata=META, cfg=CFG):
    model = make_model(cfg, seed)
    save_checkpoint(model, directory, metadata=metadata)
    (directory / "training_state.pt").write_bytes(b"optimizer")
    (directory / "encoders").mkdir()
    (directory / "encoders" / "vae.safetensors").write_bytes(b"side file")
    return model.state_dict()


def test_average_is_the_mean_and_loads_in_the_runtime(tmp_path):
    weights = [_checkpoint(tmp_path / f"step_{i}", seed=i) for i in range(3)]
    out = average_checkpoints([tmp_path / f"step_{i}" for i in range(3)], tmp_path / "avg", max_shard_bytes=20_000,
                              progress=False)
    model, ckpt = load_model(out)
    for key, value in model.state_dict().items():
        expected = sum(w[key] for w in weights) / 3
        assert torch.allclose(value, expected, atol=1e-6), key
    assert ckpt.metadata == META
    assert (out / "encoders" / "vae.safetensors").read_bytes() == b"side file"
    assert not (out / "training_state.pt").exists()  # the optimizer state belongs to no averaged weights
    assert json.loads((out / "config.json").read_text())["dreamzero_training"]["averaged_from"][-1].endswith("step_2")


def test_sources_of_different_datasets_are_refused(tmp_path):
    _checkpoint(tmp_path / "a", seed=0)
    _checkpoint(tmp_path / "b", seed=1, metadata={"droid": {"statistics": {}}})
    with pytest.raises(CheckpointError, match="metadata.json"):
        average_checkpoints([tmp_path / "a", tmp_path / "b"], tmp_path / "avg", progress=False)
    assert not (tmp_path / "avg").exists()


def test_sources_of_different_architectures_are_refused(tmp_path):
    _checkpoint(tmp_path / "a", seed=0)
    _checkpoint(tmp_path / "b", seed=1, cfg=replace(CFG, ffn_dim=96))
    with pytest.raises(CheckpointError, match="ffn_dim: 64 vs 96"):
        average_checkpoints([tmp_path / "a", tmp_path / "b"], tmp_path / "avg", progress=False)


def test_cli_refuses_to_overwrite_and_one_source(tmp_path, capsys):
    _checkpoint(tmp_path / "a", seed=0)
    _checkpoint(tmp_path / "b", seed=1)
    assert main([str(tmp_path / "a"), "--out", str(tmp_path / "avg")]) == 2
    assert "at least two" in capsys.readouterr().err
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "b")]) == 2
    assert "is one of the sources" in capsys.readouterr().err
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "avg")]) == 0
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "avg")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "avg").config == CFG
