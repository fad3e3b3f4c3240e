"""The node's parameters: ONE schema, used by both middleware backends and turned into one typed config.

    values = load_params_file("config/franka_droid.params.yaml")     # {name: value} (ROS params-file format)
    values.update(cli_overrides)
    checked = validate(values)          # step 1: names, types, bounds -> a complete {name: value}; ConfigError
    config = to_config(checked)         # step 2: apply -> PolicyConfig (frozen) for the runtime

On rclpy every `ParamSpec` becomes a declared parameter with its description and range (`ros_descriptor`); on the
built-in DDS backend the same specs become command-line flags (`--num-steps 4`) and are read from the same YAML
files. Parameters are read at *configure*: a changed value takes effect at the next configure (deactivate, cleanup,
configure, activate); `startup_only` ones (middleware, instruction_topic, status_rate_hz) when the node is created.
The instruction itself can change any time through the instruction topic or service.

Every error names the parameter, the rule and the value (errors.ConfigError).
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dreamzero_policy.embodiment import Embodiment, parse_embodiment
from dreamzero_policy.errors import ConfigError

NODE_NAME = "dreamzero_policy"
DEFAULT_INSTRUCTION_TOPIC = "/dreamzero/instruction"
# Parameters every rclpy node declares by itself; accepted in parameter files, never declared by us.
ROS_BUILTIN_PARAMS = frozenset({"use_sim_time"})
_KIND = {bool: "a bool", int: "an int", float: "a float", str: "a string"}


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: name, type (bool, int, float or str), default, description and its rule.

    `low`/`high` bound numbers (inclusive); `choices` lists the valid strings; `pattern` is a regular expression a
    string must match in full. `zero_means` documents a 0 / "" default that selects another source (the checkpoint's
    or the embodiment's value).
    """

    name: str
    type: type
    default: Any
    description: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    pattern: str = ""
    startup_only: bool = False  # read once when the node is created (not at every configure); read-only on rclpy

    @property
    def rule(self) -> str:
        kind = _KIND[self.type]
        if self.choices:
            return f"one of {list(self.choices)}"
        if self.low is not None or self.high is not None:
            return f"{kind} in [{self.low}, {self.high}]"
        if self.pattern:
            return f"{kind} matching {self.pattern!r}"
        return kind


PARAMS: tuple[ParamSpec, ...] = (
    # --- what to run -------------------------------------------------------------------------------------------
    ParamSpec("checkpoint", str, "", "Checkpoint directory (config.json, model.safetensors, "
              "experiment_cfg/metadata.json with the normalisation statistics). Required to configure."),
    ParamSpec("embodiment", str, "franka_droid", "Embodiment name (config/embodiments/<name>.yaml) or a path "
              "to an embodiment YAML file.", pattern=r".+"),
    ParamSpec("device", str, "auto", "Compute device: auto (cuda if available, else cpu), cpu, cuda or cuda:N.",
              pattern=r"auto|cpu|cuda(:\d+)?"),
    ParamSpec("backend", str, "eager", "Inference backend of the DiT (model_core.backends): eager, "
              "int8_dynamic (CPU) ...", pattern=r"[a-z0-9_]+"),
    ParamSpec("middleware", str, "auto", "Middleware backend, chosen when the process starts: rclpy (a sourced "
              "ROS 2), dds (built-in, no ROS install) or auto (rclpy if it imports).",
              choices=("auto", "rclpy", "dds"), startup_only=True),
    # --- sampler (0 / false: keep the checkpoint's setting) -----------------------------------------------------
    ParamSpec("num_steps", int, 0, "Denoising steps per chunk; 0 keeps the checkpoint's (release: 16).",
              low=0, high=100),
    ParamSpec("cfg_scale", float, 0.0, "Classifier-free guidance scale on video; 1 disables the unconditional "
              "branch (half the DiT work); 0 keeps the checkpoint's (release: 5).", low=0.0, high=20.0),
    ParamSpec("num_dit_runs", int, -1, "DiT evaluations per chunk with step skipping (release: 8 of 16); 0 runs "
              "every step; -1 keeps the checkpoint's.", low=-1, high=100),
    ParamSpec("flash", bool, False, "true: one-step DreamZero-Flash sampling (only for Flash-trained "
              "checkpoints); false keeps the checkpoint's setting."),
    ParamSpec("view_hw", str, "", "Size HxW of one camera view before tiling (e.g. 160x320 for the 5B "
              "preset: views tiled to 320x640, then resized to the model's frame); empty: views tile the model's "
              "frame exactly.", pattern=r"(\d+x\d+)?"),
    ParamSpec("warmup", bool, True, "Run one dummy model step at configure (first-call latency off the control "
              "path)."),
    # --- task --------------------------------------------------------------------------------------------------
    ParamSpec("instruction", str, "", "Initial language instruction; empty: wait for one on the instruction "
              "topic or the ~/set_instruction service (no motion until then)."),
    ParamSpec("instruction_topic", str, DEFAULT_INSTRUCTION_TOPIC, "Latched std_msgs/String topic with the "
              "instruction (reliable, transient local).", pattern=r"[/~]?[A-Za-z_][A-Za-z0-9_/]*",
              startup_only=True),
    # --- timing and safety (0: the embodiment's value) ----------------------------------------------------------
    ParamSpec("control_rate_hz", float, 0.0, "Control rate override (actions per second); 0 keeps the "
              "embodiment's (the rate the model was trained at: change it only for a model trained so).",
              low=0.0, high=1000.0),
    ParamSpec("camera_stale_ms", float, 0.0, "A camera silent this long holds the arm; 0: the embodiment's.",
              low=0.0, high=60000.0),
    ParamSpec("joint_states_stale_ms", float, 0.0, "Joint states silent this long hold the arm; 0: the "
              "embodiment's.", low=0.0, high=60000.0),
    ParamSpec("inference_delay_ms", float, 0.0, "Chunks computed from observations older than this are refused "
              "(the arm holds); 0: the embodiment's. Must stay below the chunk duration.", low=0.0, high=60000.0),
    ParamSpec("block_lead_ms", float, 300.0, "Close each block this long before the executing chunk runs out, so "
              "the next chunk arrives in time (no pause at the seam): frames_per_block frames are sampled over "
              "(chunk duration - lead), a slightly faster video rate than training (5 fps -> 6.2 fps at 300 ms). "
              "Set it near the p90 inference latency; 0 keeps the training rate and pauses one latency per chunk.",
              low=0.0, high=60000.0),
    ParamSpec("crossfade_steps", int, 4, "Actions over which a new chunk fades in from the executing one.",
              low=0, high=64),
    # --- reporting ---------------------------------------------------------------------------------------------
    ParamSpec("status_rate_hz", float, 1.0, "Rate of ~/status (dreamzero_msgs/PolicyStatus) and /diagnostics.",
              low=0.1, high=50.0, startup_only=True),
    ParamSpec("log_period_s", float, 5.0, "A repeated problem (bad input, refusal) is logged at most once per "
              "period, with the count since the last line.", low=0.0, high=3600.0),
)

