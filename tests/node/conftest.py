"""Fixtures for the node tests: a tiny random-weight checkpoint whose metadata.json has statistics for the
franka_droid keys, a Franka embodiment variant with one compressed camera, loopback DDS on a private domain."""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from dreamzero_policy.embodiment import load_embodiment
from nodetest_util import FRANKA_METADATA_KEY, franka_statistics, write_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny random-weight checkpoint with metadata.json statistics for franka_droid."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_ckpt"),
                                 {FRANKA_METADATA_KEY: {"statistics": franka_statistics()}})


@pytest.fixture(scope="session")
def misfit_checkpoint(tmp_path_factory) -> Path:
    """The same tiny model, but its statistics lack the gripper key and have 6 arm values: it does not fit."""
    stats = franka_statistics()
    del stats["state"]["gripper_position"]
    stats["action"]["joint_position"]["q01"] = stats["action"]["joint_position"]["q01"][:6]
    return write_tiny_checkpoint(tmp_path_factory.mktemp("misfit_ckpt"),
                                 {FRANKA_METADATA_KEY: {"statistics": stats}})


@pytest.fixture(scope="session")
def mixed_camera_embodiment(tmp_path_factory) -> Path:
    """franka_droid with exterior_1 on CompressedImage (`<topic>/compressed`) and at 15 Hz; the rest unchanged."""
    import yaml

    data = load_embodiment("franka_droid").model_dump()
    for cam in data["cameras"]:
        if cam["name"] == "exterior_1":
            cam["transport"], cam["rate_hz"] = "compressed", 15
    path = tmp_path_factory.mktemp("embodiment") / "franka_droid_mixed.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


_domains = itertools.count()


@pytest.fixture(scope="module")
def node_domain_id() -> int:
    """A private DDS domain per test module (different from the middleware tests' range)."""
    return 1 + (os.getpid() * 11 + next(_domains)) % 99


@pytest.fixture(scope="module")
def dds_env(node_domain_id):
    """Loopback-only Cyclone DDS on the module's private domain, here and in the processes the tests start."""
    from dreamzero_policy.middleware.dds_backend import loopback_uri

    saved = {k: os.environ.get(k) for k in ("CYCLONEDDS_URI", "ROS_DOMAIN_ID")}
    os.environ["CYCLONEDDS_URI"] = loopback_uri()
    os.environ["ROS_DOMAIN_ID"] = str(node_domain_id)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
