"""The DreamZero trainer: `dreamzero-train --config FILE` (single process, or under torchrun with DDP / FSDP).

    dreamzero-train --config config/train/tiny_reach.yaml
    torchrun --nproc_per_node 8 -m model_core.training.train --config my_14b.yaml      # DDP (fsdp: strategy)

Steps, in order (everything that can be wrong with the config, the embodiment or the dataset fails before the first
optimizer step, with one error naming the field / episode):
    1. config (pydantic), embodiment (the runtime's YAML), process group when launched by torchrun
    2. the model: a fresh preset or a checkpoint (`model.init_from`), and its frozen encoders
    3. the dataset checked and turned into samples + statistics (data.py), encoded once into the cache (cache.py)
    4. LoRA adapters or full fine-tuning; DDP or FSDP2 wrapping (`fully_shard` per block and per cross-attention;
       with several ranks only rank 0 reads the weights, the others build on the meta device and receive their
       shards); optional activation checkpointing per block
    5. AdamW with linear warmup + cosine decay, gradient clipping, bf16 autocast on GPU, gradient accumulation
    6. every `log_every` steps: TensorBoard scalars (loss, video loss, action loss, lr, grad norm) + metrics.jsonl;
       every `val_every`: validation on held-out episodes (action MAE of a sampled rollout, normalised and in robot
       units); every `save_every` and at the end: a checkpoint

Checkpoints are the runtime's format (model_core.factory.save_bundle / model_core.checkpoint.save_checkpoint):
config.json with the `dreamzero_policy` section, model.safetensors (LoRA: the release's adapter names, merged on
load), experiment_cfg/metadata.json (statistics for `Normalizer.from_statistics`), experiment_cfg/conf.yaml (this
run's config), plus training_state.pt (step, optimizer) for `schedule.resume`. The node loads `<output_dir>/final`
(or any `checkpoints/step_XXXXXX`) with no conversion.

Determinism: the batch of each (step, micro-step, rank) and its noise are pure functions of the seed, so a resumed
run continues exactly where the interrupted one would have gone (bit for bit at a fixed thread count; some
multi-threaded CPU backward kernels reorder float sums run to run, ~1e-7).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml

from model_core.checkpoint import PLAIN_PREFIX, RELEASE_LORA_PREFIX, STATE_FILE, read_tensors, save_checkpoint
from model_core.config import TINY_VIDEO_HW, DiTConfig, preset
from model_core.dit import CausalWanModel, DiTBlock
from model_core.engine import EngineConfig
from model_core.errors import ModelCoreError
from model_core.factory import SECTION, save_bundle
from model_core.image_encoder import ImageEncoder
from model_core.text_encoder import PromptEncoder
from model_core.vae import WanVAE
from model_core.training.cache import CachedSamples, EncoderCache, FrozenEncoders
from model_core.training.config import TrainConfig, lr_factor, load_config
from model_core.training.data import DreamZeroData, SampleGeometry
from model_core.training.errors import DatasetError, TrainConfigError
from model_core.training.lora import adapter_config, apply_lora
from model_core.training.objective import FlowMatchingObjective, TrainingForward, step_seed

log = logging.getLogger("dreamzero.train")
IMAGE_PARAMS = ("img_emb.", ".k_img.", ".v_img.", ".norm_k_img.")
REGISTER_PARAMS = ("state_encoder.", "action_encoder.", "action_decoder.")


# ---------------------------------------------------------------------------------------------------------------
# Process group
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    strategy: str = "none"  # none | ddp | fsdp
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed(cfg: TrainConfig) -> DistEnv:
    """Read torchrun's environment; init the process group when more than one process runs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    want = cfg.run.device
    use_cuda = torch.cuda.is_available() if want == "auto" else want == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise TrainConfigError("run.device: 'cuda' requested but torch sees no CUDA device")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    strategy = cfg.distributed.strategy
    if strategy == "auto":
        strategy = "ddp" if world > 1 else "none"
    if strategy == "none" and world > 1:
        raise TrainConfigError(f"distributed.strategy: 'none' but torchrun started {world} processes")
    env = DistEnv(rank, world, local_rank, device, strategy)
    if world > 1 or strategy in ("ddp", "fsdp"):
        if not dist.is_initialized():
            backend = cfg.distributed.backend
            if backend == "auto":
                backend = "nccl" if use_cuda else "gloo"
            if "MASTER_ADDR" not in os.environ:  # a single process asked for ddp/fsdp: a group of one
                os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
                os.environ.setdefault("MASTER_PORT", "29512")
                os.environ.setdefault("RANK", "0")
                os.environ.setdefault("WORLD_SIZE", "1")
            dist.init_process_group(backend=backend)
            env.owns_group = True
        env.rank, env.world = dist.get_rank(), dist.get_world_size()
    return env


