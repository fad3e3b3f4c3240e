"""LeRobot v2.1 / v3.0 readers, DreamZero sample construction, statistics, and one clear error per bad input."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dreamzero_policy.chunk import decode_chunk
from dreamzero_policy.embodiment import load_embodiment, parse_embodiment
from dreamzero_policy.observation import JointObservation
from dreamzero_policy.transforms import (Normalizer, VideoTransform, gripper_to_joint, statistics_from_metadata)
from model_core.training.config import DatasetConfig
from model_core.training.data import DreamZeroData, SampleGeometry, SampleRef
from model_core.training.errors import DatasetError
from model_core.training.lerobot import FeatureRef, open_dataset
from tests.training.lerobot_fixtures import CAMERAS, DROID_CAMERAS, make_episode, write_v21, write_v30

GEOMETRY = SampleGeometry(num_chunks=2, action_horizon=24, frames_per_chunk=8)
LENGTHS = (60, 55, 70)


@pytest.fixture(scope="module")
def episodes():
    return [make_episode(i, n) for i, n in enumerate(LENGTHS)]


@pytest.fixture(scope="module")
def v21(tmp_path_factory, episodes):
    return write_v21(tmp_path_factory.mktemp("v21"), episodes)


@pytest.fixture(scope="module")
def v30(tmp_path_factory, episodes):
    return write_v30(tmp_path_factory.mktemp("v30"), episodes)


def dataset_cfg(root, **kw) -> DatasetConfig:
    return DatasetConfig(root=str(root), camera_features=DROID_CAMERAS, num_chunks=2, **kw)


def make_data(root, embodiment="franka_droid", **kw) -> DreamZeroData:
    emb = embodiment if not isinstance(embodiment, str) else load_embodiment(embodiment)
    return DreamZeroData(dataset_cfg(root, **kw), emb, GEOMETRY, (64, 128))


# --- readers -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["v21", "v30"])
def test_fixture_reads_back(fmt, request, episodes):
    reader = open_dataset(request.getfixturevalue(fmt))
    assert reader.version.startswith(fmt[:2]) and reader.fps == 15
    assert sorted(reader.episodes) == [0, 1, 2] and [reader.episodes[i].length for i in range(3)] == list(LENGTHS)
    for i, ep in enumerate(episodes):
        table = reader.read_table(i)
        assert len(table) == LENGTHS[i]
        np.testing.assert_array_equal(reader.column(table, FeatureRef("observation.state"), i), ep.states)
        np.testing.assert_array_equal(reader.column(table, FeatureRef.parse("action[0:7]"), i), ep.actions[:, :7])
        np.testing.assert_array_equal(reader.column(table, FeatureRef("action.gripper_position"), i),
                                      ep.actions[:, 7:])
        assert reader.frame_tasks(table, i) == [ep.task] * LENGTHS[i]
        for cam in CAMERAS:
            frames = reader.read_video(i, f"observation.images.{cam}")
            assert frames.shape == ep.images[cam].shape and frames.dtype == np.uint8
            assert np.abs(frames.astype(int) - ep.images[cam]).mean() < 3.0  # lossy codec, flat colours


@pytest.mark.parametrize("fmt", ["v21", "v30"])
def test_opencv_decodes_the_same_frames_where_pyav_is_missing(fmt, request, monkeypatch):
    from model_core.training import lerobot

    reader = open_dataset(request.getfixturevalue(fmt))
    key = f"observation.images.{CAMERAS[0]}"
    lerobot._decode_cached.cache_clear()
    with_pyav = [reader.read_video(i, key) for i in range(3)]
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    lerobot._decode_cached.cache_clear()
    for i, frames in enumerate(with_pyav):  # v3.0: the episodes' time ranges cut the same frames out of one file
        np.testing.assert_array_equal(reader.read_video(i, key), frames)
    lerobot._decode_cached.cache_clear()


def test_both_formats_give_the_same_samples(v21, v30):
    a, b = make_data(v21), make_data(v30)
    assert a.train_samples == b.train_samples and len(a.train_samples) > 0
    assert a.statistics == b.statistics
    for ref in a.train_samples[::3]:
        for x, y in zip(a.lowdim(ref), b.lowdim(ref)):
            np.testing.assert_array_equal(x, y)
    ref = a.train_samples[-1]
    clip_a = a.tiled_clip(a.decode_views(ref.episode), ref)
    clip_b = b.tiled_clip(b.decode_views(ref.episode), ref)
    assert clip_a.shape == (17, 64, 128, 3) and np.abs(clip_a.astype(int) - clip_b).mean() < 2.0


def test_feature_spec_parsing():
    assert FeatureRef.parse("observation.state[0:7]") == FeatureRef("observation.state", 0, 7)
    assert FeatureRef.parse("action[7:]").width(8) == 1 and str(FeatureRef.parse("action[7:]")) == "action[7:]"
    assert FeatureRef.parse("action.joint_position") == FeatureRef("action.joint_position")


# --- samples ---------------------------------------------------------------------------------------------------

def test_sample_geometry():
    g = GEOMETRY
    assert (g.frame_stride, g.num_frames, g.span) == (3, 17, 48)
    assert g.starts(60, 5, False) == [0, 5, 10] and g.starts(48, 1, False) == []
    assert g.starts(48, 1, True) == list(range(25))  # one real chunk at least: the last whole chunk too
    assert g.starts(24, 24, True) == [0] and g.starts(23, 1, True) == []
    np.testing.assert_array_equal(g.frame_steps(0, 60), np.arange(0, 49, 3))
    np.testing.assert_array_equal(g.anchor_steps(4, 60), [4, 28])
    np.testing.assert_array_equal(g.action_steps(4, 60)[1], np.arange(28, 52))
    np.testing.assert_array_equal(g.frame_steps(20, 48)[8:11], [44, 47, 47])  # padded: the last frame repeats
    release = SampleGeometry(num_chunks=4, action_horizon=24, frames_per_chunk=8)
    assert release.num_frames == 33 and release.span == 96  # 1 + 4 chunks at 5 fps -> 9 latent frames


def test_normalisation_round_trips_through_the_runtime_decoder(v21, episodes):
    """metadata.json statistics -> the runtime's Normalizer; decode_chunk inverts what training made."""
    data = make_data(v21)
    emb = data.embodiment
    meta = json.loads(json.dumps(data.metadata()))  # as written to experiment_cfg/metadata.json
    stats = statistics_from_metadata(meta, emb.metadata_key)
    assert set(stats["action"]["joint_position"]) >= {"min", "max", "mean", "std", "q01", "q99"}
    assert meta[emb.metadata_key]["modalities"]["action"]["joint_position"]["absolute"] is False
    normalizer = Normalizer.from_statistics(stats, emb)
    ref = SampleRef(episode=2, start=12)
    states, actions = data.lowdim(ref)
    assert states.shape == (2, 64) and actions.shape == (48, 32)
    assert np.all(actions[:, 8:] == 0) and np.all(states[:, 8:] == 0) and np.abs(actions).max() <= 1
    ep = episodes[2]
    for k, anchor_step in enumerate(GEOMETRY.anchor_steps(ref.start, LENGTHS[2])):
        s = ep.states[anchor_step].astype(np.float64)
        anchor = JointObservation(1, s[:7], None, gripper_to_joint(s[7:], emb))
        chunk = decode_chunk(actions[k * 24:(k + 1) * 24], anchor, normalizer, emb)
        target = ep.actions[anchor_step:anchor_step + 24].astype(np.float64)
        inside = np.abs(actions[k * 24:(k + 1) * 24, :7]) < 1  # q01/q99 clipping is lossy by design
        np.testing.assert_allclose(chunk.positions[inside], target[:, :7][inside], atol=1e-6)
        np.testing.assert_allclose(chunk.gripper, gripper_to_joint(target[:, 7:], emb), atol=1e-6)
    states_back = normalizer.state.unnormalize(states)
    np.testing.assert_allclose(states_back[0][np.abs(states[0, :8]) < 1], ep.states[12][np.abs(states[0, :8]) < 1],
                               atol=1e-6)


