"""A model-backed sim Policy that runs the policy node's own runtime in process, on the sim's clock.

    python -m sim.policy --checkpoint sim/assets/tiny_reach --episodes 50 --seed 10000 --out /tmp/eval_flash
    python -m sim.policy --checkpoint sim/assets/tiny_reach --no-flash --num-steps 16 --out /tmp/eval_unipc16

`RuntimePolicy` is a `sim.rollout.Policy` (and `FrameObserver`) for fast, deterministic closed-loop evaluation with
`sim.evaluate.evaluate`. It is not a second implementation of the policy: it wires the same stages the node wires
(dreamzero_policy.node.PolicyNode._build_runtime), only without a middleware in between:

    SimObservation --observation.joint_observation / CameraFrame--> BlockBuffer (sampled at the model's video rate,
        5 fps: one block of 8 frames per 24-action chunk) --> Session.run_once (normalise state, engine.step with the
        KV cache, decode_chunk) --> Commander.submit (ChunkBroker splice + SafetyFilter) --> the SafeCommand
        --> a [T, 8] chunk for the sim (7 absolute arm targets + gripper in [0, 1])

Time is the sim's: every stamp is `EPOCH_NS + env.now_ns`, and the Commander's clock is the stamp of the observation
the policy acts on. The sim does not advance while the model runs (sim.rollout.run_episode), so the measured
inference delay is 0 and the chunk is executed from its first action, as the model was trained. Frames arrive
through `observe` every 3 control steps (run_episode's frame_every), so the block buffer sees exactly the 5 fps
frames and joint states a training sample holds; observations need images (`evaluate(..., render=True)`).

Differences from the node, on purpose: no worker thread (run_once is called from `act`, which the runtime allows
with the worker stopped), no staleness from wall-clock time, no control tick (run_episode executes whole chunks).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sim import robot
from sim.env import FrankaSimEnv, SimObservation
from sim.rollout import CHUNK_LEN, Policy

EPOCH_NS = 1_000_000_000  # sim stamps start here (never 0: a zero stamp reads as "unset" in ROS messages)
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "tiny_reach"


def checkpoint_embodiment(checkpoint: str | Path) -> str:
    """The embodiment a checkpoint was trained with: its own `embodiment.yaml` when it ships one (the bundled tiny
    policy does: franka_droid with the instruction first in the prompt), else franka_droid."""
    path = Path(checkpoint) / "embodiment.yaml"
    return str(path) if path.is_file() else "franka_droid"


class RuntimePolicy:
    """The node's runtime stages driven by the in-process sim (see the module docstring).

    checkpoint: a DreamZero checkpoint directory (e.g. sim/assets/tiny_reach).
    embodiment: name or YAML path; default `checkpoint_embodiment(checkpoint)`.
    params: node parameters (dreamzero_policy.params names: num_steps, flash, cfg_scale, crossfade_steps, device,
        backend, block_lead_ms, ...), validated and applied exactly as the node does.
    engine_overrides: EngineConfig fields applied on top (e.g. {"flash": False, "num_steps": 16} to sample a
        Flash-trained checkpoint with UniPC, which the node's `flash` parameter cannot switch off).
    """

    def __init__(self, checkpoint: str | Path, embodiment: str | None = None, params: dict[str, Any] | None = None,
                 engine_overrides: dict[str, Any] | None = None, warmup: bool = True,
                 logger: logging.Logger | None = None):
        from dataclasses import replace

        from dreamzero_policy import params as node_params
        from dreamzero_policy.block_buffer import BlockBuffer, block_video_fps
        from dreamzero_policy.embodiment import load_embodiment
        from dreamzero_policy.execution import ChunkBroker
        from dreamzero_policy.safety import SafetyFilter
        from dreamzero_policy.session import Commander, LatencyStats, Session, load_model, warm_up

        embodiment = embodiment or checkpoint_embodiment(checkpoint)
        values = {"device": "cpu", "block_lead_ms": 0.0, **(params or {}), "checkpoint": str(checkpoint),
                  "embodiment": embodiment, "middleware": "dds", "warmup": warmup}
        config = node_params.to_config(node_params.validate(values))
        if engine_overrides:
            config = replace(config, engine_overrides={**config.engine_overrides, **engine_overrides})
        self.config = config
        self.log = logger or logging.getLogger("sim.policy")
        emb = node_params.apply_overrides(load_embodiment(config.embodiment), config)
        self.embodiment = emb
        self.model = load_model(config, emb)
        if config.warmup:
            warm_up(self.model)
        self.latency = LatencyStats()
        fpb = self.model.frames_per_block
        self.buffer = BlockBuffer(emb, self.model.video, fpb, fps=block_video_fps(emb, fpb, config.block_lead_ms))
        self.safety = SafetyFilter(emb, log_period_s=config.log_period_s, logger=self.log)
        self.session = Session(self.model, self.buffer, latency=self.latency, logger=self.log,
                               log_period_s=config.log_period_s)
        self._sent: list = []
        self._latest = None  # JointObservation
        self._stamps: dict[str, int] = {}
        self._now_ns = EPOCH_NS
        self.commander = Commander(emb, ChunkBroker(emb.dt_ns, config.crossfade_steps), self.safety,
                                   current=lambda: self._latest, stream_stamps=lambda: dict(self._stamps),
                                   send=lambda cmd, current: self._sent.append(cmd), now_ns=lambda: self._now_ns,
                                   latency=self.latency, logger=self.log, log_period_s=config.log_period_s)
        self.cameras = [c.name for c in emb.cameras]
        self.chunks: list = []  # ChunkResult of every model call (the node's ActionChunk contents)
        self.holds = 0
        self._last_stamp: int | None = None

    @property
    def engine_config(self):
        return self.model.engine.config

    # --- Policy ---
    def reset(self, instruction: str) -> None:
        """A new episode: the node's instruction + reset path (the block buffer forgets everything, the next block is
        one initial frame and the engine re-prefills its caches)."""
        self.session.set_instruction(instruction, force_reset=True)
        self.commander.enable()  # clears the chunk broker
        self._latest, self._stamps, self._last_stamp, self._sent = None, {}, None, []

    def observe(self, obs: SimObservation) -> None:
        """One observation (images + joint states at one stamp) into the block buffer, as the node's callbacks do."""
        from dreamzero_policy.observation import JOINT_STATES, CameraFrame, joint_observation

        stamp = EPOCH_NS + obs.stamp_ns
        if self._last_stamp is not None and stamp <= self._last_stamp:
            return
        if not obs.images:
            raise ValueError("RuntimePolicy needs observations with images: evaluate with render=True")
        self._last_stamp = stamp
        for camera in self.cameras:
            frame = CameraFrame(camera, stamp, obs.images[camera])
            self.buffer.add_frame(frame)
            self._stamps[camera] = stamp
        joints = joint_observation(list(obs.joint_names), obs.joint_positions, obs.joint_velocities, stamp,
                                   self.embodiment)
        self.buffer.add_joints(joints)
        self._stamps[JOINT_STATES], self._latest = stamp, joints

    def act(self, obs: SimObservation) -> np.ndarray:
        """The next chunk [24, 8]: the session's chunk after execution and safety, or a hold at the current state."""
        self.observe(obs)  # a no-op when run_episode already gave this frame to observe()
        self._now_ns = EPOCH_NS + obs.stamp_ns
        self._sent = []
        result = self.session.run_once(timeout_s=0.0)
        if result is not None:
            self.chunks.append(result)
            self.commander.submit(result.chunk)
        else:
            self.commander.hold("no block")
        cmd = self._sent[-1] if self._sent else None
        if cmd is None or cmd.held:
            self.holds += 1
            return self._hold(obs)
        positions = cmd.positions  # [M, 7]
        gripper = robot.finger_to_gripper(cmd.gripper[:, 0]) if cmd.gripper is not None \
            else np.full(len(positions), obs.state[7])
        chunk = np.concatenate([positions, gripper[:, None]], axis=1)  # [M, 8]
        if len(chunk) < CHUNK_LEN:  # only after a measured delay (never in the synchronous loop): hold the last one
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], CHUNK_LEN - len(chunk), axis=0)])
        return chunk

    @staticmethod
    def _hold(obs: SimObservation) -> np.ndarray:
        return np.repeat(obs.state[None], CHUNK_LEN, axis=0)

    def stats(self) -> dict[str, Any]:
        """Counters of the runtime stages (session, safety, block buffer, commander) and latency per stage (ms)."""
        return {"session": self.session.stats(), "safety": self.safety.counters(), "block_buffer": self.buffer.stats(),
                "commander": self.commander.counters(), "holds": self.holds,
                "latency_ms": {k: round(v[0] * 1e3, 2) for k, v in self.latency.summary().items()}}


