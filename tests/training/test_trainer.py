"""The trainer end to end on a tiny dataset: the loss falls, checkpoints reload bit-exactly and run in the engine,
cached inference equals the training forward, resume is exact, LoRA / Flash checkpoints, bad input fails early."""
import json

import numpy as np
import pytest
import torch
import yaml

from model_core.checkpoint import load_model, read_tensors
from model_core.dit import Registers
from model_core.factory import build_engine
from model_core.kv_cache import KVCache
from model_core.training.config import parse_config
from model_core.training.errors import DatasetError, TrainConfigError
from model_core.training.lora import merged_state_dict
from model_core.training.objective import step_seed
from model_core.training.train import RELEASE_LORA_PREFIX, Trainer, main
from tests.training.lerobot_fixtures import make_episode, train_config, write_v21

PROBE_SEEDS = range(6)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_v21(tmp_path_factory.mktemp("ds"), [make_episode(i, n) for i, n in enumerate((60, 66, 60))])


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def config(root, out, cache_dir, **sections):
    sections["dataset"] = {"cache_dir": str(cache_dir), **sections.get("dataset", {})}
    return parse_config(train_config(root, out, **sections))


@torch.no_grad()
def probe_loss(trainer: Trainer) -> float:
    """The objective on every training sample at fixed noise: comparable before and after training."""
    batch = torch.utils.data.default_collate([trainer.train_set[i] for i in range(len(trainer.train_set))])
    return float(np.mean([trainer.objective.loss(trainer.dit, batch, trainer.objective.draw(batch, s)).loss.item()
                          for s in PROBE_SEEDS]))


@pytest.fixture(scope="module")
def trained(dataset, cache_dir, tmp_path_factory):
    """Full fine-tuning of the tiny preset for 30 steps, one episode held out."""
    cfg = config(dataset, tmp_path_factory.mktemp("full"), cache_dir, dataset={"val_episodes": [2]},
                 optim={"lr": 3e-3, "min_lr_ratio": 1.0},
                 schedule={"max_steps": 30, "log_every": 5, "val_every": 15, "save_every": 15})
    trainer = Trainer(cfg)
    before = probe_loss(trainer)
    result = trainer.train()
    yield trainer, result, before
    trainer.close()


