"""Fitting the tiny VAE: reconstruction improves, the files load as the tiny encoders, and a training config that names
them (model.encoders: checkpoint, paths relative to the YAML) trains with them and bundles them."""
import numpy as np
import pytest
import torch
import yaml

from model_core.training.config import load_config, parse_config
from model_core.training.fit_vae import autoencoder_loss, detail, fit, median_frame, model_frames, sample_clips
from model_core.training.train import Trainer
from model_core.vae import WanVAE
from tests.training.lerobot_fixtures import make_episode, train_config, write_v21


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_v21(tmp_path_factory.mktemp("ds"), [make_episode(i, n) for i, n in enumerate((60, 66, 60))])


@pytest.fixture(scope="module")
def fitted(dataset, tmp_path_factory):
    torch.manual_seed(0)
    cfg = parse_config(train_config(dataset, tmp_path_factory.mktemp("unused"), dataset={"val_episodes": [2]}))
    out = tmp_path_factory.mktemp("encoders")
    frames, _ = model_frames(cfg, episodes=2, temporal_stride=4)
    clips = sample_clips(frames, 4, np.random.default_rng(1))
    with torch.no_grad():
        before = autoencoder_loss(WanVAE.tiny("wan21", seed=0), clips, 0.0)[1]
    result = fit(cfg, out, episodes=2, steps=12, batch=2, lr=3e-3, stats_weight=0.1, seed=0, detail_weight=10.0)
    return out, clips, before, result


def test_fitting_lowers_the_reconstruction_error(fitted):
    out, clips, before, result = fitted
    vae = WanVAE.from_pretrained(out / "encoders" / "vae.safetensors", "wan21", tiny=True)
    with torch.no_grad():
        after = autoencoder_loss(vae, clips, 0.0)[1]
    assert after < 0.8 * before
    assert np.isfinite(result["val_l1"]) and (out / "fit_vae.json").is_file()
    latents = vae.encode(clips)
    assert latents.shape == (4, 16, 2, 8, 16)  # 1 + 4 frames -> 2 latent frames of 64x128 / 8


def test_detail_is_high_on_a_small_object_and_zero_on_flat_ground():
    video = torch.full((1, 3, 1, 16, 16), 0.2)
    video[:, 0, :, 7:9, 7:9] = 1.0  # a 2x2 red blob
    d = detail(video)[0, 0, 0]
    assert d.shape == (16, 16) and d[0, 0] < 1e-6 and d[8, 8] > 0.1


def test_the_foreground_weight_counts_what_differs_from_the_median_frame():
    still = np.zeros((10, 8, 8, 3), np.uint8)
    episodes = [still.copy() for _ in range(3)]
    episodes[0][4, 2:4, 2:4] = 255  # one frame of one episode has an object
    background = median_frame(episodes, samples=50)
    assert background.shape == (3, 8, 8) and torch.all(background == -1.0)
    vae = WanVAE.tiny("wan21", seed=0)
    video = torch.full((1, 3, 5, 64, 128), -1.0)
    video[:, :, :, 10:14, 20:24] = 1.0
    with torch.no_grad():
        plain = autoencoder_loss(vae, video, 0.0)[0]
        weighted = autoencoder_loss(vae, video, 0.0, foreground_weight=50.0,
                                    background=torch.full((3, 64, 128), -1.0))[0]
        ignored = autoencoder_loss(vae, video, 0.0, foreground_weight=50.0)[0]  # no background: no weight
        empty = torch.full_like(video, -1.0)  # nothing differs from the background: no weight
        same = autoencoder_loss(vae, empty, 0.0, foreground_weight=50.0, background=torch.full((3, 64, 128), -1.0))[0]
    assert weighted > plain and torch.equal(ignored, plain)
    assert torch.equal(same, autoencoder_loss(vae, empty, 0.0)[0])


