"""Session stage: the model engine on a worker thread, and the hand-off of its chunks to execution and safety.

    block_buffer --next_block()--> Session (worker thread) --engine.step--> chunk.decode_chunk --on_chunk-->
        Commander.submit --> execution.ChunkBroker --> safety.SafetyFilter --> send (the node's publishers)

`load_model` builds the engine from a checkpoint and checks that the checkpoint fits the embodiment (statistics keys
and sizes, action horizon, padded dims): a misfit is ONE ConfigError at configure, never a wrong motion later.

`Session` owns the engine (so the KV caches and current_start_frame): only its worker thread calls the engine.
It takes complete blocks from the block buffer (one frame after a reset, then frames_per_block frames), normalises
the state with the checkpoint's statistics (transforms.Normalizer), builds the prompt from the embodiment's
template, calls engine.step and decodes the chunk. There is never a queue of blocks: the block buffer keeps only the
newest frame sets, so when inference is slower than blocks arrive the newest block wins and the skipped blocks are
counted (`blocks_skipped`).

Reset rules: a new instruction, an explicit reset (`request_reset`) or a hold caused by stale observations start a
new episode: the block buffer's next block is a single frame, the engine re-encodes it and prefills its caches. The
engine also resets itself when its attention window is full. A chunk computed for an episode that was reset while
the model ran is discarded (`chunks_discarded`), never executed.

`Commander` is the session's downstream hand-off: it splices chunks into the executing plan, runs the safety stage
and decides what to send: a trajectory per new chunk, or (streaming interfaces) one setpoint per control tick; and a
hold, sent once, when the watchdog finds a stale stream, the plan runs out or a chunk is refused.

Latency is measured per stage under the names used here: `normalize_state`, `engine.<stage>` (the engine's own
timings: encode_first_frame, encode_prompt, prefill, encode_frames, append_observed, denoise, total),
`decode_chunk`, `inference` (block handed to the session -> chunk decoded), `execution`, `safety`, `send` and
`observation_to_command` (observation stamp -> command sent, on the node's clock).

Threading: `Session.run_once` runs on the worker thread only (`start` creates it; tests may call it directly with
the worker stopped). `set_instruction`, `request_reset`, `stats` and `latency` may be called from any thread.
`Commander.submit` (worker thread) and `Commander.tick` / `hold` (executor thread) serialise on one lock.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dreamzero_policy.block_buffer import Block, BlockBuffer
from dreamzero_policy.chunk import ActionChunk, decode_chunk
from dreamzero_policy.embodiment import Embodiment
from dreamzero_policy.errors import ConfigError, DreamZeroError, OutOfOrderStamp
from dreamzero_policy.execution import ChunkBroker
from dreamzero_policy.observation import JointObservation
from dreamzero_policy.params import PolicyConfig
from dreamzero_policy.safety import SafeCommand, SafetyFilter, hold_trajectory
from dreamzero_policy.transforms import Normalizer, VideoTransform, observation_vector, statistics_from_metadata

_log = logging.getLogger("dreamzero_policy.session")


# --- small helpers -------------------------------------------------------------------------------------------------

class RateLimitedLog:
    """Logs a message per key at most once per `period_s`, with the count of occurrences since the last line."""

    def __init__(self, logger: logging.Logger, period_s: float):
        self._log, self._period = logger, period_s
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: Counter = Counter()

    def __call__(self, key: str, level: int, message: str, *args) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._period:
                self._suppressed[key] += 1
                return
            self._last[key] = now
            suppressed, self._suppressed[key] = self._suppressed[key], 0
        if suppressed:
            message += f" [{suppressed} more since the last report]"
        self._log.log(level, message, *args)


class LatencyStats:
    """Rolling windows of per-stage durations (seconds); percentiles over the newest `window` samples."""

    def __init__(self, window: int = 200):
        self._window = window
        self._lock = threading.Lock()
        self._samples: dict[str, deque] = {}

    def record(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._samples.setdefault(stage, deque(maxlen=self._window)).append(float(seconds))

    def percentiles(self, stage: str, qs: tuple[float, ...] = (50, 90, 99)) -> tuple[float, ...]:
        """Percentiles of one stage (zeros before its first sample)."""
        with self._lock:
            samples = list(self._samples.get(stage, ()))
        if not samples:
            return tuple(0.0 for _ in qs)
        return tuple(float(v) for v in np.percentile(samples, qs))

    def summary(self) -> dict[str, tuple[float, float, float, int]]:
        """{stage: (p50, p90, p99, samples)} for every stage seen."""
        with self._lock:
            stages = {k: list(v) for k, v in self._samples.items()}
        return {k: (*(float(x) for x in np.percentile(v, (50, 90, 99))), len(v)) for k, v in sorted(stages.items())}


# --- the model -------------------------------------------------------------------------------------------------------

@dataclass
class LoadedModel:
    """An engine and everything derived from its checkpoint for one embodiment (built by `load_model`)."""

    engine: object  # model_core.engine.WorldActionEngine
    checkpoint: object  # model_core.checkpoint.Checkpoint
    normalizer: Normalizer
    video: VideoTransform
    embodiment: Embodiment
    device: str
    checkpoint_path: str
    model_name: str
    warmup_s: float = 0.0

    @property
    def frames_per_block(self) -> int:
        return self.engine.frames_per_block


def load_model(config: PolicyConfig, embodiment: Embodiment) -> LoadedModel:
    """Build the engine (model_core.factory.build_engine) and check that the checkpoint fits the embodiment.

    Raises ConfigError with one message naming the checkpoint, the embodiment and the first problem: a missing
    checkpoint, metadata.json without the embodiment's statistics entry or keys, statistics of the wrong size, or an
    action horizon / padded dims that differ from the embodiment's.
    """
    from model_core.errors import ModelCoreError
    from model_core.factory import build_engine

    if not config.checkpoint:
        raise ConfigError("parameter checkpoint", "a checkpoint directory", "''",
                          "set it with checkpoint:=<dir> (ros2 launch) or --checkpoint <dir>")
    path = Path(config.checkpoint).expanduser()
    if not path.exists():
        raise ConfigError("parameter checkpoint", "an existing checkpoint directory", str(path))
    device = config.resolved_device()
    try:
        engine, ckpt = build_engine(path, device=device, backend=config.backend,
                                    overrides={"engine": dict(config.engine_overrides)} if config.engine_overrides
                                    else None)
    except (ModelCoreError, OSError, ValueError, KeyError) as e:
        raise ConfigError("checkpoint", "a loadable DreamZero checkpoint", str(path),
                          f"{type(e).__name__}: {e}") from e
    # The Checkpoint still references the loaded tensors (on the CPU when the model went to a GPU): a second copy of
    # the weights for as long as the node runs. Only metadata and config are needed from here on.
    ckpt.state_dict = {}
    where = f"checkpoint {path} for embodiment {embodiment.name}"
    cfg = engine.dit.cfg
    try:
        statistics = statistics_from_metadata(ckpt.metadata or {}, embodiment.metadata_key)
        normalizer = Normalizer.from_statistics(statistics, embodiment, action_dim=cfg.action_dim,
                                                max_state_dim=cfg.max_state_dim)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e.field}", e.expected, e.actual, e.hint) from None
    if engine.action_horizon != embodiment.action_horizon:
        raise ConfigError(f"{where}: action_horizon", f"{engine.action_horizon} (the model's actions per chunk)",
                          embodiment.action_horizon)
    video = VideoTransform.from_embodiment(embodiment, engine.config.video_hw, config.view_hw)
    name = ckpt.extra.get("model_name") or ckpt.extra.get("_name_or_path") or f"dreamzero-{cfg.model_type}-" \
        f"{cfg.dim}x{cfg.num_layers}"
    return LoadedModel(engine, ckpt, normalizer, video, embodiment, device, str(path), str(name))


def warm_up(model: LoadedModel) -> float:
    """One dummy model step (black frame, home state) so the first real call does not pay for lazy init; the
    engine is reset afterwards. Returns its duration in seconds."""
    emb, engine = model.embodiment, model.engine
    h, w = engine.config.video_hw
    home = JointObservation(1, emb.home, None, emb.gripper_open)
    state = model.normalizer.state.normalize(observation_vector(emb.state, home, emb)).astype(np.float32)
    tic = time.perf_counter()
    engine.step(np.zeros((1, h, w, 3), np.uint8), state, emb.prompt.format("warm up"), emb.prompt.negative)
    engine.reset()
    model.warmup_s = time.perf_counter() - tic
    return model.warmup_s


def release_model(model: LoadedModel | None) -> None:
    """Drop the engine's tensors (cleanup); frees accelerator memory when the device is CUDA."""
    if model is None:
        return
    model.engine = None
    model.checkpoint = None
    if model.device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