def test_loss_decreases(trained):
    trainer, result, before = trained
    after = probe_loss(trainer)
    assert after < 0.9 * before, (before, after)  # 30 steps of a randomly initialised model
    train_logs = [h for h in result.history if h["kind"] == "train"]
    assert [h["step"] for h in train_logs] == [5, 10, 15, 20, 25, 30]
    assert {"loss", "video_loss", "action_loss", "lr", "grad_norm", "samples_per_s"} <= set(train_logs[0])
    val_logs = [h for h in result.history if h["kind"] == "val"]
    assert [h["step"] for h in val_logs] == [15, 30]
    assert all(np.isfinite(h["action_mae"]) and h["action_mae_units"] > 0 for h in val_logs)
    assert all(h["action_mae_from_rest"] > 0 for h in val_logs)
    logged = [json.loads(line) for line in (trainer.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == len(result.history)
    assert any(p.name.startswith("events.out.tfevents") for p in (trainer.output_dir / "tensorboard").iterdir())


def test_action_mae_from_rest_is_the_first_chunk_of_episode_starts(trained):
    import torch

    from model_core.training.objective import rollout_actions, step_seed

    trainer = trained[0]
    rest = [i for i, ref in enumerate(trainer.val_set.refs) if ref.start == 0]
    assert rest and len(rest) < len(trainer.val_set)  # the metric picks a subset
    batch = torch.utils.data.default_collate([trainer.val_set[i] for i in rest[:trainer.cfg.optim.batch_size]])
    steps, seed = trainer.cfg.schedule.val_sampling_steps, step_seed(trainer.cfg.run.seed + 2, 0)
    pred = rollout_actions(trainer.dit.eval(), batch, steps, trainer.cfg.objective.shift, seed)
    T, real = trainer.dit.cfg.num_action_per_block, trainer.data.normalizer.action.size
    expected = (pred[:, :T, :real] - batch["actions"][:, :T, :real]).abs().mean().item()
    second = (pred[:, T:2 * T, :real] - batch["actions"][:, T:2 * T, :real]).abs().mean().item()
    metrics = trainer.validate()
    assert metrics["action_mae_from_rest"] == pytest.approx(expected, rel=1e-5)
    assert metrics["action_mae_from_rest_chunk2"] == pytest.approx(second, rel=1e-5) and second != expected


def test_checkpoint_reloads_bit_exactly_and_runs_in_the_engine(trained):
    trainer, result, _ = trained
    assert result.checkpoint == trainer.output_dir / "final"
    assert (trainer.output_dir / "checkpoints" / "step_000015" / "training_state.pt").is_file()
    dit, ckpt = load_model(result.checkpoint)
    state = trainer.dit.state_dict()
    assert set(dit.state_dict()) == set(state)
    assert all(torch.equal(v, state[k]) for k, v in dit.state_dict().items())
    meta = ckpt.metadata["oxe_droid"]
    assert set(meta["statistics"]["action"]) == {"joint_position", "gripper_position"}
    assert meta["dataset"]["val_episodes"] == [2] and meta["sample"]["video_fps"] == 5
    conf = yaml.safe_load((result.checkpoint / "experiment_cfg" / "conf.yaml").read_text())
    assert conf["objective"]["mode"] == "full"
    engine, _ = build_engine(result.checkpoint)
    assert engine.config.num_steps == 2 and engine.config.cfg_scale == 1.0  # model.engine overrides
    frames = np.random.default_rng(0).integers(0, 255, (9, 64, 128, 3), dtype=np.uint8)
    prompt = trainer.embodiment.prompt.format("reach the red cube")
    first = engine.step(frames[:1], np.zeros(8, np.float32), prompt)
    second = engine.step(frames[1:], np.zeros(8, np.float32), prompt)
    assert first.reset == "first call" and second.reset is None
    assert second.actions.shape == (24, 32) and np.isfinite(second.actions).all()


@pytest.mark.parametrize("block", [1, 2])
def test_cached_inference_equals_the_training_forward(trained, block):
    """The reloaded model, stepping with a KV cache (state token as in training), reproduces the teacher-forcing
    forward the trainer optimised (MODEL_SPEC section 5; tests/model_core/test_causality.py)."""
    trainer, result, _ = trained
    dit, _ = load_model(result.checkpoint)
    dit.cached_state_attention = "training"
    batch = torch.utils.data.default_collate([trainer.train_set[1]])
    noise = trainer.objective.draw(batch, 99)
    noisy, t_video, regs = trainer.objective.noised(batch, noise)
    clean = batch["latents"]
    with torch.no_grad():
        video, actions = trainer.dit.eval().forward_train(noisy, clean, t_video, regs,
                                                          trainer.dit.encode_context(batch["text"], batch["clip"]))
        trainer.dit.train()
        ctx = dit.encode_context(batch["text"], batch["clip"])
        cache = KVCache(dit.cfg)
        dit.forward_cached(clean[:, :, :1], torch.zeros(1, 1), 0, cache, ctx, append=True)
        if block == 2:
            dit.forward_cached(clean[:, :, 1:3], torch.zeros(1, 2), 1, cache, ctx, append=True)
        s, a = 1 + 2 * (block - 1), slice(24 * (block - 1), 24 * block)
        block_regs = Registers(regs.actions[:, a], regs.timesteps[:, a], regs.states[:, block - 1:block])
        v, act = dit.forward_cached(noisy[:, :, s:s + 2], t_video[:, s:s + 2], s, cache, ctx, block_regs)
    assert video.abs().max() > 0.1 and actions.abs().max() > 0.1  # a trained, non-trivial model
    torch.testing.assert_close(v, video[:, :, s:s + 2], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(act, actions[:, a], atol=2e-5, rtol=1e-4)


@pytest.fixture
def one_thread():
    """Some CPU backward kernels sum in a thread-dependent order (~1e-7 run to run); one thread is bit-exact."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_resume_continues_exactly(dataset, cache_dir, tmp_path, one_thread):
    sched = {"max_steps": 4, "log_every": 1, "save_every": 2}
    straight = Trainer(config(dataset, tmp_path / "a", cache_dir, schedule=sched))
    straight.train()
    first = Trainer(config(dataset, tmp_path / "b", cache_dir, schedule=sched))
    assert first.train(until=3).checkpoint.name == "step_000003"  # an interrupted job (odd step: no periodic save)
    resumed = Trainer(config(dataset, tmp_path / "b", cache_dir, schedule={**sched, "resume": "auto"}))
    assert resumed.start_step == 3
    resumed.train()
    a, b = straight.dit.state_dict(), resumed.dit.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    done = Trainer(config(dataset, tmp_path / "b", cache_dir, schedule={**sched, "resume": "auto"}))
    assert done.start_step == 4 and done.train().step == 4  # already finished: nothing to do


def test_lora_flash_checkpoint_in_the_release_layout(dataset, cache_dir, tmp_path):
    cfg = config(dataset, tmp_path / "lora", cache_dir, objective={"mode": "lora", "flash": True},
                 optim={"lr": 1e-2}, schedule={"max_steps": 3})
    trainer = Trainer(cfg)
    initial = {k: v.clone() for k, v in trainer.dit.state_dict().items()}
    result = trainer.train()
    assert all(n.startswith(("state_encoder", "action_encoder", "action_decoder")) or ".lora_" in n
               for n in trainer.trainable)
    state = trainer.dit.state_dict()
    changed = {k for k in state if not torch.equal(state[k], initial[k])}
    assert changed and all(".lora_" in k or k.startswith(("state_encoder", "action_encoder", "action_decoder"))
                           for k in changed)  # frozen base weights stay as they were
    keys = read_tensors(result.checkpoint)
    assert all(k.startswith(RELEASE_LORA_PREFIX) for k in keys)
    assert RELEASE_LORA_PREFIX + "blocks.0.ffn.0.lora_A.default.weight" in keys
    assert json.loads((result.checkpoint / "adapter_config.json").read_text())["r"] == 4
    dit, ckpt = load_model(result.checkpoint)
    merged = merged_state_dict(trainer.dit)
    assert all(torch.equal(dit.state_dict()[k], merged[k]) for k in merged)
    assert ckpt.extra["dreamzero_policy"]["engine"]["flash"] is True  # Flash training -> 1-step inference
    engine, _ = build_engine(result.checkpoint)
    calls = []
    original = engine.dit.forward_cached
    engine.dit.forward_cached = lambda *a, **k: calls.append(k.get("append", False)) or original(*a, **k)
    out = engine.step(np.zeros((1, 64, 128, 3), np.uint8), np.zeros(8, np.float32), "a robot reaches")
    assert calls.count(False) == 1 and np.isfinite(out.actions).all()


def test_fine_tune_a_checkpoint_with_its_own_encoders(trained, dataset, cache_dir, tmp_path):
    """init_from the trained checkpoint (encoders from its dreamzero_policy section), LoRA on top."""
    _, result, _ = trained
    cfg = config(dataset, tmp_path / "ft", cache_dir, model={"preset": None, "init_from": str(result.checkpoint),
                                                            "encoders": "checkpoint"},
                 objective={"mode": "lora"}, schedule={"max_steps": 1})
    trainer = Trainer(cfg)
    assert trainer.video_hw == (64, 128)
    base, _ = load_model(result.checkpoint)
    assert torch.equal(trainer.dit.blocks[0].self_attn.q.base_layer.weight, base.blocks[0].self_attn.q.weight)
    out = trainer.train().checkpoint
    assert (out / "encoders" / "vae.safetensors").is_file()  # tiny encoders are copied: self-contained
    engine, ckpt = build_engine(out)
    assert ckpt.extra["dreamzero_training"]["base"] == str(result.checkpoint)
    assert np.isfinite(engine.step(np.zeros((1, 64, 128, 3), np.uint8), np.zeros(8, np.float32), "a").actions).all()


def test_reinit_gives_named_modules_fresh_weights_and_keeps_the_rest(trained, dataset, cache_dir, tmp_path):
    _, result, _ = trained
    model = {"preset": None, "init_from": str(result.checkpoint), "encoders": "checkpoint", "init_seed": 3}
    trainer = Trainer(config(dataset, tmp_path / "re", cache_dir, model={**model, "reinit": ["text_embedding"]},
                             objective={"mode": "full"}, schedule={"max_steps": 1}))
    base, _ = load_model(result.checkpoint)
    torch.manual_seed(3)
    fresh = [torch.nn.Linear(m.in_features, m.out_features) for m in base.text_embedding if hasattr(m, "weight")]
    linears = [m for m in trainer.dit.text_embedding if hasattr(m, "weight")]
    assert all(torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias) for a, b in zip(linears, fresh))
    assert not torch.equal(linears[0].weight, base.text_embedding[0].weight)
    assert torch.equal(trainer.dit.blocks[0].cross_attn.k.weight, base.blocks[0].cross_attn.k.weight)
    with pytest.raises(TrainConfigError, match="model.reinit: 'text_embeding'"):
        Trainer(config(dataset, tmp_path / "typo", cache_dir, model={**model, "reinit": ["text_embeding"]},
                       schedule={"max_steps": 1}))


def test_window_override_reaches_the_checkpoint_and_the_runtime(trained, dataset, cache_dir, tmp_path, caplog):
    """model.max_chunk_size 1: one-chunk samples fill the window, and the engine decides every chunk afresh."""
    _, result, _ = trained
    model = {"preset": None, "init_from": str(result.checkpoint), "encoders": "checkpoint", "max_chunk_size": 1}
    with caplog.at_level("WARNING", logger="dreamzero.train"):
        trainer = Trainer(config(dataset, tmp_path / "w1", cache_dir, model=model, dataset={"num_chunks": 1},
                                 objective={"mode": "full"}, schedule={"max_steps": 1}))
    assert not any("shorter than" in r.getMessage() for r in caplog.records)
    base, _ = load_model(result.checkpoint)
    assert torch.equal(trainer.dit.blocks[0].self_attn.q.weight, base.blocks[0].self_attn.q.weight)
    out = trainer.train().checkpoint
    trainer.close()
    assert json.loads((out / "config.json").read_text())["max_chunk_size"] == 1
    engine, _ = build_engine(out)
    first = engine.step(np.zeros((1, 64, 128, 3), np.uint8), np.zeros(8, np.float32), "a")
    second = engine.step(np.zeros((8, 64, 128, 3), np.uint8), np.zeros(8, np.float32), "a")
    assert (first.reset, second.reset) == ("first call", "window full") and second.current_start_frame == 1
    with pytest.raises(TrainConfigError, match=r"model.max_chunk_size"):
        config(dataset, tmp_path / "w0", cache_dir, model={"max_chunk_size": 0})


def test_activation_checkpointing_gives_the_same_step(dataset, cache_dir, tmp_path):
    runs = []
    for flag in (False, True):
        trainer = Trainer(config(dataset, tmp_path / str(flag), cache_dir, model={"gradient_checkpointing": flag},
                                 schedule={"max_steps": 1}))
        trainer.train()
        runs.append(trainer.dit.state_dict())
    assert all(torch.allclose(runs[0][k], runs[1][k], atol=1e-6) for k in runs[0])


def test_engine_overrides_are_checked_before_training(dataset, cache_dir, tmp_path):
    with pytest.raises(TrainConfigError, match=r"model.engine: .*num_stepz"):
        Trainer(config(dataset, tmp_path / "x", cache_dir, model={"engine": {"num_stepz": 4}}))


def test_samples_shorter_than_the_runtime_window_are_flagged(dataset, cache_dir, tmp_path, caplog):
    """The tiny preset attends to 4 blocks before the runtime resets: 2-chunk samples leave blocks 3-4 untrained."""
    assert _warns(dataset, cache_dir, tmp_path, caplog, 2)
    assert not _warns(dataset, cache_dir, tmp_path, caplog, 4, pad_episode_end=True)


def _warns(dataset, cache_dir, tmp_path, caplog, num_chunks, **dataset_fields) -> bool:
    with caplog.at_level("WARNING", logger="dreamzero.train"):
        trainer = Trainer(config(dataset, tmp_path / f"w{num_chunks}", cache_dir,
                                 dataset={"num_chunks": num_chunks, **dataset_fields}, schedule={"max_steps": 1}))
        trainer.close()
    flagged = any("num_chunks=%d blocks are shorter than the 4 blocks" % num_chunks in r.getMessage()
                  for r in caplog.records)
    caplog.clear()
    return flagged


def test_bad_video_fails_before_the_first_step(tmp_path):
    root = write_v21(tmp_path / "ds", [make_episode(0, 60), make_episode(1, 60)], video_lengths={0: 59})
    cfg = config(root, tmp_path / "out", tmp_path / "cache")
    with pytest.raises(DatasetError, match=r"episode 0, field 'observation.images.\w+': the video has 59 frames"):
        Trainer(cfg)
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_command_line(dataset, cache_dir, tmp_path, capsys):
    data = train_config(dataset, tmp_path / "cli", dataset={"cache_dir": str(cache_dir)})
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["--config", str(path), "--max-steps", "1"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {
        "checkpoint": str(tmp_path / "cli" / "final"), "step": 1}
    data["optim"]["lr"] = "fast"
    path.write_text(yaml.safe_dump(data))
    assert main(["--config", str(path)]) == 2
    assert "optim.lr: Input should be a valid number" in capsys.readouterr().err


def test_step_seed_is_stable():
    assert step_seed(0, 1) == step_seed(0, 1) != step_seed(0, 2) != step_seed(1, 1)
