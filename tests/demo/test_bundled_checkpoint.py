"""The bundled default policy (sim/assets/tiny_reach): small, self-contained, loads with the runtime's loaders, fits
franka_droid, samples in one Flash step, and its reproduction recipe is shipped with it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "sim" / "assets" / "tiny_reach"
MAX_BYTES = 25 * 1024 * 1024


def test_bundle_is_small_and_complete():
    files = [p for p in BUNDLE.rglob("*") if p.is_file()]
    names = {p.relative_to(BUNDLE).as_posix() for p in files}
    for required in ("config.json", "model.safetensors", "experiment_cfg/metadata.json", "REPRODUCE.md",
                     "encoders/vae.safetensors", "encoders/text_encoder.safetensors",
                     "encoders/image_encoder.safetensors"):
        assert required in names, f"{required} missing from {BUNDLE}"
    assert "training_state.pt" not in names  # optimizer state is not shipped
    total = sum(p.stat().st_size for p in files)
    assert total <= MAX_BYTES, f"bundle is {total / 2**20:.1f} MiB > 25 MiB"
    recipe = (BUNDLE / "REPRODUCE.md").read_text()
    for command in ("sim.record", "--episodes 1200", "--expert-miss", "tiny_reach_window1.yaml",
                    "model_core.training.average", "sim.policy"):
        assert command in recipe


def test_metadata_has_franka_droid_statistics():
    from dreamzero_policy.embodiment import load_embodiment

    emb = load_embodiment("franka_droid")
    metadata = json.loads((BUNDLE / "experiment_cfg" / "metadata.json").read_text())
    stats = metadata[emb.metadata_key]["statistics"]
    for kind, segments in (("state", emb.state), ("action", emb.action)):
        for seg in segments:
            entry = stats[kind][seg.key]
            for name in ("q01", "q99", "mean", "std", "min", "max"):
                values = np.asarray(entry[name], dtype=np.float64)
                assert values.shape == (seg.size,) and np.isfinite(values).all(), (kind, seg.key, name)
            assert (np.asarray(entry["q99"]) >= np.asarray(entry["q01"])).all()


def test_bundle_loads_with_build_engine_and_the_node_loader():
    import torch

    from dreamzero_policy.chunk import decode_chunk
    from dreamzero_policy.embodiment import load_embodiment
    from dreamzero_policy.observation import JointObservation
    from dreamzero_policy.params import to_config, validate
    from dreamzero_policy.session import load_model
    from dreamzero_policy.transforms import observation_vector
    from model_core.factory import build_engine

    torch.set_num_threads(1)
    engine, ckpt = build_engine(BUNDLE, device="cpu")
    assert engine.config.flash and engine.config.cfg_scale == 1.0
    assert engine.config.cached_state_attention == "training" and engine.action_horizon == 24
    assert ckpt.metadata and "oxe_droid" in ckpt.metadata

    emb = load_embodiment("franka_droid")
    model = load_model(to_config(validate({"checkpoint": str(BUNDLE), "device": "cpu"})), emb)
    home = JointObservation(1, emb.home, None, emb.gripper_open)
    state = model.normalizer.state.normalize(observation_vector(emb.state, home, emb)).astype(np.float32)
    frame = model.video({c.name: np.full((90, 160, 3), 128, np.uint8) for c in emb.cameras})[None]
    out = model.engine.step(frame, state, emb.prompt.format("reach the red cube"), emb.prompt.negative)
    chunk = decode_chunk(out.actions, home, model.normalizer, emb)
    assert chunk.positions.shape == (24, 7) and np.isfinite(chunk.positions).all()
    assert np.abs(chunk.positions - emb.home).max() < 1.5  # a reach, not a wild swing


def test_the_recipe_starts_from_the_shipped_encoders_and_trains_the_runtime_window():
    """The recipe trains on the bundle's encoders, in the one-block window the shipped checkpoint runs with."""
    from model_core.checkpoint import load_model
    from model_core.training.config import load_config

    recipe = load_config(REPO / "config" / "train" / "tiny_reach_window1.yaml")
    for spec in recipe.model.encoder_overrides["encoders"].values():
        assert Path(spec["path"]).parent == BUNDLE / "encoders" and Path(spec["path"]).is_file()
    assert Path(recipe.embodiment) == BUNDLE / "embodiment.yaml"
    model, _ = load_model(BUNDLE)
    assert recipe.dataset.num_chunks == recipe.model.max_chunk_size == model.cfg.max_chunk_size == 1
