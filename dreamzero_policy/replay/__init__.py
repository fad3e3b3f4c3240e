"""Offline evaluation: replay rosbags through the live policy node's runtime, in bag time, and report.

    dreamzero-replay BAG... --checkpoint CKPT [--embodiment NAME|FILE] [--out DIR]
                     [--ground-truth commands|joint_states] [--decode-video]

Modules: `bagio` (reading bags, writing the output bag), `middleware` (the bag-time middleware the node runs on),
`runner` (one bag through one node: the exact live code path, fed in bag time), `engines` (the policy seam: the
real engine, or an oracle that returns the recorded commands), `groundtruth`, `metrics`, `report` (JSON + HTML),
`cli` (the command).
"""
from dreamzero_policy.replay.cli import main
from dreamzero_policy.replay.engines import OracleEngine, RecordingEngine, ReplayContext, oracle_factory
from dreamzero_policy.replay.runner import BagReplay, ReplayError, ReplayOptions, ReplayResult, replay_bag

__all__ = ["main", "BagReplay", "ReplayError", "ReplayOptions", "ReplayResult", "replay_bag", "OracleEngine",
           "RecordingEngine", "ReplayContext", "oracle_factory"]
