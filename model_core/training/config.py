"""The training config: one YAML file, every field validated at load (pydantic), errors name the field.

    dreamzero-train --config config/train/tiny_reach.yaml

Top-level sections: `run` (output, seed, device, precision), `model` (preset or checkpoint to start from, encoders,
frame size), `embodiment` (name or YAML path: the runtime's embodiment config), `dataset` (LeRobot root, feature
mapping, sample construction, validation split), `objective` (LoRA / full, noise levels, Flash, loss weights),
`optim` (AdamW, warmup + cosine, clipping, batch), `schedule` (steps, logging, checkpoints, validation, resume) and
`distributed` (DDP / FSDP under torchrun). Relative paths resolve against the config file's folder.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from model_core.training.errors import TrainConfigError

LORA_TARGETS = ("q", "k", "v", "o", "ffn.0", "ffn.2")  # the release's target_modules (PEFT suffix match)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunConfig(_Section):
    output_dir: str = Field(description="checkpoints, TensorBoard logs and the encoder cache go here")
    seed: int = Field(0, ge=0, description="model init, sample order and noise (rank r adds r)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available")
    precision: Literal["fp32", "bf16"] = Field("bf16", description="bf16: autocast on GPU (fp32 master weights); "
                                                                  "CPU always runs fp32")
    progress: bool = Field(True, description="tqdm progress bar on rank 0")


class ModelConfig(_Section):
    preset: str | None = Field("tiny", description="model_core.config preset for a fresh, randomly initialised DiT")
    init_from: str | None = Field(None, description="checkpoint directory to fine-tune (DiT + encoders section); "
                                                    "overrides `preset`")
    encoders: Literal["tiny", "checkpoint"] = Field(
        "tiny", description="tiny: the tiny random encoders of model_core.factory (tests, the demo); checkpoint: "
                            "the encoders named by init_from's dreamzero_policy section / encoder_overrides")
    encoder_overrides: dict[str, Any] = Field(default_factory=dict, description=(
        "merged into the checkpoint's dreamzero_policy section, as build_engine's overrides (e.g. "
        "{encoders: {vae: {path: Wan2.1_VAE.pth}, ...}, video_hw: [352, 640]})"))
    video_hw: tuple[int, int] | None = Field(None, description="model frame size (tiled views); default: the "
                                                               "checkpoint's, or 64x128 for tiny/small")
    view_hw: tuple[int, int] | None = Field(None, description="per-view size before tiling (5B style); default: "
                                                              "an exact fit of the layout")
    engine: dict[str, Any] = Field(default_factory=dict, description="EngineConfig overrides written into the "
                                                                     "checkpoint (e.g. num_steps, flash)")
    init_seed: int = Field(0, ge=0, description="seed of the random DiT / tiny encoders / `reinit` modules")
    reinit: list[str] = Field(default_factory=list, description=(
        "DiT submodules of init_from to initialise afresh (seeded by init_seed), e.g. [text_embedding] after "
        "swapping the text encoder for one whose embeddings the old projection was not trained on"))
    gradient_checkpointing: bool = Field(False, description="recompute each DiT block in backward (big presets)")
    max_chunk_size: int | None = Field(None, ge=1, description=(
        "blocks the runtime attends to before it resets (the DiT's attention window, written into the checkpoint); "
        "default: the preset's or init_from's. 1: every chunk is decided afresh from the current frame"))

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.preset is None and self.init_from is None:
            raise ValueError("give model.preset (fresh model) or model.init_from (checkpoint to fine-tune)")
        if self.reinit and self.init_from is None:
            raise ValueError("reinit: only with model.init_from (a fresh preset is initialised throughout)")
        if self.encoders == "checkpoint" and self.init_from is None and not self.encoder_overrides:
            raise ValueError("encoders 'checkpoint' needs model.init_from or model.encoder_overrides")
        for name in ("video_hw", "view_hw"):
            hw = getattr(self, name)
            if hw is not None and min(hw) < 1:
                raise ValueError(f"{name} must be two positive sizes, got {list(hw)}")
        return self


class DatasetConfig(_Section):
    root: str = Field(description="LeRobot dataset folder (v2.1 or v3.0)")
    state_features: dict[str, str] = Field(default_factory=dict, description=(
        "embodiment state key -> dataset feature, optionally sliced: 'observation.state[0:7]'; default "
        "'observation.state.<key>'"))
    action_features: dict[str, str] = Field(default_factory=dict, description=(
        "embodiment action key -> dataset feature; default 'action.<key>'"))
    camera_features: dict[str, str] = Field(default_factory=dict, description=(
        "embodiment camera -> dataset video feature; default 'observation.images.<camera>'"))
    gripper_units: Literal["model", "joint"] = Field("model", description=(
        "model: gripper columns already in [0, 1] (0 open, 1 closed; DROID, the sim); joint: joint units, mapped "
        "with the embodiment's open/closed values"))
    instruction: str = Field("task", description="'task' (the LeRobot task of each frame) or a string feature")
    episodes: list[int] | None = Field(None, description="use only these episode indices (default: all)")
    num_chunks: int = Field(4, ge=1, description="action chunks per sample (release: 4 -> 1 + 4*8 = 33 frames)")
    sample_stride: int = Field(1, ge=1, description="control steps between consecutive sample starts")
    pad_episode_end: bool = Field(False, description=(
        "allow samples that run past the episode end (the last frame, state and action are repeated: the robot "
        "holds still); a sample always holds at least one whole chunk of real actions"))
    val_episodes: list[int] = Field(default_factory=list, description="held-out episode indices for validation")
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="or: hold out this fraction (last episodes)")
    cache_dir: str | None = Field(None, description="encoder cache (default <output_dir>/cache)")

    @field_validator("state_features", "action_features", "camera_features")
    @classmethod
    def _non_empty(cls, v: dict[str, str]) -> dict[str, str]:
        for key, feature in v.items():
            if not feature.strip():
                raise ValueError(f"feature for {key!r} is empty")
        return v

    @model_validator(mode="after")
    def _check(self) -> DatasetConfig:
        if self.val_episodes and self.val_fraction:
            raise ValueError("give val_episodes or val_fraction, not both")
        if self.episodes is not None and not self.episodes:
            raise ValueError("episodes: an empty list selects nothing (omit it to use all episodes)")
        return self


class LoraConfig(_Section):
    rank: int = Field(4, ge=1, description="release default r = 4")
    alpha: float = Field(4.0, gt=0, description="merged weight = W + (alpha / rank) B A; release alpha = 4")
    targets: tuple[str, ...] = Field(LORA_TARGETS, min_length=1, description=(
        "module-name suffixes inside the DiT blocks (PEFT matching: self- and cross-attention q/k/v/o, ffn.0/2)"))
    train_registers: bool = Field(True, description="also fully train the state/action encoders and the action "
                                                    "decoder (release default)")


class ObjectiveConfig(_Section):
    mode: Literal["lora", "full"] = Field("lora", description="LoRA adapters (release default) or full fine-tune")
    lora: LoraConfig = LoraConfig()
    shift: float = Field(5.0, gt=0, description="training noise-level shift (release 5)")
    video_loss_weight: float = Field(1.0, ge=0)
    action_loss_weight: float = Field(1.0, ge=0)
    decouple_action_noise: bool = Field(False, description="draw the actions' noise level independently of their "
                                                           "video block's")
    flash: bool = Field(False, description=(
        "DreamZero-Flash: video levels from Beta(a, b) on sigma (biased to high noise), action levels uniform, "
        "decoupled; for 1-step inference (engine flash: true)"))
    flash_beta: tuple[float, float] = Field((7.0, 1.0), description="Beta(a, b) of the Flash video noise level")
    first_frame_loss: bool = Field(True, description="include latent frame 0 (denoised alone) in the video loss")
    condition_on_image: bool = Field(True, description="CLIP features of the first frame as context (when the "
                                                       "model has an image encoder)")

    @field_validator("flash_beta")
    @classmethod
    def _beta(cls, v: tuple[float, float]) -> tuple[float, float]:
        if min(v) <= 0:
            raise ValueError(f"Beta parameters must be > 0, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _check(self) -> ObjectiveConfig:
        if self.video_loss_weight == 0 and self.action_loss_weight == 0:
            raise ValueError("video_loss_weight and action_loss_weight are both 0: nothing to train")
        return self


class OptimConfig(_Section):
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = Field((0.95, 0.999), description="release (DROID) AdamW betas")
    weight_decay: float = Field(1e-5, ge=0)
    eps: float = Field(1e-8, gt=0)
    warmup_steps: int = Field(0, ge=0, description="linear warmup from 0")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine decay floor, as a fraction of lr")
    grad_clip: float | None = Field(1.0, description="max global gradient norm (null: no clipping)")
    batch_size: int = Field(1, ge=1, description="samples per rank per micro-step")
    grad_accum: int = Field(1, ge=1, description="micro-steps per optimizer step")

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"betas must be in [0, 1), got {list(v)}")
        return v

    @field_validator("grad_clip")
    @classmethod
    def _clip(cls, v: float | None) -> float | None:
        if v is not None and not v > 0:
            raise ValueError(f"grad_clip must be > 0 or null, got {v}")
        return v


class ScheduleConfig(_Section):
    max_steps: int = Field(ge=1, description="optimizer steps in total")
    log_every: int = Field(10, ge=1)
    save_every: int = Field(1000, ge=1, description="checkpoint period (the last step is always saved)")
    keep_last: int = Field(2, ge=1, description="step checkpoints kept (the final one always)")
    val_every: int = Field(500, ge=1, description="validation period in steps (needs held-out episodes)")
    val_batches: int = Field(4, ge=1, description="batches per rank per validation")
    val_sampling_steps: int = Field(4, ge=1, description="Euler steps of the validation rollout (Flash: 1)")
    resume: str | None = Field(None, description="'auto' (latest checkpoint in output_dir) or a checkpoint folder")
    num_workers: int = Field(0, ge=0, description="DataLoader workers")


class DistributedConfig(_Section):
    strategy: Literal["auto", "none", "ddp", "fsdp"] = Field(
        "auto", description="auto: DDP when launched by torchrun with WORLD_SIZE > 1")
    backend: Literal["auto", "nccl", "gloo"] = Field("auto", description="auto: nccl on CUDA, gloo on CPU")


class TrainConfig(_Section):
    run: RunConfig
    model: ModelConfig = ModelConfig()
    embodiment: str = Field(description="embodiment name (config/embodiments) or YAML path")
    dataset: DatasetConfig
    objective: ObjectiveConfig = ObjectiveConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig
    distributed: DistributedConfig = DistributedConfig()

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.optim.warmup_steps >= self.schedule.max_steps and self.optim.warmup_steps > 0:
            raise ValueError(f"optim.warmup_steps ({self.optim.warmup_steps}) must be < schedule.max_steps "
                             f"({self.schedule.max_steps})")
        return self

    @property
    def output_dir(self) -> Path:
        return Path(self.run.output_dir)

    @property
    def cache_dir(self) -> Path:
        return Path(self.dataset.cache_dir) if self.dataset.cache_dir else self.output_dir / "cache"


def lr_factor(step: int, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    """Linear warmup to 1 over warmup_steps, then cosine decay to min_ratio at max_steps. step counts from 0."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


