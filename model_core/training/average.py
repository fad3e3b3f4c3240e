"""Checkpoint averaging: the mean of a run's last checkpoints, a checkpoint the runtime loads like any other.

    dreamzero-average-checkpoints --out runs/avg runs/x/checkpoints/step_* runs/x/final

Averaging the weights of checkpoints taken along one run's low-learning-rate tail (Polyak averaging, as in SWA and
in machine translation's `average_checkpoints`) smooths the noise of the last optimizer steps. The sources must
share the DiT config and the normalisation statistics (experiment_cfg/metadata.json): one error names what differs.

LoRA checkpoints are averaged after merging (W + (alpha / r) B A, as `load_checkpoint` does): the mean of the
adapters is not the adapter of the means, so the result is a full checkpoint without adapter_config.json. The side
files (config.json, encoders/, experiment_cfg/, ...) come from the last source, minus its optimizer state; config.json
records the sources under `dreamzero_training.averaged_from`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from model_core.checkpoint import INDEX_FILE, PLAIN_PREFIX, STATE_FILE, load_checkpoint, write_tensors
from model_core.errors import CheckpointError

# not carried over: the optimizer state, the LoRA config (merged here), the source's shard index
NOT_COPIED = (STATE_FILE, "adapter_config.json", INDEX_FILE)


def average_checkpoints(sources: list[str | Path], out: str | Path, max_shard_bytes: int | None = None,
                        progress: bool = True) -> Path:
    """Write the element-wise mean of `sources`' DiT weights (float32 sums, stored dtype) to directory `out`."""
    sources = [Path(s) for s in sources]
    out = Path(out)
    if len(sources) < 2:
        raise CheckpointError(f"averaging needs at least two checkpoints, got {len(sources)}")
    if out.resolve() in {s.resolve() for s in sources}:
        raise CheckpointError(f"--out {out} is one of the sources; write the average elsewhere")
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"--out {out} exists and is not empty; nothing is overwritten")
    first = load_checkpoint(sources[0])
    sums = {k: v.float().clone() for k, v in first.state_dict.items()}
    dtypes = {k: v.dtype for k, v in first.state_dict.items()}
    for src in tqdm(sources[1:], desc="averaging", unit="ckpt", disable=not progress):
        ckpt = load_checkpoint(src)
        if ckpt.config != first.config:
            raise CheckpointError(f"{src}: DiT config differs from {sources[0]}'s "
                                  f"({_config_diff(first.config.to_dict(), ckpt.config.to_dict())})")
        if ckpt.metadata != first.metadata:
            raise CheckpointError(f"{src}: experiment_cfg/metadata.json (normalisation statistics) differs from "
                                  f"{sources[0]}'s; checkpoints of different datasets cannot be averaged")
        for key, value in ckpt.state_dict.items():
            if not value.is_floating_point() and not torch.equal(value, first.state_dict[key]):
                raise CheckpointError(f"{src}: non-float tensor {key} differs from {sources[0]}'s")
            sums[key] += value.float()
    mean = {PLAIN_PREFIX + k: (v / len(sources)).to(dtypes[k]).contiguous() for k, v in sums.items()}

    _copy_side_files(sources[-1], out)
    write_tensors(mean, out, max_shard_bytes)
    config_file = out / "config.json"
    config = json.loads(config_file.read_text())
    config.setdefault("dreamzero_training", {})["averaged_from"] = [str(s) for s in sources]
    config_file.write_text(json.dumps(config, indent=1))
    return out


def _copy_side_files(source: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.name in NOT_COPIED or entry.suffix == ".safetensors":
            continue
        if entry.is_dir():
            shutil.copytree(entry, out / entry.name, dirs_exist_ok=True)
        else:
            shutil.copy2(entry, out / entry.name)


def _config_diff(a: dict, b: dict) -> str:
    return ", ".join(f"{k}: {a.get(k)} vs {b.get(k)}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dreamzero-average-checkpoints", description=__doc__.split("\n")[0])
    parser.add_argument("sources", nargs="+", help="checkpoint directories of one run (at least two)")
    parser.add_argument("--out", required=True, help="directory of the averaged checkpoint")
    parser.add_argument("--max-shard-bytes", type=int, default=None, help="shard the weights (default: one file)")
    args = parser.parse_args(argv)
    try:
        out = average_checkpoints(args.sources, args.out, args.max_shard_bytes)
    except CheckpointError as err:
        print(f"dreamzero-average-checkpoints: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"checkpoint": str(out), "averaged": len(args.sources)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
