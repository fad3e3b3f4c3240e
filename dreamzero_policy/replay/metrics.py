"""Replay metrics: chunk errors per joint and per horizon step, gripper agreement, latency, PSNR / SSIM.

Errors are prediction - ground truth in joint units (rad; m for prismatic joints and fingers), scored only where
the ground truth has a value at the action's due time. `ErrorAccumulator` keeps sums, so accumulators of several
bags merge into exact pooled numbers (the aggregate table).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


class ErrorAccumulator:
    """Sums of |e|, e^2 and counts per horizon step and joint; max |e| per joint; gripper agreement counts."""

    def __init__(self, joints: Sequence[str], horizon: int, gripper_joints: Sequence[str] = ()):
        self.joints = list(joints)
        self.gripper_joints = list(gripper_joints)
        self.horizon = horizon
        shape = (horizon, len(self.joints))
        self.abs_sum, self.sq_sum = np.zeros(shape), np.zeros(shape)
        self.bias_sum = np.zeros(shape)
        self.count = np.zeros(shape, np.int64)
        self.max_abs = np.zeros(len(self.joints))
        self.agree = np.zeros(len(self.gripper_joints), np.int64)
        self.agree_n = np.zeros(len(self.gripper_joints), np.int64)
        self.chunks = 0

    def add(self, predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray,
            gripper_closed: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """One chunk: predicted / truth [T, K] (joint units), valid [T, K]; gripper_closed: (predicted, recorded)
        [T, G] booleans (closed or not), scored where the gripper's truth is valid."""
        self.chunks += 1
        error = np.where(valid, predicted - truth, 0.0)
        self.abs_sum += np.abs(error)
        self.sq_sum += error ** 2
        self.bias_sum += error
        self.count += valid
        if valid.any():
            self.max_abs = np.maximum(self.max_abs, np.abs(error).max(axis=0))
        if gripper_closed is not None and self.gripper_joints:
            pred, rec = gripper_closed
            columns = [self.joints.index(g) for g in self.gripper_joints]
            ok = valid[:, columns]
            self.agree += ((pred == rec) & ok).sum(axis=0)
            self.agree_n += ok.sum(axis=0)

    def merge(self, other: ErrorAccumulator) -> None:
        assert other.joints == self.joints and other.horizon == self.horizon, (other.joints, self.joints)
        for name in ("abs_sum", "sq_sum", "bias_sum", "count", "agree", "agree_n"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.max_abs = np.maximum(self.max_abs, other.max_abs)
        self.chunks += other.chunks

    @staticmethod
    def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.full(np.shape(num), np.nan, dtype=np.float64), where=den > 0)

    def summary(self, arm_joints: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-ready metrics (None where nothing was scored)."""
        arm = [self.joints.index(j) for j in (arm_joints or [j for j in self.joints
                                                            if j not in self.gripper_joints])]
        n = self.count.sum(axis=0)
        mae = self._ratio(self.abs_sum.sum(axis=0), n)
        rmse = np.sqrt(self._ratio(self.sq_sum.sum(axis=0), n))
        bias = self._ratio(self.bias_sum.sum(axis=0), n)
        last = self.horizon - 1
        final = self._ratio(self.abs_sum[last], self.count[last])
        per_joint = {}
        for k, name in enumerate(self.joints):
            per_joint[name] = {"mae": _finite(mae[k]), "rmse": _finite(rmse[k]), "mean_error": _finite(bias[k]),
                               "final_step_error": _finite(final[k]),
                               "max_abs_error": _finite(self.max_abs[k]) if n[k] else None, "samples": int(n[k])}
        step_n = self.count[:, arm].sum(axis=1)
        step_mae = self._ratio(self.abs_sum[:, arm].sum(axis=1), step_n)
        step_rmse = np.sqrt(self._ratio(self.sq_sum[:, arm].sum(axis=1), step_n))
        arm_n = self.count[:, arm].sum()
        arm_last_n = self.count[last, arm].sum()
        gripper = {}
        for g, name in enumerate(self.gripper_joints):
            gripper[name] = {"agreement": _finite(self.agree[g] / self.agree_n[g]) if self.agree_n[g] else None,
                             "samples": int(self.agree_n[g])}
        return {
            "joints": self.joints,
            "chunks": self.chunks,
            "per_joint": per_joint,
            "per_step": {"mae": [_finite(x) for x in step_mae], "rmse": [_finite(x) for x in step_rmse],
                         "samples": [int(x) for x in step_n]},
            "per_step_per_joint": {
                "mae": [[_finite(x) for x in row] for row in self._ratio(self.abs_sum, self.count)],
                "rmse": [[_finite(x) for x in row] for row in np.sqrt(self._ratio(self.sq_sum, self.count))]},
            "arm": {"mae": _finite(self.abs_sum[:, arm].sum() / arm_n) if arm_n else None,
                    "rmse": _finite(np.sqrt(self.sq_sum[:, arm].sum() / arm_n)) if arm_n else None,
                    "final_step_error": _finite(self.abs_sum[last, arm].sum() / arm_last_n) if arm_last_n else None,
                    "samples": int(arm_n)},
            "gripper": gripper,
        }


def percentiles(values: Sequence[float]) -> dict[str, Any]:
    """p50 / p90 / p99 / mean / max of durations in seconds (None when empty)."""
    if not len(values):
        return {"p50": None, "p90": None, "p99": None, "mean": None, "max": None, "n": 0}
    v = np.asarray(values, np.float64)
    p50, p90, p99 = np.percentile(v, (50, 90, 99))
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(v.mean()), "max": float(v.max()),
            "n": int(v.size)}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images (inf when equal)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0 ** 2 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03) of two uint8
    images, averaged over channels and pixels."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    x, y = a.astype(np.float64), b.astype(np.float64)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    blur = lambda img: cv2.GaussianBlur(img, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)  # noqa: E731
    values = []
    for c in range(x.shape[2]):
        xc, yc = x[..., c], y[..., c]
        mx, my = blur(xc), blur(yc)
        sxx, syy, sxy = blur(xc * xc) - mx * mx, blur(yc * yc) - my * my, blur(xc * yc) - mx * my
        s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        values.append(s.mean())
    return float(np.mean(values))
