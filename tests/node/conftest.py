"""Fixtures for the node tests: a tiny random-weight checkpoint whose metadata.json has statistics for the
franka_droid keys, a Franka embodiment variant with one compressed camera, loopback DDS on a private domain."""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from dreamzero_policy.embodiment import load_embodiment

FRANKA_METADATA_KEY = "oxe_droid"
REPO = Path(__file__).resolve().parents[2]


def franka_statistics() -> dict:
    """Plausible DROID-like q01/q99 statistics for the franka_droid state/action keys (arm 7 + gripper 1)."""
    emb = load_embodiment("franka_droid")
    lower, upper = emb.lower, emb.upper
    q = lambda lo, hi: {"q01": [float(v) for v in lo], "q99": [float(v) for v in hi]}  # noqa: E731
    return {
        "state": {"joint_position": q(lower * 0.8, upper * 0.8), "gripper_position": q([0.0], [1.0])},
        "action": {"joint_position": q([-0.3] * 7, [0.3] * 7), "gripper_position": q([0.0], [1.0])},
    }


def write_tiny_checkpoint(directory: Path, metadata: dict | None) -> Path:
    from model_core.factory import save_bundle, tiny_components

    dit, vae, text, image = tiny_components(seed=0)
    save_bundle(directory, dit, vae, text, image, video_hw=(64, 128), metadata=metadata)
    return directory


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
