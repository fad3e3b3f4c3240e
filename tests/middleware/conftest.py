"""Fixtures for the middleware tests: loopback-only Cyclone DDS, a private domain id, and peer processes.

Every DDS participant (in the pytest process and in peers) uses the loopback configuration shipped with the package
(CYCLONEDDS_URI), and a domain id derived from this pytest process's pid, so concurrent test runs of other engineers on
the same machine do not see each other. Peers are killed in the fixture teardown whatever happens.
"""
from __future__ import annotations

import itertools
import os

import pytest

from dreamzero_policy.middleware.dds_backend import loopback_uri
from mwtest_util import REPO, Peer

# Domain ids 0..232 are valid; ROS graphs usually use low ids, so stay in 100..229 and step per test.
_BASE_DOMAIN = 100 + (os.getpid() * 7) % 100
_domains = itertools.count()


@pytest.fixture
def domain_id() -> int:
    return 100 + (_BASE_DOMAIN - 100 + next(_domains)) % 130


@pytest.fixture
def dds_env(monkeypatch, domain_id) -> dict:
    """Environment for DDS in this process and in peers: loopback config, private domain, repo on PYTHONPATH."""
    monkeypatch.setenv("CYCLONEDDS_URI", loopback_uri())
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain_id))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture
def start_peer(dds_env, domain_id):
    """start_peer(mode) -> Peer, already 'ready'; every peer is stopped (and killed if needed) at teardown."""
    peers: list[Peer] = []

    def start(mode: str, ready_timeout_s: float = 20.0) -> Peer:
        peer = Peer(mode, domain_id, dds_env)
        peers.append(peer)
        peer.expect("ready", timeout_s=ready_timeout_s)
        return peer

    yield start
    for p in peers:
        p.stop()


@pytest.fixture
def make_mw(dds_env, domain_id):
    """make_mw(node_name) -> DdsMiddleware in this process (loopback, private domain); shut down at teardown."""
    from dreamzero_policy.middleware import create_middleware

    created = []

    def make(node_name: str = "test_node"):
        mw = create_middleware("dds", node_name=node_name, domain_id=domain_id)
        created.append(mw)
        return mw

    yield make
    for mw in created:
        mw.shutdown()
