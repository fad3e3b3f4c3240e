"""The shipped recipe end to end: sim reach demos (sim.record, LeRobot v2.1) -> config/train/tiny_reach.yaml ->
a checkpoint the runtime's own loader accepts and runs (no conversion)."""
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("pybullet")

from dreamzero_policy.chunk import decode_chunk  # noqa: E402
from dreamzero_policy.embodiment import load_embodiment  # noqa: E402
from dreamzero_policy.observation import JointObservation  # noqa: E402
from dreamzero_policy.params import PolicyConfig  # noqa: E402
from dreamzero_policy.session import load_model  # noqa: E402
from dreamzero_policy.transforms import observation_vector  # noqa: E402
from model_core.training.config import parse_config  # noqa: E402
from model_core.training.train import run  # noqa: E402
from sim.record import record  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_reach_recipe_on_sim_demos(tmp_path):
    record("reach", 1, tmp_path / "reach", "lerobot", seed=0, image_hw=(36, 64))
    data = yaml.safe_load((REPO / "config" / "train" / "tiny_reach.yaml").read_text())
    data["dataset"].update(root=str(tmp_path / "reach"), sample_stride=8, val_fraction=0.0)
    data["run"].update(output_dir=str(tmp_path / "run"), progress=False, device="cpu")
    data["schedule"].update(max_steps=2, log_every=1)
    data["optim"].update(warmup_steps=1, batch_size=2)
    result = run(parse_config(data, base_dir=REPO / "config" / "train"))
    assert result.step == 2 and [h["kind"] for h in result.history] == ["train", "train"]

    emb = load_embodiment("franka_droid")
    model = load_model(PolicyConfig(checkpoint=str(result.checkpoint), embodiment="franka_droid", device="cpu",
                                    backend="eager", middleware="dds"), emb)
    assert model.engine.config.cached_state_attention == "training" and model.engine.config.num_steps == 4
    home = JointObservation(1, emb.home, None, emb.gripper_open)
    state = model.normalizer.state.normalize(observation_vector(emb.state, home, emb)).astype(np.float32)
    frame = model.video({c.name: np.zeros((180, 320, 3), np.uint8) for c in emb.cameras})[None]
    out = model.engine.step(frame, state, emb.prompt.format("reach the red cube"), emb.prompt.negative)
    chunk = decode_chunk(out.actions, home, model.normalizer, emb)
    assert chunk.positions.shape == (24, 7) and np.isfinite(chunk.positions).all()
