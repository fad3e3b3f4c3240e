"""Fixtures for the replay tests: a tiny random-weight checkpoint with franka_droid statistics and short reach
episodes recorded by the simulator as MCAP and sqlite3 bags (small images, 10 Hz cameras: seconds to make)."""
from __future__ import annotations

from pathlib import Path

import pytest

from replaytest_util import write_tiny_checkpoint


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny model on one thread: on 2 shared cores a second thread mostly waits for the other processes."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("replay_ckpt"))


def _record(directory: Path, fmt: str, episodes: int) -> list[Path]:
    from sim.record import record

    summaries = record("reach", episodes, directory, fmt, seed=0, image_hw=(36, 64), image_hz=10)
    return [Path(s["path"]) for s in summaries]


@pytest.fixture(scope="session")
def sim_bags(tmp_path_factory) -> dict[str, list[Path]]:
    """{"mcap": [2 episodes], "sqlite3": [2 episodes]} of the reach task (4.8 s each), recorded by the sim."""
    root = tmp_path_factory.mktemp("sim_bags")
    return {fmt: _record(root / fmt, fmt, 2) for fmt in ("mcap", "sqlite3")}