_PATH_FIELDS = (("run", "output_dir"), ("model", "init_from"), ("dataset", "root"), ("dataset", "cache_dir"),
                ("schedule", "resume"), ("embodiment",))


def _resolve_paths(data: dict, base: Path) -> dict:
    """Relative paths in the YAML resolve against the config file's folder (embodiment: only a *.yaml path; encoder
    files of model.encoder_overrides: only without model.init_from, whose files resolve against the checkpoint)."""
    for path in _PATH_FIELDS:
        node = data
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict) or not isinstance(node.get(path[-1]), str):
            continue
        value = node[path[-1]]
        if path == ("schedule", "resume") and value == "auto":
            continue
        if path == ("embodiment",) and not value.endswith((".yaml", ".yml")):
            continue
        node[path[-1]] = _against(base, value)
    model = data.get("model")
    if isinstance(model, dict) and not model.get("init_from"):  # with init_from they are relative to the checkpoint
        encoders = (model.get("encoder_overrides") or {}).get("encoders")
        for spec in (encoders.values() if isinstance(encoders, dict) else ()):
            for key in ("path", "tokenizer"):
                if isinstance(spec, dict) and isinstance(spec.get(key), str):
                    spec[key] = _against(base, spec[key])
    return data


def _against(base: Path, value: str) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def parse_config(data: Any, source: str = "train config", base_dir: str | Path | None = None) -> TrainConfig:
    """Validate a parsed YAML mapping; the first problem raises TrainConfigError naming the field path."""
    if not isinstance(data, dict):
        raise TrainConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    if base_dir is not None:
        data = _resolve_paths(_deep_copy(data), Path(base_dir))
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise _config_error(err, source) from None


def load_config(path: str | Path) -> TrainConfig:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise TrainConfigError(f"train config {str(path)!r}: cannot read ({err.strerror})") from err
    except yaml.YAMLError as err:
        raise TrainConfigError(f"train config {path.name}: invalid YAML ({err})".replace("\n", " ")) from err
    return parse_config(data, source=path.name, base_dir=path.resolve().parent)


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def _config_error(error: ValidationError, source: str) -> TrainConfigError:
    problems = error.errors(include_url=False)
    first = problems[0]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "missing":
        rule, value = "required field", "nothing"
    elif first["type"] == "extra_forbidden":
        rule, value = "unknown field (not in the schema)", repr(first.get("input"))
    else:
        rule, value = first["msg"].removeprefix("Value error, "), repr(first.get("input"))
        if isinstance(first.get("input"), dict):  # a model-level check: the message names the fields itself
            value = None
    more = f" ({len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    got = "" if value is None else f", got {value}"
    return TrainConfigError(f"{source}: {field}: {rule}{got}{more}")
