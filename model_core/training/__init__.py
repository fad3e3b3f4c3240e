"""Training of DreamZero world-action models: LeRobot datasets -> cached latents -> teacher-forcing flow matching.

The paper's training recipe (DreamZero, arXiv 2602.15922, "Training"; MODEL_SPEC.md section 8) on the shared model
core, writing checkpoints the runtime loads with no conversion:

    lerobot.py   LeRobot v2.1 / v3.0 readers (parquet + PyAV-decoded videos), one clear error per bad input
    data.py      DreamZero samples: 1 + nb chunks of actions, frames at the model's video rate, views tiled and
                 states/actions normalised with the runtime's own transforms (dreamzero_policy.transforms);
                 q01/q99 statistics -> experiment_cfg/metadata.json
    cache.py     frozen encoders (VAE, umT5, CLIP) run once over the dataset; latents cached on disk
    lora.py      LoRA adapters with the release's (PEFT) key names, merged by model_core.checkpoint on load
    objective.py one teacher-forcing pass over the block-causal mask, flow-matching targets, the release's weights,
                 DreamZero-Flash noise levels
    train.py     the trainer (`dreamzero-train --config FILE`): AdamW + warmup/cosine, clipping, bf16 autocast,
                 DDP / FSDP under torchrun, checkpoints, resume, TensorBoard, validation action MAE
    average.py   the mean of a run's last checkpoints (`dreamzero-average-checkpoints`), a checkpoint like any other
    config.py    the YAML schema (pydantic; every field validated, errors name the field)

Dependency note: unlike the rest of model_core, this subpackage imports `dreamzero_policy.transforms` and
`dreamzero_policy.embodiment` (pure numpy/cv2/pydantic modules, no ROS): training must build normalisation and tiling
from the same code and config as the runtime (docs/ARCHITECTURE.md, "Shared transforms").
"""
