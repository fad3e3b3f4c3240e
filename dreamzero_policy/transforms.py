"""Shared transforms: training and the runtime build them in the same order from the same config.

Video:  per view center_crop -> resize to the view size, then tile_views (-> resize to the model's frame size).
State:  joints + gripper (model units) in the embodiment's state layout -> q01/q99 normalise -> pad to max_state_dim.
Action: model output -> drop padding -> q01/q99 unnormalise -> relative dims += anchor state -> gripper to joint units
        (training runs the inverse: joint units -> gripper [0, 1] -> relative -> normalise -> pad).

Statistics come from the checkpoint's `experiment_cfg/metadata.json` at run time (never from the YAML).
Everything here is pure (no shared state) and thread-safe.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from dreamzero_policy.embodiment import Embodiment, Segment
from dreamzero_policy.errors import ConfigError, ObservationError
from dreamzero_policy.observation import JointObservation

Layout = Sequence[Sequence[str | None]]


# --- video -------------------------------------------------------------------------------------------------------

def center_crop(img: np.ndarray, fraction: float) -> np.ndarray:
    """The centered `fraction` of each side, as a view: [H, W, C] -> [round(H f), round(W f), C]."""
    h, w = img.shape[:2]
    ch, cw = round(h * fraction), round(w * fraction)
    top, left = (h - ch) // 2, (w - cw) // 2
    return img[top:top + ch, left:left + cw]


def resize(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """[H, W, C] -> [hw[0], hw[1], C]: area averaging when shrinking, bilinear otherwise; no-op at the same size."""
    h, w = img.shape[:2]
    if (h, w) == tuple(hw):
        return img
    shrinking = hw[0] <= h and hw[1] <= w
    return cv2.resize(img, (hw[1], hw[0]), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def grid_view_hw(layout: Layout, out_hw: tuple[int, int]) -> tuple[int, int]:
    """The view size that tiles `layout` exactly into `out_hw` (floor division when it does not divide)."""
    return out_hw[0] // len(layout), out_hw[1] // max(len(row) for row in layout)


def tile_views(views: Mapping[str, np.ndarray], layout: Layout, out_hw: tuple[int, int],
               view_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Place views on a grid -> [out_hw[0], out_hw[1], 3] uint8.

    The canvas has len(layout) rows of height view_hw[0] and max(len(row)) columns of width view_hw[1]. The views
    of a row share its width equally (a row with one view in a two-column grid is widened 2x); None cells stay
    black. Views are resized to their cell, and the canvas to `out_hw` when it differs (the 5B style: views at
    160x320 tile to 320x640, then resize to 160x320). `view_hw` defaults to an exact fit (grid_view_hw).
    """
    vh, vw = view_hw or grid_view_hw(layout, out_hw)
    n_cols = max(len(row) for row in layout)
    canvas = np.zeros((len(layout) * vh, n_cols * vw, 3), np.uint8)  # [rows*vh, cols*vw, 3]
    for r, row in enumerate(layout):
        cell_w = n_cols * vw // len(row)
        for c, name in enumerate(row):
            if name is None:
                continue
            if name not in views:
                raise ObservationError("views", f"a view for camera {name!r}", f"views {sorted(views)}")
            canvas[r * vh:(r + 1) * vh, c * cell_w:(c + 1) * cell_w] = resize(views[name], (vh, cell_w))
    return resize(canvas, out_hw)


class VideoTransform:
    """Camera views -> one model frame: center-crop and resize each view, then tile (see tile_views)."""

    def __init__(self, layout: Layout, crop_fraction: float, out_hw: tuple[int, int],
                 view_hw: tuple[int, int] | None = None):
        self.layout = tuple(tuple(row) for row in layout)
        self.crop_fraction = crop_fraction
        self.out_hw = tuple(out_hw)
        self.view_hw = tuple(view_hw) if view_hw else grid_view_hw(self.layout, self.out_hw)

    @classmethod
    def from_embodiment(cls, embodiment: Embodiment, out_hw: tuple[int, int],
                        view_hw: tuple[int, int] | None = None) -> VideoTransform:
        """`out_hw` is the model's frame size (14B: 352x640, 5B: 160x320 with view_hw 160x320)."""
        return cls(embodiment.video.layout, embodiment.video.crop_fraction, out_hw, view_hw)

    def __call__(self, views: Mapping[str, np.ndarray]) -> np.ndarray:  # {camera: [h, w, 3]} -> [H, W, 3]
        prepared = {name: resize(center_crop(img, self.crop_fraction), self.view_hw) for name, img in views.items()}
        return tile_views(prepared, self.layout, self.out_hw, self.view_hw)


# --- state / action layout -----------------------------------------------------------------------------------------

def gripper_to_joint(g: np.ndarray, embodiment: Embodiment) -> np.ndarray:
    """Model gripper values [..., G] (0 open, 1 closed; clipped to [0, 1]) -> joint positions [..., G]."""
    open_, closed = embodiment.gripper_open, embodiment.gripper_closed
    return open_ + np.clip(g, 0.0, 1.0) * (closed - open_)


def gripper_to_model(x: np.ndarray, embodiment: Embodiment) -> np.ndarray:
    """Gripper joint positions [..., G] -> model values in [0, 1] (clipped)."""
    open_, closed = embodiment.gripper_open, embodiment.gripper_closed
    return np.clip((x - open_) / (closed - open_), 0.0, 1.0)


def assemble(segments: Sequence[Segment], arm: np.ndarray, gripper: np.ndarray) -> np.ndarray:
    """Arm [..., J] and gripper [..., G] values -> the layout's vector [..., sum(sizes)]."""
    parts, offset = [], {"arm": 0, "gripper": 0}
    for s in segments:
        source = arm if s.source == "arm" else gripper
        parts.append(source[..., offset[s.source]:offset[s.source] + s.size])
        offset[s.source] += s.size
    return np.concatenate(parts, axis=-1)


