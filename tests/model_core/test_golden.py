"""The implementation reproduces data made with the official DreamZero code (MODEL_SPEC.md section 10)."""
import subprocess
import sys

import numpy as np
import torch

from model_core.schedulers import release_sigmas, training_schedule


def test_verify_cli_passes_on_golden(golden_dir):
    proc = subprocess.run([sys.executable, "-m", "model_core.verify", str(golden_dir)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("PASS", "FAIL"))]
    assert len(lines) >= 30 and all(ln.startswith("PASS") for ln in lines)
    assert "cache contents layerL" in proc.stdout and "inf3: action velocity" in proc.stdout


def test_verify_cli_fails_on_tampered_weights(golden_dir, tmp_path):
    from safetensors.torch import load_file, save_file
    for name in ("config.json", "io.npz", "scheduler.npz"):
        (tmp_path / name).write_bytes((golden_dir / name).read_bytes())
    weights = load_file(str(golden_dir / "model.safetensors"))
    weights["blocks.1.ffn.2.bias"] = weights["blocks.1.ffn.2.bias"] + 1e-2
    save_file(weights, str(tmp_path / "model.safetensors"))
    proc = subprocess.run([sys.executable, "-m", "model_core.verify", str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1
    assert "FAIL  train: video velocity" in proc.stdout


def test_scheduler_tables_are_bit_exact(golden_dir):
    s = np.load(golden_dir / "scheduler.npz")
    sigmas, timesteps = release_sigmas(16, 5.0)
    assert np.array_equal(sigmas.numpy(), s["unipc_sigmas"])
    assert np.array_equal(timesteps.numpy(), s["unipc_timesteps"])
    assert timesteps.tolist() == [999, 986, 972, 955, 937, 916, 892, 865, 833, 795, 749, 694, 624, 535, 416, 249]
    train = training_schedule()
    assert np.array_equal(train["sigmas"].numpy(), s["fm_train_sigmas"])
    assert np.array_equal(train["timesteps"].numpy(), s["fm_train_timesteps"])
    assert torch.allclose(train["weights"].mean(), torch.tensor(1.0))