# --- the session ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChunkResult:
    """One model call's chunk, ready for execution (ActionChunk message fields included)."""

    index: int  # chunks computed since the session was created
    chunk: ActionChunk  # absolute targets in robot units; anchor = the joint state at the block's last frame
    raw_actions: np.ndarray  # [T, A] the model's normalised output without padding
    block_index: int  # the block buffer's index (0 = the initial frame of an episode)
    session_call: int  # model calls since the last reset (0 = the call that reset)
    current_start_frame: int  # latent frame index of the denoised block
    reset_reason: str | None  # why this call reset the KV cache, or None
    instruction: str
    inference_s: float  # block handed to the session -> chunk decoded
    timings: dict[str, float] = field(default_factory=dict)


class Session:
    """The model session: see the module docstring for its rules and threading contract."""

    def __init__(self, model: LoadedModel, buffer: BlockBuffer,
                 on_chunk: Callable[[ChunkResult], None] | None = None, latency: LatencyStats | None = None,
                 logger: logging.Logger | None = None, log_period_s: float = 5.0):
        self.model, self.buffer, self.on_chunk = model, buffer, on_chunk
        self.on_block: Callable[[Block], None] | None = None  # observer: each block as it is handed to the model
        self.embodiment = model.embodiment
        self.latency = latency or LatencyStats()
        self._log = logger or _log
        self._rate_log = RateLimitedLog(self._log, log_period_s)
        self._lock = threading.Lock()
        self._instruction = ""
        self._prompt: str | None = None
        self._epoch = 0  # bumped by every reset request
        self._engine_epoch = -1  # the epoch the engine's caches belong to
        self._pending_reason: str | None = None
        self._calls = 0
        self._index = 0
        self._dropped_sets_seen = 0
        self._counts: Counter = Counter()
        self._resets: Counter = Counter()
        self._last_error = ""
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # --- control (any thread) ---
    @property
    def instruction(self) -> str:
        return self._instruction

    def set_instruction(self, text: str, force_reset: bool = False) -> bool:
        """Condition the policy on `text`; a changed prompt (or `force_reset`) starts a new episode.

        Returns True when the session was reset. Raises errors.InstructionError for an empty text.
        """
        prompt = self.embodiment.prompt.format(text)
        with self._lock:
            changed = prompt != self._prompt
            self._prompt, self._instruction = prompt, " ".join(text.split())
        if changed or force_reset:
            self.request_reset("instruction changed" if changed else "reset requested")
        return changed or force_reset

    def request_reset(self, reason: str) -> None:
        """Start a new episode: the next block is a single frame and the engine re-prefills its caches.

        A chunk that is being computed right now is discarded when it completes.
        """
        with self._lock:
            self._epoch += 1
            self._pending_reason = reason
            self._resets[reason] += 1
        self.buffer.reset()

    # --- worker ---
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dreamzero-session", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the worker (a model call in progress finishes and its chunk is discarded). True if it stopped."""
        self._stop.set()
        with self._lock:
            self._epoch += 1  # whatever is being computed now belongs to no episode
        thread, self._thread = self._thread, None
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout_s)
        if thread.is_alive():
            self._log.error("session worker did not stop within %.0f s (a model call is still running)", timeout_s)
            return False
        return True

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once(0.1)
            except Exception as e:  # the worker never dies: count, log, start a clean episode
                self._counts["errors"] += 1
                self._last_error = f"{type(e).__name__}: {e}"
                self._rate_log("session-error", logging.ERROR, "session: model call failed (%s); starting a new "
                               "episode", self._last_error)
                if not isinstance(e, DreamZeroError):
                    self._log.debug("session error", exc_info=True)
                self.request_reset("error")

    def run_once(self, timeout_s: float | None = 0.0) -> ChunkResult | None:
        """Take the next complete block (waiting up to `timeout_s`), run the model, decode and hand on the chunk."""
        block = self.buffer.next_block(timeout_s)
        if block is None:
            return None
        if self.on_block is not None:
            self.on_block(block)
        handed = time.perf_counter()
        self._count_skips()
        with self._lock:
            epoch, prompt, instruction = self._epoch, self._prompt, self._instruction
            if prompt is None:
                self._counts["blocks_without_instruction"] += 1
        if prompt is None:
            self._rate_log("no-instruction", logging.WARNING, "session: no instruction yet; the arm does not move "
                           "until one arrives (instruction topic or ~/set_instruction)")
            return None
        return self._step(block, epoch, prompt, instruction, handed)

    def _count_skips(self) -> None:
        """Frame sets the block buffer dropped (overtaken while the model ran), in whole blocks."""
        dropped = self.buffer.stats()["dropped_sets"]
        skipped = dropped // self.model.frames_per_block
        if dropped > self._dropped_sets_seen and skipped > self._counts["blocks_skipped"]:
            self._rate_log("skip", logging.WARNING, "session: inference is slower than blocks arrive; the newest "
                           "block wins (%d frame sets = %d blocks skipped so far)", dropped, skipped)
        self._dropped_sets_seen = dropped
        self._counts["blocks_skipped"] = skipped

    def _step(self, block: Block, epoch: int, prompt: str, instruction: str, handed: float) -> ChunkResult | None:
        emb, model, engine = self.embodiment, self.model, self.model.engine
        timings: dict[str, float] = {}
        if epoch != self._engine_epoch:
            engine.reset()
            self._engine_epoch = epoch
        tic = time.perf_counter()
        state = model.normalizer.state.normalize(observation_vector(emb.state, block.joint, emb))  # [S_max]
        timings["normalize_state"] = time.perf_counter() - tic
        out = engine.step(block.frames, state.astype(np.float32), prompt, emb.prompt.negative)
        timings.update({f"engine.{k}": v for k, v in out.timings.items()})
        tic = time.perf_counter()
        chunk = decode_chunk(out.actions, block.joint, model.normalizer, emb)
        timings["decode_chunk"] = time.perf_counter() - tic
        inference = time.perf_counter() - handed
        timings["inference"] = inference
        with self._lock:
            if epoch != self._epoch or self._stop.is_set():
                self._counts["chunks_discarded"] += 1
                return None
            reason = None
            if out.reset is not None:
                reason, self._pending_reason = self._pending_reason or out.reset, None
                self._calls = 0
                if out.reset == "window full":
                    self._resets["window full"] += 1
            else:
                self._calls += 1
            index, self._index = self._index, self._index + 1
            self._counts["chunks"] += 1
            session_call = self._calls
        for stage, seconds in timings.items():
            self.latency.record(stage, seconds)
        result = ChunkResult(index, chunk, np.asarray(out.actions[:, :model.normalizer.action.size], np.float32),
                             block.index, session_call, out.current_start_frame, reason, instruction, inference,
                             timings)
        if self.on_chunk is not None:
            self.on_chunk(result)
        return result

    # --- monitoring (any thread) ---
    def stats(self) -> dict[str, int]:
        """chunks, chunks_discarded, blocks_skipped, blocks_without_instruction, errors, resets (total)."""
        with self._lock:
            out = {k: int(self._counts[k]) for k in ("chunks", "chunks_discarded", "blocks_skipped",
                                                     "blocks_without_instruction", "errors")}
            out["resets"] = int(sum(self._resets.values()))
            return out

    def resets_by_reason(self) -> dict[str, int]:
        with self._lock:
            return dict(self._resets)

    @property
    def last_error(self) -> str:
        return self._last_error