def test_views_are_tiled_with_the_runtime_transform(v21):
    data = make_data(v21)
    ref = data.train_samples[1]
    views = data.decode_views(ref.episode)
    clip = data.tiled_clip(views, ref)
    step = int(GEOMETRY.frame_steps(ref.start, LENGTHS[ref.episode])[5])
    expect = VideoTransform.from_embodiment(data.embodiment, (64, 128))({c: v[step] for c, v in views.items()})
    np.testing.assert_array_equal(clip[5], expect)
    assert data.prompt(0).startswith("A multi-view video shows that a robot reach the")


def test_validation_split_and_padding(v21):
    data = make_data(v21, val_episodes=[2], sample_stride=4)
    assert data.train_ids == [0, 1] and data.val_ids == [2]
    assert {r.episode for r in data.val_samples} == {2} and {r.episode for r in data.train_samples} == {0, 1}
    padded = make_data(v21, pad_episode_end=True, sample_stride=1)
    assert max(r.start for r in padded.train_samples if r.episode == 1) == LENGTHS[1] - 24  # its last whole chunk


# --- bad input: one clear error each ---------------------------------------------------------------------------------

def test_missing_feature(tmp_path):
    root = write_v21(tmp_path / "ds", [make_episode(0, 60)], drop_features=("action.joint_position",))
    with pytest.raises(DatasetError, match=r"field 'action.joint_position': .*no feature 'action.joint_position' for "
                                           r"the action key 'joint_position'"):
        make_data(root)


