"""Fixtures for the sim tests: `python -m sim.serve` as a second process on loopback DDS and a private domain."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_domains = itertools.count()


@pytest.fixture
def sim_domain() -> int:
    """A private domain id per test, so concurrent test runs do not meet."""
    return 100 + (os.getpid() * 11 + 57 + next(_domains)) % 130


@pytest.fixture
def sim_process(monkeypatch, sim_domain):
    """The sim serving the reach task (seed 3, 64x36 images at 5 Hz) for at most 90 s; killed at teardown."""
    from dreamzero_policy.middleware.dds_backend import loopback_uri

    monkeypatch.setenv("CYCLONEDDS_URI", loopback_uri())
    monkeypatch.setenv("ROS_DOMAIN_ID", str(sim_domain))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.serve", "--backend", "dds", "--task", "reach", "--seed", "3", "--image-hz", "5",
         "--height", "36", "--width", "64", "--duration", "90"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()