def _all_mean(values: list[float], env: DistEnv, device: torch.device) -> list[float]:
    if env.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / env.world).tolist()


def _all_sum(values: list[float], env: DistEnv, device: torch.device) -> list[float]:
    if env.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# ---------------------------------------------------------------------------------------------------------------
# Batches: a pure function of (seed, step, micro-step, rank)
# ---------------------------------------------------------------------------------------------------------------

class StepBatches(torch.utils.data.Sampler):
    """Index lists for steps [start, stop): a virtual stream of shuffled epochs, dealt out rank by rank."""

    def __init__(self, num_samples: int, batch_size: int, grad_accum: int, rank: int, world: int, seed: int,
                 start: int, stop: int):
        self.n, self.bs, self.accum, self.rank, self.world, self.seed = num_samples, batch_size, grad_accum, rank, \
            world, seed
        self.start, self.stop = start, stop
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def indices(self, step: int, micro: int) -> list[int]:
        first = ((step * self.accum + micro) * self.world + self.rank) * self.bs
        return [int(self._perm(g // self.n)[g % self.n]) for g in range(first, first + self.bs)]

    def __iter__(self):
        for step in range(self.start, self.stop):
            for micro in range(self.accum):
                yield self.indices(step, micro)

    def __len__(self) -> int:
        return (self.stop - self.start) * self.accum


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def reinitialise(dit: CausalWanModel, names: list[str], seed: int) -> None:
    """Give the named submodules fresh default-initialised weights, in order, after `torch.manual_seed(seed)`."""
    children = dict(dit.named_modules())
    torch.manual_seed(seed)
    for name in names:
        if not name or name not in children:
            raise TrainConfigError(f"model.reinit: {name!r} is not a DiT submodule (e.g. text_embedding, "
                                   f"action_decoder, blocks.3.cross_attn)")
        for module in children[name].modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        log.info("model.reinit: %s initialised afresh", name)


# ---------------------------------------------------------------------------------------------------------------
# Activation checkpointing (same class and parameter names, so checkpoints and FSDP see a DiTBlock)
# ---------------------------------------------------------------------------------------------------------------

class CheckpointedDiTBlock(DiTBlock):
    """A DiTBlock that recomputes its activations in backward instead of storing them."""

    def forward(self, *args):
        if torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint
            return checkpoint(super().forward, *args, use_reentrant=False)
        return super().forward(*args)


# ---------------------------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    checkpoint: Path
    step: int
    history: list[dict] = field(default_factory=list)  # the logged metrics (rank 0)


class Trainer:
    """Builds everything from a validated TrainConfig; `train()` runs to schedule.max_steps."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.env = setup_distributed(cfg)
        try:
            self._setup()
        except BaseException:
            self.env.close()  # a config / data error must not leave the process group behind
            raise

    def _setup(self) -> None:
        cfg, env = self.cfg, self.env
        self.device = env.device
        torch.manual_seed(cfg.run.seed)
        self.output_dir = cfg.output_dir
        if env.main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.embodiment = _load_embodiment(cfg.embodiment)
        self.broadcast_init = env.strategy == "fsdp" and env.world > 1
        self._build_model()
        dit_cfg = self.dit.cfg
        if self.embodiment.action_horizon != dit_cfg.num_action_per_block:
            raise TrainConfigError(f"embodiment: {self.embodiment.name!r} has action_horizon "
                                   f"{self.embodiment.action_horizon}, the model {dit_cfg.num_action_per_block} "
                                   f"actions per block")
        geometry = SampleGeometry(cfg.dataset.num_chunks, dit_cfg.num_action_per_block,
                                  dit_cfg.num_frame_per_block * self.encoders.vae.temporal_stride)
        self._check_window(geometry)
        self.data = DreamZeroData(cfg.dataset, self.embodiment, geometry, self.video_hw, cfg.model.view_hw,
                                  dit_cfg.action_dim, dit_cfg.max_state_dim)
        self.cache = EncoderCache(cfg.cache_dir, self.data, self.encoders, dit_cfg)
        failure = None
        try:
            self.cache.build(env.rank, env.world, progress=cfg.run.progress and env.main)
        except DatasetError as err:  # e.g. a video of this rank's episodes: every rank must stop, not wait
            failure = err
        failed_ranks = _all_sum([float(failure is not None)], env, self.device)[0]  # also the barrier
        if failure is not None:
            raise failure
        if failed_ranks:
            raise DatasetError(f"{int(failed_ranks)} other rank(s) failed while encoding the dataset (see their "
                               f"error)")
        self.train_set = CachedSamples(self.cache, self.data.train_samples)
        self.val_set = CachedSamples(self.cache, self.data.val_samples) if self.data.val_samples else None
        self.objective = FlowMatchingObjective(cfg.objective, dit_cfg)
        self.trainable = self._prepare_parameters()
        self.start_step, resume_dir = 0, self._resume_dir()
        if resume_dir is not None:
            self._load_weights(resume_dir)
        if not (self.broadcast_init and not env.main):
            self.dit.to(self.device)
        self.module = TrainingForward(self.dit, self.objective)
        self.wrapped = self._wrap(self.module)
        params = [p for p in self.dit.parameters() if p.requires_grad]
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, eps=o.eps)
        if resume_dir is not None:
            self._load_optimizer(resume_dir)
        self.autocast = self.device.type == "cuda" and cfg.run.precision == "bf16"
        self.writer = None
        self.history: list[dict] = []

    # -- model ----------------------------------------------------------------------------------------------------

    def _build_model(self) -> None:
        cfg, mcfg = self.cfg, self.cfg.model
        section: dict[str, Any] = {}
        # FSDP with several ranks: only rank 0 materialises the weights; the others build the model on the meta
        # device and receive their shards from rank 0 after sharding (see _wrap), so a 14B model is read once.
        on_meta = self.broadcast_init and not self.env.main
        if mcfg.init_from:
            from model_core.checkpoint import load_model, read_dit_config
            if on_meta:
                with torch.device("meta"):
                    dit = CausalWanModel(read_dit_config(mcfg.init_from))
                extra = json.loads((Path(mcfg.init_from) / "config.json").read_text())
            else:
                dit, ckpt = load_model(mcfg.init_from, dtype=torch.float32)
                extra = ckpt.extra
            section = _merge(extra.get(SECTION, {}), mcfg.encoder_overrides)
            self.base_name = str(mcfg.init_from)
            if not on_meta:  # meta ranks receive rank 0's weights
                reinitialise(dit, mcfg.reinit, mcfg.init_seed)
        else:
            dit_cfg = preset(mcfg.preset)
            torch.manual_seed(mcfg.init_seed)
            with torch.device("meta" if on_meta else "cpu"):
                dit = CausalWanModel(dit_cfg)
            section = copy.deepcopy(mcfg.encoder_overrides)
            self.base_name = f"preset:{mcfg.preset}"
        if mcfg.max_chunk_size is not None:  # the window shapes masks only, never weights
            dit.cfg = replace(dit.cfg, max_chunk_size=mcfg.max_chunk_size)
        dit.train()
        if mcfg.encoders == "tiny":  # the encoders of model_core.factory.tiny_components(seed)
            vae = WanVAE.tiny("wan21", seed=mcfg.init_seed).to(self.env.device)
            text = PromptEncoder.tiny(seed=mcfg.init_seed)
            image = ImageEncoder.tiny(seed=mcfg.init_seed).to(self.env.device)
        else:
            from model_core.backends import default_dtype
            from model_core.factory import load_encoders  # the same loader (and dtype) build_engine uses
            root = Path(mcfg.init_from) if mcfg.init_from else Path(".")
            vae, text, image = load_encoders(section.get("encoders", {}), root, self.env.device,
                                         default_dtype(self.env.device))
        text.cache_dir = self.cfg.cache_dir / "prompt_embeds"
        if image is not None and (not cfg.objective.condition_on_image or image.width != dit.cfg.clip_dim):
            if cfg.objective.condition_on_image and mcfg.encoders != "tiny":
                raise TrainConfigError(f"model: the image encoder's width {image.width} does not match the DiT's "
                                       f"clip_dim {dit.cfg.clip_dim}")
            if cfg.objective.condition_on_image:
                log.warning("image encoder width %d != DiT clip_dim %d: training without image conditioning",
                            image.width, dit.cfg.clip_dim)
            image = None
        self.encoders = FrozenEncoders(vae, text, image, self.env.device)
        hw = mcfg.video_hw or section.get("video_hw")
        if hw is None and mcfg.preset in ("tiny", "small") and not mcfg.init_from:
            hw = TINY_VIDEO_HW
        if hw is None:
            raise TrainConfigError("model.video_hw: required (the checkpoint's dreamzero_policy section has none)")
        self.video_hw = (int(hw[0]), int(hw[1]))
        s = vae.spatial_stride * dit.cfg.patch_size[1]
        if self.video_hw[0] % s or self.video_hw[1] % s or \
                (self.video_hw[0] // s) * (self.video_hw[1] // s) != dit.cfg.frame_seqlen:
            raise TrainConfigError(f"model.video_hw: {list(self.video_hw)} gives "
                                   f"{(self.video_hw[0] // s) * (self.video_hw[1] // s)} tokens per frame with VAE "
                                   f"stride {vae.spatial_stride} and patch {dit.cfg.patch_size[1:]}; the DiT's "
                                   f"frame_seqlen is {dit.cfg.frame_seqlen}")
        try:  # the engine overrides written into the checkpoint must build an engine
            EngineConfig(video_hw=self.video_hw, **mcfg.engine)
        except (TypeError, ModelCoreError) as err:
            raise TrainConfigError(f"model.engine: {err}") from err
        self.section = section
        self.dit = dit

    def _check_window(self, geometry: SampleGeometry) -> None:
        latents = 1 + self.dit.cfg.num_frame_per_block * geometry.num_chunks
        window = self.dit.cfg.local_attn_size
        if latents > window:
            log.warning("%d latent frames per sample exceed the %d-frame attention window: the earliest blocks "
                        "drop out of view as in the release's long-video setting", latents, window)
        elif latents < window and self.env.main:
            log.warning("samples of dataset.num_chunks=%d blocks are shorter than the %d blocks the runtime attends to "
                        "before it resets (max_chunk_size): an episode's blocks after the first %d run at positions "
                        "training never saw; train or fine-tune on samples of %d chunks (pad_episode_end pads short "
                        "episodes)", geometry.num_chunks, self.dit.cfg.max_chunk_size, geometry.num_chunks,
                        self.dit.cfg.max_chunk_size)

    def _prepare_parameters(self) -> list[str]:
        """requires_grad per the objective mode; LoRA adapters inserted; returns the trainable names."""
        ocfg, dit = self.cfg.objective, self.dit
        self.lora_targets = None
        if ocfg.mode == "lora":
            dit.requires_grad_(False)
            apply_lora(dit, ocfg.lora.rank, ocfg.lora.alpha, ocfg.lora.targets)
            self.lora_targets = ocfg.lora.targets
            for name, p in dit.named_parameters():
                p.requires_grad = ".lora_A." in name or ".lora_B." in name or (
                    ocfg.lora.train_registers and name.startswith(REGISTER_PARAMS))
        else:
            dit.requires_grad_(True)
        if self.encoders.image is None:  # CLIP path unused: frozen (DDP would see parameters without gradients)
            for name, p in dit.named_parameters():
                if name.startswith("img_emb.") or any(part in name for part in IMAGE_PARAMS[1:]):
                    p.requires_grad = False
        if self.cfg.model.gradient_checkpointing:
            for blk in dit.blocks:
                blk.__class__ = CheckpointedDiTBlock
        return [n for n, p in dit.named_parameters() if p.requires_grad]

    def _wrap(self, module: TrainingForward) -> nn.Module:
        env = self.env
        if env.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [env.device.index] if env.device.type == "cuda" else None
            return DDP(module, device_ids=ids)
        if env.strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
            # context_kv returns head views of k/v; the DiT only reads them (never in place), so FSDP's warning about
            # views losing their pre-backward hook under in-place ops does not apply.
            warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPCrossAttention\) returned a view")
            full = module.state_dict() if env.main else {}  # rank 0's full tensors, kept alive through sharding
            for blk in self.dit.blocks:
                fully_shard(blk.cross_attn)  # its own unit: encode_context calls context_kv outside the block
                register_fsdp_forward_method(blk.cross_attn, "context_kv")
                fully_shard(blk)
            fully_shard(module)
            register_fsdp_forward_method(module, "rollout")
            if self.broadcast_init:
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
                if not env.main:
                    module.to_empty(device=env.device)
                set_model_state_dict(module, full, options=StateDictOptions(full_state_dict=True,
                                                                            broadcast_from_rank0=True))
            return module
        return module

    # -- resume -------------------------------------------------------------------------------------------------

    def _resume_dir(self) -> Path | None:
        resume = self.cfg.schedule.resume
        if resume is None:
            return None
        if resume == "auto":
            candidates = list((self.output_dir / "checkpoints").glob("step_*")) + [self.output_dir / "final"]
            found = [(_state_step(p), p) for p in candidates if (p / STATE_FILE).is_file()]
            if not found:
                log.info("resume: auto, no checkpoint in %s yet: starting fresh", self.output_dir)
                return None
            return max(found)[1]
        path = Path(resume)
        if not (path / STATE_FILE).is_file():
            raise TrainConfigError(f"schedule.resume: {path} holds no {STATE_FILE} (not a training checkpoint)")
        return path

    def _load_weights(self, path: Path) -> None:
        """The checkpoint's raw tensors (LoRA unmerged) into the (wrapped) DiT, strictly (FSDP: rank 0 only; the
        others receive them when the model is sharded)."""
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        self.start_step = int(state["step"])
        if state.get("trainable") != self.trainable:
            raise TrainConfigError(f"schedule.resume: {path} trained other parameters (objective changed?)")
        log.info("resuming from %s at step %d", path, self.start_step)
        if self.broadcast_init and not self.env.main:
            return
        tensors = read_tensors(path)
        bare = {}
        for key, value in tensors.items():
            for prefix in (RELEASE_LORA_PREFIX, PLAIN_PREFIX):
                if key.startswith(prefix):
                    bare[key[len(prefix):]] = value
                    break
        missing, unexpected = self.dit.load_state_dict(bare, strict=False)
        if missing or unexpected:
            raise TrainConfigError(f"schedule.resume: {path} does not fit this run's model (mode "
                                   f"{self.cfg.objective.mode}): missing {missing[:5]}, unexpected {unexpected[:5]}")

    def _load_optimizer(self, path: Path) -> None:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        if self.env.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
            set_optimizer_state_dict(self.wrapped, self.optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(state["optimizer"])

    # -- the loop -----------------------------------------------------------------------------------------------

    def train(self, until: int | None = None) -> TrainResult:
        """Train to schedule.max_steps, or stop early after step `until` with a checkpoint there (a job with a
        time slot; `schedule.resume` continues it exactly)."""
        cfg, env, s = self.cfg, self.env, self.cfg.schedule
        stop = s.max_steps if until is None else min(until, s.max_steps)
        if self.start_step >= s.max_steps:
            log.info("nothing to do: checkpoint at step %d >= max_steps %d", self.start_step, s.max_steps)
            return TrainResult(self.output_dir / "final", self.start_step, self.history)
        sampler = StepBatches(len(self.train_set), cfg.optim.batch_size, cfg.optim.grad_accum, env.rank, env.world,
                              cfg.run.seed, self.start_step, stop)
        loader = torch.utils.data.DataLoader(self.train_set, batch_sampler=sampler, num_workers=s.num_workers,
                                             pin_memory=self.device.type == "cuda")
        if env.main:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.output_dir / "tensorboard"))
        bar = None
        if env.main and cfg.run.progress:
            from tqdm import tqdm
            bar = tqdm(total=s.max_steps, initial=self.start_step, desc="training", unit="step", dynamic_ncols=True)
        batches = iter(loader)
        step, last = self.start_step, None
        window: list[list[float]] = []
        tic = time.perf_counter()
        while step < stop:
            lr = cfg.optim.lr * lr_factor(step, cfg.optim.warmup_steps, s.max_steps, cfg.optim.min_lr_ratio)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            parts = self._optimizer_step(batches, step)
            step += 1
            reduced = _all_mean(parts, env, self.device)
            if not all(math.isfinite(v) for v in reduced[:3]):
                raise FloatingPointError(f"step {step}: loss is not finite (loss, video, action = {reduced[:3]}); "
                                         f"lower optim.lr or check the data")
            window.append(reduced)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{reduced[0]:.4f}", lr=f"{lr:.2e}")
            if step % s.log_every == 0 or step == s.max_steps:
                mean = np.mean(window, axis=0)
                elapsed = time.perf_counter() - tic
                record = {"step": step, "loss": mean[0], "video_loss": mean[1], "action_loss": mean[2], "lr": lr,
                          "grad_norm": mean[3],
                          "samples_per_s": len(window) * cfg.optim.batch_size * cfg.optim.grad_accum * env.world
                          / max(elapsed, 1e-9)}
                self._log(record, "train")
                window, tic = [], time.perf_counter()
            if self.val_set is not None and (step % s.val_every == 0 or step == s.max_steps):
                self._log({"step": step, **self.validate()}, "val")
            if step == s.max_steps:
                last = self.save(step, self.output_dir / "final")
            elif step % s.save_every == 0 or step == stop:
                last = self.save(step, self.output_dir / "checkpoints" / f"step_{step:06d}")
        if bar is not None:
            bar.close()
        if self.writer is not None:
            self.writer.close()
        return TrainResult(last, step, self.history)

    def _optimizer_step(self, batches, step: int) -> list[float]:
        cfg, env = self.cfg, self.env
        self.optimizer.zero_grad(set_to_none=True)
        totals = np.zeros(3)
        accum = cfg.optim.grad_accum
        for micro in range(accum):
            batch = _to_device(next(batches), self.device)
            noise = self.objective.draw(batch, step_seed(cfg.run.seed, step, env.rank, micro))
            sync = contextlib.nullcontext()
            if env.strategy == "ddp" and micro < accum - 1:
                sync = self.wrapped.no_sync()
            with sync, torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                loss, video, action = self.wrapped(batch, noise)
                (loss / accum).backward()
            totals += [loss.item(), video.item(), action.item()]
        params = [p for p in self.dit.parameters() if p.requires_grad]
        if cfg.optim.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        self.optimizer.step()
        return [*(totals / accum).tolist(), float(norm)]

    def _log(self, record: dict, kind: str) -> None:
        if not self.env.main:
            return
        record = {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in record.items()}
        self.history.append({"kind": kind, **record})
        with open(self.output_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"kind": kind, **record}) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step":
                    self.writer.add_scalar(f"{kind}/{key}", value, record["step"])
            self.writer.flush()
        log.info("%s %s", kind, " ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in record.items()))

    # -- validation -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Action MAE of sampled chunks on held-out episodes (every rank runs val_batches batches; summed), and
        `action_mae_from_rest`: the first chunk of held-out samples that start at an episode's first step, where
        only the images and the instruction say where to go (the state does once the robot moves), and
        `action_mae_from_rest_chunk{k}` for their later chunks (the decision comes there when demonstrations first
        move to a fixed pose, as the sim's reach expert looks from a lookout)."""
        cfg, env = self.cfg, self.env
        n, bs = len(self.val_set), cfg.optim.batch_size
        flash = None
        if cfg.objective.flash:
            from model_core.schedulers import SIGMA_MAX
            engine = cfg.model.engine
            flash = (engine.get("flash_video_sigma", SIGMA_MAX), engine.get("flash_action_sigma", SIGMA_MAX))
        sums = np.zeros(4)  # |err| normalised, count, |err| robot units, val loss
        was_training = self.dit.training
        self.dit.eval()
        real = self.data.normalizer.action.size
        forward = self.wrapped if self.env.strategy == "fsdp" else self.module  # FSDP: its hooks gather the weights
        for b in range(cfg.schedule.val_batches):
            first = (b * env.world + env.rank) * bs
            items = [self.val_set[(first + j) % n] for j in range(bs)]
            batch = _to_device(torch.utils.data.default_collate(items), self.device)
            seed = step_seed(cfg.run.seed + 1, b, env.rank)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                pred = forward.rollout(batch, cfg.schedule.val_sampling_steps, seed, flash)
                loss, _, _ = forward(batch, self.objective.draw(batch, seed))
            pred, gt = pred.float()[..., :real], batch["actions"].float()[..., :real]
            sums[0] += (pred - gt).abs().sum().item()
            sums[1] += gt.numel()
            unnorm = self.data.normalizer.action.unnormalize
            pred_u = unnorm(pred.cpu().numpy().reshape(-1, real))
            gt_u = unnorm(gt.cpu().numpy().reshape(-1, real))
            sums[2] += float(np.abs(pred_u - gt_u).sum())
            sums[3] += loss.item()
        rest = [i for i, ref in enumerate(self.val_set.refs) if ref.start == 0][:bs]  # the same on every rank
        from_rest = {}
        if rest:
            batch = _to_device(torch.utils.data.default_collate([self.val_set[i] for i in rest]), self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                pred = forward.rollout(batch, cfg.schedule.val_sampling_steps, step_seed(cfg.run.seed + 2, 0), flash)
            T = self.dit.cfg.num_action_per_block
            error = (pred.float()[..., :real] - batch["actions"].float()[..., :real]).abs()  # [B, nb*T, A]
            for k, chunk in enumerate(error.split(T, dim=1)):
                from_rest["action_mae_from_rest" + (f"_chunk{k + 1}" if k else "")] = chunk.mean().item()
        self.dit.train(was_training)
        total = _all_sum(sums.tolist(), env, self.device)
        batches = cfg.schedule.val_batches * env.world
        return {"action_mae": total[0] / total[1], "action_mae_units": total[2] / total[1], "loss": total[3] / batches,
                **from_rest}

    # -- checkpoints ------------------------------------------------------------------------------------------

    def full_state_dict(self, everywhere: bool = False) -> dict[str, torch.Tensor] | None:
        """The DiT's full state dict (CPU tensors, bare names) on rank 0, or on every rank with `everywhere`;
        None on the other ranks. Collective under FSDP (every rank must call it)."""
        wanted = everywhere or self.env.main
        if self.env.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
            full = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True,
                                                                              cpu_offload=not everywhere))
            return {k.removeprefix("dit."): v.detach().cpu() for k, v in full.items()} if wanted else None
        return {k: v.detach().cpu() for k, v in self.dit.state_dict().items()} if wanted else None

    def _optimizer_state(self) -> dict | None:
        if self.env.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
            full = get_optimizer_state_dict(self.wrapped, self.optimizer,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            return full if self.env.main else None
        return self.optimizer.state_dict() if self.env.main else None

    def export_model(self, state: dict[str, torch.Tensor]) -> CausalWanModel:
        """A CPU DiT (LoRA-wrapped like the trained one) holding `state`: what save_bundle writes."""
        with torch.device("meta"):
            model = CausalWanModel(self.dit.cfg)
        if self.lora_targets is not None:
            lcfg = self.cfg.objective.lora
            apply_lora(model, lcfg.rank, lcfg.alpha, lcfg.targets)
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()

    def save(self, step: int, directory: Path) -> Path:
        """Write a runtime checkpoint + training state; collective (every rank calls it)."""
        env = self.env
        state, optim_state = self.full_state_dict(), self._optimizer_state()
        if env.main:
            tmp = directory.with_name(directory.name + ".partial")
            if tmp.exists():
                shutil.rmtree(tmp)
            self._write_checkpoint(tmp, self.export_model(state), step, optim_state)
            if directory.exists():
                shutil.rmtree(directory)
            tmp.rename(directory)
            self._prune()
            log.info("checkpoint: %s", directory)
        env.barrier()
        return directory

    def _write_checkpoint(self, directory: Path, model: CausalWanModel, step: int, optim_state: dict) -> None:
        cfg = self.cfg
        engine = dict(cfg.model.engine)
        if cfg.objective.flash:
            engine.setdefault("flash", True)
        metadata = self.data.metadata()
        specs = [v for v in self.section.get("encoders", {}).values() if isinstance(v, dict)]
        lora = self.lora_targets is not None
        if cfg.model.encoders == "tiny" or (specs and all(v.get("tiny") for v in specs)):
            # tiny encoders are small: copy them in, the checkpoint is self-contained
            save_bundle(directory, model, self.encoders.vae, self.encoders.text, self.encoders.image,
                        self.video_hw, metadata=metadata, engine=engine,
                        prefix=RELEASE_LORA_PREFIX if lora else PLAIN_PREFIX)
        else:
            section = _merge(self.section, {"video_hw": list(self.video_hw), "engine": engine})
            root = Path(cfg.model.init_from).resolve() if cfg.model.init_from else Path.cwd()
            for spec in section.get("encoders", {}).values():  # reference the original files, never copy them
                for key in ("path", "tokenizer"):
                    if isinstance(spec, dict) and spec.get(key) and not Path(spec[key]).expanduser().is_absolute():
                        spec[key] = str((root / spec[key]).resolve())
            if self.encoders.image is None:
                section.get("encoders", {}).pop("image_encoder", None)
            save_checkpoint(model, directory, metadata=metadata, extra_config={SECTION: section},
                            prefix=RELEASE_LORA_PREFIX if lora else PLAIN_PREFIX)
        extra = {"model_name": f"dreamzero-{cfg.objective.mode}-{self.embodiment.name}-step{step}",
                 "dreamzero_training": {"step": step, "base": self.base_name, "mode": cfg.objective.mode,
                                        "flash": cfg.objective.flash, "embodiment": self.embodiment.name}}
        config_file = directory / "config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **extra}, indent=1))
        if lora:
            lcfg = cfg.objective.lora
            (directory / "adapter_config.json").write_text(
                json.dumps(adapter_config(lcfg.rank, lcfg.alpha, lcfg.targets), indent=1))
        (directory / "experiment_cfg").mkdir(exist_ok=True)
        (directory / "experiment_cfg" / "conf.yaml").write_text(
            yaml.safe_dump(json.loads(self.cfg.model_dump_json()), sort_keys=False))
        torch.save({"step": step, "optimizer": optim_state, "trainable": self.trainable, "world_size": self.env.world,
                    "seed": cfg.run.seed}, directory / STATE_FILE)

    def _prune(self) -> None:
        steps = sorted((self.output_dir / "checkpoints").glob("step_*"))
        for old in steps[:-self.cfg.schedule.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    def close(self) -> None:
        self.env.close()


def _state_step(path: Path) -> int:
    try:
        return int(torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)["step"])
    except Exception:
        return -1


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def _load_embodiment(name: str):
    from dreamzero_policy.embodiment import load_embodiment
    from dreamzero_policy.errors import DreamZeroError
    try:
        return load_embodiment(name)
    except DreamZeroError as err:
        raise TrainConfigError(f"embodiment: {err}") from err


def run(cfg: TrainConfig) -> TrainResult:
    trainer = Trainer(cfg)
    try:
        return trainer.train()
    finally:
        trainer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dreamzero-train", description="Train / fine-tune a DreamZero model.")
    parser.add_argument("--config", required=True, help="training YAML (see config/train/)")
    parser.add_argument("--resume", default=None, help="'auto' or a checkpoint folder (overrides schedule.resume)")
    parser.add_argument("--max-steps", type=int, default=None, help="override schedule.max_steps")
    parser.add_argument("--output-dir", default=None, help="override run.output_dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        cfg = load_config(args.config)
        updates = {}
        if args.resume is not None:
            updates["schedule"] = cfg.schedule.model_copy(update={"resume": args.resume})
        if args.max_steps is not None:
            sched = updates.get("schedule", cfg.schedule)
            updates["schedule"] = sched.model_copy(update={"max_steps": args.max_steps})
        if args.output_dir is not None:
            updates["run"] = cfg.run.model_copy(update={"output_dir": args.output_dir})
        if updates:
            from model_core.training.config import parse_config
            cfg = parse_config(json.loads(cfg.model_copy(update=updates).model_dump_json()), source=args.config)
        result = run(cfg)
    except (TrainConfigError, DatasetError, ModelCoreError) as err:
        print(f"dreamzero-train: error: {err}", file=sys.stderr)
        return 2
    if result.checkpoint is not None and (int(os.environ.get("RANK", "0")) == 0):
        print(json.dumps({"checkpoint": str(result.checkpoint), "step": result.step}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
