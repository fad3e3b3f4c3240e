"""Scale-out: two CPU processes under torchrun (gloo). DDP replicas stay identical; FSDP matches DDP."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from model_core.checkpoint import load_model
from model_core.factory import save_bundle, tiny_components
from model_core.training.train import StepBatches
from tests.training.lerobot_fixtures import make_episode, train_config, write_v21

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_v21(tmp_path_factory.mktemp("ds"), [make_episode(i, n) for i, n in enumerate((60, 66, 60))])


def launch(dataset, tmp_path, strategy: str, **sections) -> Path:
    cfg = train_config(dataset, tmp_path / "run", distributed={"strategy": strategy, "backend": "gloo"},
                       dataset={"cache_dir": str(tmp_path.parent / "shared_cache"), "val_episodes": [2]},
                       schedule={"max_steps": 2, "log_every": 1, "save_every": 1000}, **sections)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "ranks"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(WORKER), str(path),
                           str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def ddp_run(dataset, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    return tmp, launch(dataset, tmp, "ddp")


def test_ddp_ranks_hold_identical_weights(ddp_run):
    tmp, out = ddp_run
    info = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["world"] for i in info] == [2, 2] and {i["strategy"] for i in info} == {"ddp"}
    assert info[0]["first_batch"] != info[1]["first_batch"]  # each rank trained on its own samples
    assert info[0]["changed"] > 0
    w0, w1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert set(w0) == set(w1) and all(torch.equal(w0[k], w1[k]) for k in w0)
    final = tmp / "run" / "final"  # rank 0 wrote the checkpoint; rank 0's metrics are the mean over ranks
    dit, _ = load_model(final)
    assert all(torch.equal(v, w0[k]) for k, v in dit.state_dict().items())
    logs = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in logs] == [("train", 1), ("train", 2), ("val", 2)]


def test_fsdp_matches_ddp(dataset, ddp_run, tmp_path):
    _, ddp_out = ddp_run
    out = launch(dataset, tmp_path, "fsdp")
    ddp, fsdp = load_file(str(ddp_out / "rank0.safetensors")), load_file(str(out / "rank0.safetensors"))
    assert set(ddp) == set(fsdp)
    for k in ddp:  # the same gradients, reduced in another order
        torch.testing.assert_close(fsdp[k], ddp[k], atol=1e-5, rtol=1e-4)
    dit, _ = load_model(tmp_path / "run" / "final")
    assert all(torch.equal(v, fsdp[k]) for k, v in dit.state_dict().items())


def test_fsdp_lora_from_a_checkpoint_read_by_rank_zero_only(dataset, tmp_path):
    """Rank 1 builds on the meta device and gets its shards from rank 0: the frozen base weights it saves must be
    the checkpoint's, bit for bit, and both ranks must end with the same full weights."""
    dit, vae, text, image = tiny_components(seed=3)
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    save_bundle(tmp_path / "base", dit, vae, text, image, (64, 128))
    out = launch(dataset, tmp_path, "fsdp", model={"preset": None, "init_from": str(tmp_path / "base"),
                                                   "encoders": "checkpoint"}, objective={"mode": "lora"})
    w0, w1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    base = dit.state_dict()
    for key, value in w0.items():
        if ".base_layer." in key:
            assert torch.equal(value, base[key.replace(".base_layer.", ".")]), key
        elif ".lora_" not in key and not key.startswith(("state_encoder", "action_encoder", "action_decoder")):
            assert torch.equal(value, base[key]), key
    assert json.loads((out / "rank1.json").read_text())["changed"] > 0


def test_ranks_deal_distinct_samples_within_an_epoch():
    batches = [StepBatches(10, 2, 1, r, 2, seed=0, start=0, stop=2) for r in (0, 1)]
    seen = [i for step in range(2) for b in batches for i in b.indices(step, 0)]
    assert len(seen) == 8 and len(set(seen)) == 8  # within one epoch no sample is dealt twice
    assert list(batches[0]) == [batches[0].indices(0, 0), batches[0].indices(1, 0)]


def test_a_bad_episode_on_one_rank_stops_every_rank(tmp_path):
    """Episode 1 (rank 1's share of the encoding) has a short video: both ranks exit with an error, none hangs."""
    root = write_v21(tmp_path / "ds", [make_episode(0, 60), make_episode(1, 60)], video_lengths={1: 55})
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(train_config(root, tmp_path / "run", distributed={"strategy": "ddp",
                                                                                     "backend": "gloo"})))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(free_port()), "-m", "model_core.training.train",
                           "--config", str(path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "episode 1, field 'observation.images.wrist_left': the video has 55 frames" in proc.stderr
    assert "1 other rank(s) failed while encoding the dataset" in proc.stderr