def split(segments: Sequence[Segment], vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The layout's vector [..., sum(sizes)] -> (arm [..., J], gripper [..., G]); the inverse of assemble."""
    parts: dict[str, list[np.ndarray]] = {"arm": [], "gripper": []}
    start = 0
    for s in segments:
        parts[s.source].append(vector[..., start:start + s.size])
        start += s.size
    empty = vector[..., :0]
    return (np.concatenate(parts["arm"] or [empty], axis=-1), np.concatenate(parts["gripper"] or [empty], axis=-1))


def observation_vector(segments: Sequence[Segment], obs: JointObservation, embodiment: Embodiment) -> np.ndarray:
    """A joint observation in a state or action layout (gripper in model units) -> [N]."""
    return assemble(segments, obs.positions, gripper_to_model(obs.gripper, embodiment))


def relative_mask(segments: Sequence[Segment]) -> np.ndarray:
    """[N] bool: which dims of the layout are relative to the current state."""
    return np.concatenate([np.full(s.size, s.relative) for s in segments])


def to_absolute(actions: np.ndarray, anchor: np.ndarray, relative: np.ndarray) -> np.ndarray:
    """Relative dims += anchor state; absolute dims untouched. actions [T, N], anchor [N], relative [N] bool."""
    return actions + np.where(relative, anchor, 0.0)


def to_relative(actions: np.ndarray, anchor: np.ndarray, relative: np.ndarray) -> np.ndarray:
    """The inverse of to_absolute (training)."""
    return actions - np.where(relative, anchor, 0.0)


# --- normalisation -------------------------------------------------------------------------------------------------

class QuantileNormalizer:
    """x [..., N] -> 2 (x - q01) / (q99 - q01) - 1 clipped to [-1, 1], zero-padded to [..., dim]; and back.

    A dimension with q99 == q01 (constant in the data) normalises to 0 and unnormalises to q01.
    """

    def __init__(self, q01: np.ndarray, q99: np.ndarray, dim: int):
        self.q01, self.q99 = np.asarray(q01, np.float64), np.asarray(q99, np.float64)
        self.range = self.q99 - self.q01
        self.dim = dim
        assert self.q01.shape == self.q99.shape and self.q01.ndim == 1, (self.q01.shape, self.q99.shape)

    @property
    def size(self) -> int:
        return self.q01.shape[0]

    def normalize(self, x: np.ndarray) -> np.ndarray:  # [..., N] -> [..., dim]
        scaled = np.divide(2.0 * (x - self.q01), self.range, out=np.ones(np.shape(x)), where=self.range > 0) - 1.0
        out = np.zeros((*np.shape(x)[:-1], self.dim))
        out[..., :self.size] = np.clip(scaled, -1.0, 1.0)
        return out

    def unnormalize(self, y: np.ndarray) -> np.ndarray:  # [..., dim] -> [..., N]
        return (np.asarray(y, np.float64)[..., :self.size] + 1.0) * 0.5 * self.range + self.q01


class Normalizer:
    """State and action normalisers from a checkpoint's statistics and the embodiment's layouts."""

    def __init__(self, state: QuantileNormalizer, action: QuantileNormalizer):
        self.state, self.action = state, action

    @classmethod
    def from_statistics(cls, statistics: Mapping, embodiment: Embodiment, action_dim: int = 32,
                        max_state_dim: int = 64) -> Normalizer:
        """`statistics`: `{"state": {key: {"q01": [...], "q99": [...], ...}}, "action": {...}}` (see
        statistics_from_metadata); `action_dim` / `max_state_dim` are the model's padded sizes."""
        state = _quantiles(statistics, "state", embodiment.state, max_state_dim)
        action = _quantiles(statistics, "action", embodiment.action, action_dim)
        return cls(state, action)


def statistics_from_metadata(metadata: Mapping, metadata_key: str) -> Mapping:
    """One embodiment's `statistics` from a parsed metadata.json (`{tag: {"statistics": ...}}`, or flat)."""
    entry = metadata.get(metadata_key, metadata)
    if not isinstance(entry, Mapping) or "statistics" not in entry:
        raise ConfigError("metadata.json", f"an entry {metadata_key!r} with 'statistics'", f"entries {sorted(metadata)}")
    return entry["statistics"]


def _quantiles(statistics: Mapping, part: str, segments: Sequence[Segment], dim: int) -> QuantileNormalizer:
    table = statistics.get(part)
    if not isinstance(table, Mapping):
        raise ConfigError("statistics", f"a {part!r} table", f"keys {sorted(statistics)}")
    q01, q99 = [], []
    for s in segments:
        if s.key not in table:
            raise ConfigError(f"statistics.{part}", f"key {s.key!r} (embodiment layout)", f"keys {sorted(table)}")
        for name, out in (("q01", q01), ("q99", q99)):
            values = np.asarray(table[s.key].get(name, ()), np.float64).reshape(-1)
            if values.shape != (s.size,):
                raise ConfigError(f"statistics.{part}.{s.key}.{name}", f"{s.size} values", values.shape[0])
            out.append(values)
    lo, hi = np.concatenate(q01), np.concatenate(q99)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (lo <= hi).all()):
        raise ConfigError(f"statistics.{part}", "finite q01 <= q99", f"q01 {lo.tolist()}, q99 {hi.tolist()}")
    if lo.size > dim:
        raise ConfigError(f"statistics.{part}", f"at most {dim} dims (model padding)", lo.size)
    return QuantileNormalizer(lo, hi, dim)