def test_video_shorter_than_the_parquet_data(tmp_path):
    root = write_v21(tmp_path / "ds", [make_episode(0, 60), make_episode(1, 60)], video_lengths={1: 50})
    data = make_data(root)  # rows and metadata are fine; the frame count is checked on decoding, before training
    with pytest.raises(DatasetError, match=r"episode 1, field 'observation.images.wrist_left': the video has 50 "
                                           r"frames, the parquet data 60 rows"):
        data.decode_views(1)


def test_nan_action(tmp_path):
    episodes = [make_episode(0, 60), make_episode(1, 60)]
    episodes[1].actions[10, 3] = np.nan
    root = write_v21(tmp_path / "ds", episodes)
    with pytest.raises(DatasetError, match=r"episode 1, field 'action.joint_position': 1 NaN/Inf value\(s\), first "
                                           r"in frame 10"):
        make_data(root)


def six_joint_franka(tmp_path) -> Path:
    data = yaml.safe_load((Path(__file__).resolve().parents[2] / "config/embodiments/franka_droid.yaml").read_text())
    data["joints"] = data["joints"][:6]
    data["controller"]["joints"] = data["controller"]["joints"][:6]
    for part in ("state", "action"):
        data[part][0]["size"] = 6
    path = tmp_path / "franka6.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_embodiment_whose_joints_do_not_match_the_dataset(v21, tmp_path):
    emb = load_embodiment(six_joint_franka(tmp_path))
    with pytest.raises(DatasetError, match=r"field 'observation.state.joint_position': observation.state."
                                           r"joint_position has 7 value\(s\) per frame, the embodiment 'franka_droid' "
                                           r"state key 'joint_position' has 6 \(arm joints\)"):
        make_data(v21, embodiment=emb)
    agibot = load_embodiment("agibot_g1")
    with pytest.raises(DatasetError, match=r"camera_features names camera\(s\) \['exterior_1', 'exterior_2', 'wrist'\] "
                                           r"the embodiment 'agibot_g1' does not have"):
        make_data(v21, embodiment=agibot)
    with pytest.raises(DatasetError, match=r"dataset runs at 15 fps, the embodiment 'agibot_g1' at control_rate_hz 30"):
        DreamZeroData(DatasetConfig(root=str(v21)), agibot, GEOMETRY, (64, 128))


def test_parquet_rows_disagree_with_the_episodes_table(tmp_path):
    root = write_v21(tmp_path / "ds", [make_episode(0, 60)])
    lines = (root / "meta" / "episodes.jsonl").read_text().replace('"length": 60', '"length": 64')
    (root / "meta" / "episodes.jsonl").write_text(lines)
    with pytest.raises(DatasetError, match=r"episode 0, field 'length': the data file has 60 rows, the episodes "
                                           r"table says length 64"):
        make_data(root)


def test_episodes_too_short_and_unknown_names(v21, tmp_path):
    short = write_v21(tmp_path / "short", [make_episode(0, 40)])
    with pytest.raises(DatasetError, match=r"no training sample fits: .*49 steps"):
        make_data(short)
    with pytest.raises(DatasetError, match=r"val_episodes \[7\] are not in the dataset"):
        make_data(v21, val_episodes=[7])
    with pytest.raises(DatasetError, match=r"camera_features names camera\(s\) \['top'\]"):
        DreamZeroData(DatasetConfig(root=str(v21), camera_features={**DROID_CAMERAS, "top": "x"}),
                      load_embodiment("franka_droid"), GEOMETRY, (64, 128))
    with pytest.raises(DatasetError, match=r"no meta/info.json"):
        open_dataset(tmp_path)


def test_gripper_in_joint_units_is_mapped_to_model_units(tmp_path):
    ep = make_episode(0, 60)
    emb = parse_embodiment(yaml.safe_load((Path(__file__).resolve().parents[2] /
                                           "config/embodiments/franka_droid.yaml").read_text()))
    ep.states[:, 7] = gripper_to_joint(ep.states[:, 7:], emb)[:, 0]
    ep.actions[:, 7] = gripper_to_joint(ep.actions[:, 7:], emb)[:, 0]
    root = write_v21(tmp_path / "ds", [ep])
    data = make_data(root, gripper_units="joint")
    np.testing.assert_allclose(data.episodes[0].gripper[:, 0], make_episode(0, 60).states[:, 7], atol=1e-6)