SPECS: dict[str, ParamSpec] = {p.name: p for p in PARAMS}


def defaults() -> dict[str, Any]:
    return {p.name: p.default for p in PARAMS}


# --- step 1: validate ------------------------------------------------------------------------------------------

def check_value(name: str, value: Any) -> Any:
    """One parameter's value checked (and an int widened to float); ConfigError names the rule and the value."""
    spec = SPECS.get(name)
    if spec is None:
        raise ConfigError(f"parameter {name!r}", f"one of {sorted(SPECS)}", "an unknown name")
    if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if spec.type is bool and not isinstance(value, bool) or \
            spec.type is not bool and (not isinstance(value, spec.type) or isinstance(value, bool)):
        raise ConfigError(f"parameter {name}", spec.rule, f"{value!r} ({type(value).__name__})")
    if spec.type is float and not math.isfinite(value):
        raise ConfigError(f"parameter {name}", f"a finite value, {spec.rule}", value)
    if spec.low is not None and value < spec.low or spec.high is not None and value > spec.high:
        raise ConfigError(f"parameter {name}", spec.rule, value)
    if spec.choices and value not in spec.choices:
        raise ConfigError(f"parameter {name}", spec.rule, repr(value))
    if spec.pattern and not re.fullmatch(spec.pattern, value):
        raise ConfigError(f"parameter {name}", spec.rule, repr(value))
    return value