def model_policies(checkpoint: str | Path, **kwargs) -> Callable[[FrankaSimEnv, int], Policy]:
    """A `policy_for` for sim.evaluate.evaluate: one RuntimePolicy (one model load) shared by every episode."""
    policy: list[RuntimePolicy] = []

    def policy_for(env: FrankaSimEnv, index: int) -> Policy:
        if not policy:
            policy.append(RuntimePolicy(checkpoint, **kwargs))
        return policy[0]
    policy_for.policies = policy  # type: ignore[attr-defined]
    return policy_for


def evaluate_checkpoint(checkpoint: str | Path, seeds, *, task: str = "reach", image_hw=(90, 160),
                        embodiment: str | None = None, params: dict[str, Any] | None = None,
                        engine_overrides: dict[str, Any] | None = None,
                        video: str = "none", out: str | Path | None = None) -> dict:
    """sim.evaluate.evaluate with a RuntimePolicy; the summary gains the engine settings and runtime counters."""
    from sim.evaluate import evaluate

    policy_for = model_policies(checkpoint, embodiment=embodiment, params=params, engine_overrides=engine_overrides)
    summary = evaluate(task, list(seeds), policy_for, policy_name=f"dreamzero:{checkpoint}", video=video, out=out,
                       render=True, image_hw=tuple(image_hw))
    policy = policy_for.policies[0]
    ec = policy.engine_config
    summary["engine"] = {"flash": ec.flash, "num_steps": 1 if ec.flash else ec.num_steps, "sampler": ec.sampler,
                         "cfg_scale": ec.cfg_scale}
    summary["runtime"] = policy.stats()
    if out is not None:
        (Path(out) / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.policy", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--embodiment", default=None, help="name or YAML (default: the checkpoint's embodiment.yaml "
                                                           "if it has one, else franka_droid)")
    parser.add_argument("--task", default="reach")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=10000, help="seed of the first episode "
                        "(the bundled policy's training: 0..399; its VAE's: 20000..20299)")
    parser.add_argument("--flash", action=argparse.BooleanOptionalAction, default=None,
                        help="one-step Flash sampling (default: the checkpoint's setting)")
    parser.add_argument("--num-steps", type=int, default=0, help="sampler steps (0: the checkpoint's)")
    parser.add_argument("--sampler", choices=("unipc", "euler"), default=None)
    parser.add_argument("--height", type=int, default=90)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--video", choices=("none", "first", "all"), default="none")
    parser.add_argument("--out", default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    overrides: dict[str, Any] = {}
    if args.flash is not None:
        overrides["flash"] = args.flash
    if args.num_steps:
        overrides["num_steps"] = args.num_steps
    if args.sampler:
        overrides["sampler"] = args.sampler
    summary = evaluate_checkpoint(args.checkpoint, range(args.seed, args.seed + args.episodes), task=args.task,
                                  image_hw=(args.height, args.width), embodiment=args.embodiment,
                                  engine_overrides=overrides,
                                  video=args.video if args.out else "none", out=args.out)
    brief = {k: summary[k] for k in ("task", "episodes", "successes", "success_rate", "wilson95",
                                     "mean_chunk_latency_ms", "mean_control_steps", "rejected_chunks", "engine")}
    brief["seeds"] = [args.seed, args.seed + args.episodes - 1]
    brief["runtime"] = summary["runtime"]
    print(json.dumps(brief, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