def test_fitting_continues_from_an_init_file(fitted, dataset, tmp_path):
    out, clips, _, _ = fitted
    cfg = parse_config(train_config(dataset, tmp_path / "unused"))
    result = fit(cfg, tmp_path / "more", episodes=2, steps=1, batch=1, lr=1e-9, stats_weight=0.1, seed=0,
                 init=out / "encoders" / "vae.safetensors")
    first = WanVAE.from_pretrained(out / "encoders" / "vae.safetensors", "wan21", tiny=True)
    again = WanVAE.from_pretrained(tmp_path / "more" / "encoders" / "vae.safetensors", "wan21", tiny=True)
    assert result["init"].endswith("vae.safetensors")
    assert torch.allclose(again.model.encoder.conv_in.weight, first.model.encoder.conv_in.weight, atol=1e-6)


def test_a_training_config_uses_and_bundles_the_fitted_encoders(fitted, dataset, tmp_path):
    out, _, _, _ = fitted
    (tmp_path / "enc").symlink_to(out / "encoders")
    data = train_config(dataset, tmp_path / "run", dataset={"cache_dir": str(tmp_path / "cache")},
                        schedule={"max_steps": 1})
    data["run"]["output_dir"] = "run"  # relative: resolves against the YAML's folder, as the encoder files do
    data["model"].update(encoders="checkpoint", encoder_overrides={"encoders": {
        "vae": {"variant": "wan21", "tiny": True, "path": "enc/vae.safetensors"},
        "text_encoder": {"tiny": True, "path": "enc/text_encoder.safetensors"},
        "image_encoder": {"tiny": True, "path": "enc/image_encoder.safetensors"}}})
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(data))
    trainer = Trainer(load_config(tmp_path / "train.yaml"))
    try:
        fitted_vae = WanVAE.from_pretrained(out / "encoders" / "vae.safetensors", "wan21", tiny=True)
        for name, value in fitted_vae.model.state_dict().items():
            assert torch.equal(trainer.encoders.vae.model.state_dict()[name], value), name
        checkpoint = trainer.train().checkpoint
    finally:
        trainer.close()
    assert checkpoint.is_relative_to(tmp_path / "run")
    bundled = WanVAE.from_pretrained(checkpoint / "encoders" / "vae.safetensors", "wan21", tiny=True)
    assert torch.equal(bundled.model.encoder.conv_in.weight, fitted_vae.model.encoder.conv_in.weight)


def test_root_takes_the_frames_from_another_dataset(dataset, tmp_path, capsys):
    from model_core.training.fit_vae import main

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(train_config(tmp_path / "not_recorded_yet", tmp_path / "run")))
    args = ["--config", str(config), "--out", str(tmp_path / "enc"), "--episodes", "2", "--steps", "1",
            "--batch", "1"]
    assert main(args) == 2  # the config's own dataset does not exist
    assert "not_recorded_yet" in capsys.readouterr().err
    assert main(args + ["--root", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(args + ["--root", str(dataset)]) == 0
    assert (tmp_path / "enc" / "encoders" / "vae.safetensors").is_file()


def test_crop_fits_on_windows_and_rejects_windows_the_vae_cannot_take(dataset, tmp_path):
    from model_core.training.errors import TrainConfigError
    from model_core.training.fit_vae import random_crop

    video, background = torch.rand(2, 3, 5, 64, 128), torch.rand(3, 64, 128)
    window, window_background = random_crop(video, background, (32, 64), np.random.default_rng(0))
    assert window.shape == (2, 3, 5, 32, 64) and window_background.shape == (3, 32, 64)
    top, left = [(i, j) for i in range(33) for j in range(65)
                 if torch.equal(background[:, i:i + 32, j:j + 64], window_background)][0]
    assert torch.equal(video[..., top:top + 32, left:left + 64], window)  # the same window of clips and background
    cfg = parse_config(train_config(dataset, tmp_path / "unused", dataset={"val_episodes": [2]}))
    result = fit(cfg, tmp_path / "enc", episodes=2, steps=2, batch=1, lr=1e-3, stats_weight=0.1, seed=0,
                 foreground_weight=5.0, crop=(32, 64))
    assert np.isfinite(result["val_l1"])  # validation still reconstructs whole frames
    for crop in ((30, 64), (72, 64), (0, 64)):
        with pytest.raises(TrainConfigError, match=r"--crop .*8x stride.*64x128"):
            fit(cfg, tmp_path / "bad", episodes=2, steps=1, batch=1, lr=1e-3, stats_weight=0.1, seed=0, crop=crop)
