"""The training config: every field validated, errors name the field; paths; the LR schedule; shipped configs."""
from pathlib import Path

import pytest
import yaml

from model_core.training.config import TrainConfig, load_config, lr_factor, parse_config
from model_core.training.errors import TrainConfigError
from tests.training.lerobot_fixtures import train_config

REPO = Path(__file__).resolve().parents[2]


def base() -> dict:
    return train_config(Path("/data/ds"), Path("/tmp/out"))


def test_the_fixture_config_is_valid():
    cfg = parse_config(base())
    assert isinstance(cfg, TrainConfig)
    assert cfg.objective.lora.targets == ("q", "k", "v", "o", "ffn.0", "ffn.2") and cfg.objective.lora.rank == 4
    assert cfg.cache_dir == Path("/tmp/out/cache")


@pytest.mark.parametrize("section, update, message", [
    ("optim", {"lr": -1}, r"optim\.lr: Input should be greater than 0, got -1"),
    ("optim", {"betas": [0.9, 1.5]}, r"optim\.betas: betas must be in \[0, 1\)"),
    ("optim", {"grad_clip": 0}, r"optim\.grad_clip: grad_clip must be > 0 or null"),
    ("optim", {"batch_sise": 2}, r"optim\.batch_sise: unknown field"),
    ("objective", {"mode": "qlora"}, r"objective\.mode: Input should be 'lora' or 'full', got 'qlora'"),
    ("objective", {"flash_beta": [7, 0]}, r"objective\.flash_beta: Beta parameters must be > 0"),
    ("objective", {"video_loss_weight": 0, "action_loss_weight": 0}, r"objective: .*both 0"),
    ("dataset", {"num_chunks": 0}, r"dataset\.num_chunks: Input should be greater than or equal to 1, got 0"),
    ("dataset", {"val_episodes": [1], "val_fraction": 0.2}, r"dataset: give val_episodes or val_fraction"),
    ("dataset", {"camera_features": {"wrist": " "}}, r"dataset\.camera_features: .*empty"),
    ("run", {"precision": "fp16"}, r"run\.precision: Input should be 'fp32' or 'bf16', got 'fp16'"),
    ("distributed", {"strategy": "deepspeed"}, r"distributed\.strategy: Input should be"),
    ("schedule", {"max_steps": 0}, r"schedule\.max_steps: Input should be greater than or equal to 1"),
])
def test_bad_values_name_the_field(section, update, message):
    with pytest.raises(TrainConfigError, match=message):
        parse_config(train_config(Path("/d"), Path("/o"), **{section: update}))


def test_missing_and_unknown_sections():
    data = base()
    del data["dataset"]
    with pytest.raises(TrainConfigError, match=r"dataset: required field"):
        parse_config(data)
    with pytest.raises(TrainConfigError, match=r"trainer: unknown field"):
        parse_config({**base(), "trainer": {}})
    with pytest.raises(TrainConfigError, match=r"warmup_steps \(10\) must be < schedule.max_steps \(4\)"):
        parse_config(train_config(Path("/d"), Path("/o"), optim={"warmup_steps": 10}))


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    data = base()
    data["run"]["output_dir"] = "runs/a"
    data["dataset"]["root"] = "../data/reach"
    data["embodiment"] = "franka_droid"  # a name stays a name
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "x.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    assert cfg.run.output_dir == str(tmp_path / "cfg" / "runs" / "a")
    assert cfg.dataset.root == str(tmp_path / "data" / "reach")
    assert cfg.embodiment == "franka_droid"


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(TrainConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("run: [unclosed")
    with pytest.raises(TrainConfigError, match="invalid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_lr_warmup_then_cosine():
    f = [lr_factor(s, 10, 110, 0.1) for s in range(110)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[60] == pytest.approx(0.55) and f[-1] > 0.1
    assert lr_factor(110, 10, 110, 0.1) == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "config" / "train").glob("*.yaml")))
def test_shipped_configs_validate(name):
    cfg = load_config(REPO / "config" / "train" / name)
    assert cfg.schedule.max_steps >= 1
