"""sim.policy.RuntimePolicy: the node's runtime stages (block buffer, session + engine, chunk decoding, execution,
safety) driven by the in-process sim, with the bundled checkpoint."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pybullet")

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "sim" / "assets" / "tiny_reach"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_runtime_policy_runs_the_runtime_in_closed_loop():
    from sim.env import FrankaSimEnv
    from sim.policy import RuntimePolicy
    from sim.rollout import run_episode

    policy = RuntimePolicy(BUNDLE, warmup=False)
    env = FrankaSimEnv("reach", image_hw=(90, 160))
    try:
        episode = run_episode(env, policy, 12345, render=True)
        chunks = list(policy.chunks)
        again = run_episode(env, policy, 12345, render=True)
    finally:
        env.close()
    assert len(chunks) == len(episode.chunks) >= 1 and not episode.rejected
    assert chunks[0].block_index == 0 and chunks[0].reset_reason is not None  # the episode's single initial frame
    assert all(c.block_index == i for i, c in enumerate(chunks))
    stats = policy.stats()
    assert stats["block_buffer"]["incomplete_sets"] == 0 and stats["block_buffer"]["dropped_sets"] == 0
    assert stats["holds"] == 0 and stats["safety"]["STALE_CHUNK"] == 0
    for executed in episode.chunks:
        assert executed.shape[1] == 8 and np.isfinite(executed).all()
    # deterministic: the same seed gives the same actions (the engine re-seeds its noise every call)
    np.testing.assert_allclose(again.actions, episode.actions, atol=1e-6)
    assert again.success == episode.success


def test_multistep_override_switches_flash_off():
    from sim.policy import RuntimePolicy

    policy = RuntimePolicy(BUNDLE, engine_overrides={"flash": False, "num_steps": 4}, warmup=False)
    assert not policy.engine_config.flash and policy.engine_config.num_steps == 4
    assert RuntimePolicy(BUNDLE, warmup=False).engine_config.flash