# --- the hand-off to execution and safety --------------------------------------------------------------------------

class Commander:
    """Chunks -> execution -> safety -> `send`; the watchdog tick; holds sent once (see the module docstring).

    `streaming`: the controller takes single setpoints (JointState / Float64MultiArray): every tick sends the next
    target. Otherwise (JointTrajectory) a trajectory is sent per new chunk and the controller executes it.
    """

    def __init__(self, embodiment: Embodiment, broker: ChunkBroker, safety: SafetyFilter,
                 current: Callable[[], JointObservation | None], stream_stamps: Callable[[], Mapping[str, int | None]],
                 send: Callable[[SafeCommand, JointObservation], None], now_ns: Callable[[], int],
                 streaming: bool = False, on_hold: Callable[[tuple], None] | None = None,
                 latency: LatencyStats | None = None, logger: logging.Logger | None = None, log_period_s: float = 5.0):
        self.embodiment, self.broker, self.safety = embodiment, broker, safety
        self._current, self._stamps, self._send, self._now = current, stream_stamps, send, now_ns
        self.streaming = streaming
        self._on_hold = on_hold
        self.latency = latency or LatencyStats()
        self._log = logger or _log
        self._rate_log = RateLimitedLog(self._log, log_period_s)
        self._lock = threading.Lock()
        self.enabled = False
        self.holding = False
        self._counts: Counter = Counter()

    def enable(self) -> None:
        with self._lock:
            self.enabled, self.holding = True, False
            self.broker.clear()

    def disable(self, hold: bool = True) -> SafeCommand | None:
        """Stop sending (deactivate): sends one hold at the current position first when `hold`."""
        with self._lock:
            cmd = self._hold_now(("deactivated",)) if hold and self.enabled else None
            self.enabled = False
            return cmd

    def hold(self, why: str) -> SafeCommand | None:
        """Hold at the current position now (explicit reset); the next chunk resumes motion."""
        with self._lock:
            return self._hold_now((why,)) if self.enabled else None

    def submit(self, chunk: ActionChunk) -> SafeCommand | None:
        """A new chunk from the session: splice it into the plan and send what safety lets through."""
        with self._lock:
            if not self.enabled:
                return None
            now = self._now()
            tic = time.perf_counter()
            try:
                plan = self.broker.submit(chunk, now)
            except OutOfOrderStamp as e:
                self._counts["chunks_out_of_order"] += 1
                self._rate_log("chunk-order", logging.WARNING, "execution: chunk refused: %s", e)
                return None
            self.latency.record("execution", time.perf_counter() - tic)
            current = self._current()
            if current is None:
                return None
            tic = time.perf_counter()
            cmd = self.safety.apply(plan, current, now, self._stamps())
            self.latency.record("safety", time.perf_counter() - tic)
            self._dispatch(cmd, current, now, chunk.t_obs_ns)
            return cmd

    def tick(self) -> SafeCommand | None:
        """The control tick (executor thread, at the control rate): watchdog, end of plan, streaming setpoints."""
        with self._lock:
            if not self.enabled:
                return None
            now = self._now()
            current = self._current()
            if current is None:
                self._counts["ticks_without_joint_state"] += 1
                return None
            stamps = self._stamps()
            plan = self.broker.plan(now)
            stale = self.safety.watchdog.stale(now, stamps)
            exhausted = plan is not None and len(plan) == 0
            if not (stale or exhausted or (self.streaming and plan is not None)):
                return None
            if self.holding and (stale or plan is None):
                self.safety.apply(plan, current, now, stamps)  # keeps counting while stale; nothing is re-sent
                return None
            cmd = self.safety.apply(plan, current, now, stamps)
            self._dispatch(cmd, current, now, None)
            return cmd

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    # --- internals (lock held) ---
    def _dispatch(self, cmd: SafeCommand, current: JointObservation, now: int, t_obs_ns: int | None) -> None:
        if cmd.held:
            self.broker.clear()
            if self.holding:
                return
            self.holding = True
            self._counts["holds"] += 1
            self._emit(cmd, current)
            if self._on_hold is not None:
                self._on_hold(tuple(r.name for r in cmd.reasons))
            return
        self.holding = False
        self._emit(cmd, current)
        if t_obs_ns is not None:
            self.latency.record("observation_to_command", (self._now() - t_obs_ns) / 1e9)

    def _hold_now(self, why: tuple) -> SafeCommand | None:
        current = self._current()
        self.broker.clear()
        if current is None:
            return None
        cmd = hold_trajectory(current.positions, self._now(), self.embodiment.dt_ns)
        self.holding = True
        self._counts["holds"] += 1
        self._emit(cmd, current)
        return cmd

    def _emit(self, cmd: SafeCommand, current: JointObservation) -> None:
        tic = time.perf_counter()
        try:
            self._send(cmd, current)
        except Exception as e:
            self._counts["send_errors"] += 1
            self._rate_log("send", logging.ERROR, "sending a command failed: %s: %s", type(e).__name__, e)
        self.latency.record("send", time.perf_counter() - tic)
        self._counts["commands_sent"] += 1
