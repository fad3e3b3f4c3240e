"""dreamzero_policy: an ament_python ROS 2 package that is also pip-installable.

`pip install -e .[dev]` installs the importable packages `model_core`, `dreamzero_policy` and `sim`
without ROS; `colcon build` (see ros2_ws/) installs the same code as a ROS 2 package.
ROS-only dependencies (rclpy, launch_ros, cv_bridge) are rosdep keys in package.xml, never pip requirements.
"""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "dreamzero_policy"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="DreamZero world-action model as a real-time ROS 2 arm controller",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["model_core", "model_core.*", "dreamzero_policy", "dreamzero_policy.*",
                                    "sim", "sim.*"]),
    package_data={"sim": ["assets/*"], "dreamzero_policy": ["msg_defs/*.xml", "msg_defs/msg/*.msg", "msg_defs/srv/*.srv",
                                                            "middleware/*.xml", "ros_interfaces/README.md",
                                                            "ros_interfaces/*/*/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/config/embodiments", glob("config/embodiments/*.yaml")),
    ],
    install_requires=[
        "torch>=2.4",
        "numpy>=1.24",
        "safetensors>=0.4",
        "pyyaml>=6",
        "pydantic>=2.5",
        "opencv-python-headless>=4.8",
        "transforms3d>=0.4",
        "rosbags>=0.10",
        "cyclonedds>=0.10.5",
        "mcap>=1.1",
        "tqdm>=4.60",
    ],
    extras_require={
        "encoders": ["diffusers>=0.32", "transformers>=4.45", "sentencepiece", "ftfy"],
        "sim": ["pybullet>=3.2.6", "av>=12", "pyarrow>=14"],
        "train": ["tensorboard>=2.14", "av>=12", "pyarrow>=14", "diffusers>=0.32", "transformers>=4.45", "sentencepiece",
                  "ftfy"],
        "report": ["matplotlib>=3.7"],
        "tensorrt": ["tensorrt"],
        "dev": ["pytest>=7", "hypothesis>=6", "diffusers>=0.32", "transformers>=4.45", "sentencepiece", "ftfy",
                "pybullet>=3.2.6", "av>=12", "pyarrow>=14", "tensorboard>=2.14", "matplotlib>=3.7"],
    },
    entry_points={
        "console_scripts": [
            # `ros2 run dreamzero_policy policy_node` (with ROS) and `dreamzero-policy` (without ROS) start the same node.
            "policy_node = dreamzero_policy.node:main",
            "dreamzero-policy = dreamzero_policy.node:main",
            "dreamzero-verify = model_core.verify:main",
            "dreamzero-sim = sim.serve:main",
            "dreamzero-sim-record = sim.record:main",
            "dreamzero-sim-eval = sim.evaluate:main",
            "dreamzero-replay = dreamzero_policy.replay:main",
            "dreamzero-train = model_core.training.train:main",
            "dreamzero-fit-vae = model_core.training.fit_vae:main",
            "dreamzero-average-checkpoints = model_core.training.average:main",
        ],
    },
)