def validate(values: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter checked; missing ones take their defaults. ROS's own parameters (use_sim_time) are dropped.

    Rules that involve more than one value are checked here too (cfg_scale 0 or >= 1).
    """
    out = defaults()
    for name, value in values.items():
        if name in ROS_BUILTIN_PARAMS:
            continue
        out[name] = check_value(name, value)
    if 0.0 < out["cfg_scale"] < 1.0:
        raise ConfigError("parameter cfg_scale", "0 (the checkpoint's) or >= 1", out["cfg_scale"])
    return out


# --- step 2: apply -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PolicyConfig:
    """The runtime's typed configuration, built from validated parameters by `to_config`."""

    checkpoint: str
    embodiment: str
    device: str
    backend: str
    middleware: str
    engine_overrides: dict[str, Any] = field(default_factory=dict)  # EngineConfig fields for build_engine
    view_hw: tuple[int, int] | None = None
    warmup: bool = True
    instruction: str = ""
    instruction_topic: str = DEFAULT_INSTRUCTION_TOPIC
    control_rate_hz: float | None = None  # None: the embodiment's
    staleness_ms: dict[str, float] = field(default_factory=dict)  # overrides of Embodiment.staleness fields
    block_lead_ms: float = 300.0
    crossfade_steps: int = 4
    status_period_s: float = 1.0
    log_period_s: float = 5.0

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def to_config(checked: Mapping[str, Any]) -> PolicyConfig:
    """Validated parameters -> PolicyConfig. Sentinels (0, -1, false, "") select the checkpoint's or the
    embodiment's own value, so only what the user set overrides them."""
    engine: dict[str, Any] = {}
    if checked["num_steps"] > 0:
        engine["num_steps"] = checked["num_steps"]
    if checked["cfg_scale"] > 0:
        engine["cfg_scale"] = checked["cfg_scale"]
    if checked["num_dit_runs"] >= 0:
        engine["num_dit_runs"] = checked["num_dit_runs"] or None
    if checked["flash"]:
        engine["flash"] = True
    view_hw = None
    if checked["view_hw"]:
        h, w = (int(v) for v in checked["view_hw"].split("x"))
        if h <= 0 or w <= 0:
            raise ConfigError("parameter view_hw", "positive sizes HxW", checked["view_hw"])
        view_hw = (h, w)
    staleness = {key: checked[name] for key, name in (("camera_ms", "camera_stale_ms"),
                                                       ("joint_states_ms", "joint_states_stale_ms"),
                                                       ("inference_delay_ms", "inference_delay_ms"))
                 if checked[name] > 0}
    return PolicyConfig(
        checkpoint=checked["checkpoint"], embodiment=checked["embodiment"], device=checked["device"],
        backend=checked["backend"], middleware=checked["middleware"], engine_overrides=engine, view_hw=view_hw,
        warmup=checked["warmup"], instruction=checked["instruction"], instruction_topic=checked["instruction_topic"],
        control_rate_hz=checked["control_rate_hz"] or None, staleness_ms=staleness,
        block_lead_ms=checked["block_lead_ms"], crossfade_steps=checked["crossfade_steps"], status_period_s=1.0 / checked["status_rate_hz"],
        log_period_s=checked["log_period_s"])


def apply_overrides(embodiment: Embodiment, config: PolicyConfig) -> Embodiment:
    """The embodiment with the config's control-rate and staleness overrides, validated again (so e.g. an
    inference delay longer than the chunk is refused with the embodiment's own message)."""
    if config.control_rate_hz is None and not config.staleness_ms:
        return embodiment
    data = embodiment.model_dump()
    if config.control_rate_hz is not None:
        data["control_rate_hz"] = config.control_rate_hz
    data["staleness"].update(config.staleness_ms)
    return parse_embodiment(data, source=f"{embodiment.name} (with parameter overrides)")


# --- sources of values -------------------------------------------------------------------------------------------

def node_section(document: Any, node_name: str = NODE_NAME, namespace: str = "/") -> dict[str, Any]:
    """The `ros__parameters` of a ROS 2 parameter file that apply to the node: wildcard keys (`/**`, `**`), then
    the node's name, then its fully qualified name (later ones win)."""
    if not isinstance(document, Mapping):
        raise ConfigError("parameter file", "a mapping of node names to {ros__parameters: ...}",
                          type(document).__name__)
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    keys = ("/**", "**", node_name, f"/{node_name}", f"{ns}/{node_name}", f"{ns.lstrip('/')}/{node_name}")
    values: dict[str, Any] = {}
    for key in dict.fromkeys(keys):
        entry = document.get(key)
        if entry is None:
            continue
        if not isinstance(entry, Mapping) or not isinstance(entry.get("ros__parameters", {}), Mapping):
            raise ConfigError(f"parameter file: {key}", "a mapping with 'ros__parameters'", repr(entry)[:80])
        values.update(entry.get("ros__parameters") or {})
    return values


def load_params_file(path: str | Path, node_name: str = NODE_NAME, namespace: str = "/") -> dict[str, Any]:
    """The node's parameters from a ROS 2 parameter YAML file (values not validated yet)."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError("parameter file", "a readable file", str(path), e.strerror or "") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"parameter file {path.name}", "valid YAML", str(e).replace("\n", " ")) from e
    return node_section(document or {}, node_name, namespace)


def parse_text_value(name: str, text: str) -> Any:
    """A command-line value (`--num-steps 4`, `-p num_steps:=4`) converted to the parameter's type."""
    spec = SPECS.get(name)
    if spec is None:
        raise ConfigError(f"parameter {name!r}", f"one of {sorted(SPECS)}", "an unknown name")
    if spec.type is str:
        return text
    if spec.type is bool:
        lowered = text.strip().lower()
        if lowered not in ("true", "false"):
            raise ConfigError(f"parameter {name}", "true or false", repr(text))
        return lowered == "true"
    try:
        return spec.type(text)
    except ValueError:
        raise ConfigError(f"parameter {name}", spec.rule, repr(text)) from None


def cli_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parameter_names() -> Iterable[str]:
    return SPECS.keys()


# --- rclpy ----------------------------------------------------------------------------------------------------------

def ros_descriptor(spec: ParamSpec):
    """rcl_interfaces/ParameterDescriptor for a spec (rclpy only; imported lazily)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

    kind = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
            float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}[spec.type]
    descriptor = ParameterDescriptor(name=spec.name, type=kind, description=spec.description,
                                     read_only=spec.startup_only, additional_constraints=spec.rule)
    if spec.type is int and (spec.low is not None or spec.high is not None):
        descriptor.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
    if spec.type is float and (spec.low is not None or spec.high is not None):
        descriptor.floating_point_range = [FloatingPointRange(from_value=float(spec.low),
                                                              to_value=float(spec.high), step=0.0)]
    return descriptor
