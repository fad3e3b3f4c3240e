"""Run by tests/training/test_train_distributed.py under torchrun (never collected by pytest).

    python -m torch.distributed.run --nproc_per_node 2 tests/training/ddp_worker.py CONFIG.yaml OUT_DIR

Trains with the config's strategy, then every rank writes what it holds: rank<r>.safetensors with its DiT weights
(DDP: the local replica; FSDP: the gathered full weights, identical on every rank by construction) and
rank<r>.json with the first batch's sample indices and the number of weights that changed.
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from model_core.training.config import load_config
from model_core.training.train import Trainer


def main() -> None:
    cfg_path, out = Path(sys.argv[1]), Path(sys.argv[2])
    trainer = Trainer(load_config(cfg_path))
    initial = {k: v.detach().clone() for k, v in trainer.full_state_dict(everywhere=True).items()}
    trainer.train()
    final = trainer.full_state_dict(everywhere=True)
    rank = dist.get_rank()
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in final.items()}, str(out / f"rank{rank}.safetensors"))
    sampler_first = [int(i) for i in trainer_sample_indices(trainer)]
    changed = sum(not torch.equal(initial[k], final[k]) for k in final)
    (out / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "world": dist.get_world_size(),
                                                      "first_batch": sampler_first, "changed": changed,
                                                      "strategy": trainer.env.strategy}))
    trainer.close()


def trainer_sample_indices(trainer: Trainer) -> list[int]:
    from model_core.training.train import StepBatches
    cfg, env = trainer.cfg, trainer.env
    return StepBatches(len(trainer.train_set), cfg.optim.batch_size, cfg.optim.grad_accum, env.rank, env.world,
                       cfg.run.seed, 0, 1).indices(0, 0)


if __name__ == "__main__":
    main()
