"""The DROID camera set: two fixed exterior cameras and one wrist camera on the hand, rendered by TinyRenderer.

Rendering is the expensive part of the sim (~28 ms per 320x180 frame per camera here), so the env only renders
when an observation asks for images.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CAMERAS = ("wrist", "exterior_1", "exterior_2")  # DROID order: wrist, exterior 1 (left), exterior 2 (right)


@dataclass(frozen=True)
class CameraSpec:
    """A pinhole camera: fixed in the world (eye/target in world metres) or on the hand (in the hand frame)."""

    eye: tuple[float, float, float]
    target: tuple[float, float, float]
    up: tuple[float, float, float]
    fov_deg: float  # vertical field of view
    on_hand: bool = False


CAMERA_SPECS = {
    # Exterior cameras stand in front of the robot to its left and right, looking at the workspace.
    "exterior_1": CameraSpec(eye=(1.0, 0.55, 0.55), target=(0.3, 0.0, 0.28), up=(0.0, 0.0, 1.0), fov_deg=60.0),
    "exterior_2": CameraSpec(eye=(1.0, -0.55, 0.55), target=(0.3, 0.0, 0.28), up=(0.0, 0.0, 1.0), fov_deg=60.0),
    # The wrist camera sits behind and beside the flange, looking along the fingers (hand +z) so both fingertips
    # and the object between them are in view.
    "wrist": CameraSpec(eye=(0.08, 0.0, 0.03), target=(0.0, 0.0, 0.3), up=(1.0, 0.0, 0.0), fov_deg=70.0,
                        on_hand=True),
}
NEAR_M, FAR_M = 0.01, 4.0


def render(client, spec: CameraSpec, image_hw: tuple[int, int],
           hand_pose: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Render one camera with TinyRenderer; `hand_pose` = (position [3], quaternion xyzw [4]) for a wrist camera.

    Returns [H, W, 3] uint8 RGB.
    """
    height, width = image_hw
    eye, target, up = np.array(spec.eye), np.array(spec.target), np.array(spec.up)
    if spec.on_hand:
        position, quaternion = hand_pose
        rotation = np.array(client.getMatrixFromQuaternion(quaternion)).reshape(3, 3)
        eye, target, up = position + rotation @ eye, position + rotation @ target, rotation @ up
    view = client.computeViewMatrix(eye.tolist(), target.tolist(), up.tolist())
    projection = client.computeProjectionMatrixFOV(spec.fov_deg, width / height, NEAR_M, FAR_M)
    _, _, rgba, _, _ = client.getCameraImage(width, height, view, projection, renderer=client.ER_TINY_RENDERER,
                                             flags=client.ER_NO_SEGMENTATION_MASK)
    return np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[:, :, :3].copy()  # [H, W, 3]
