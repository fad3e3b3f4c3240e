"""Replay reports: JSON for machines, one self-contained HTML page (plots inlined as base64 PNG) for people.

JSON (`report.json`, format `dreamzero-replay-report/1`): see `report_json` for the fields. Units: joint errors in
joint units (rad; m for prismatic joints and fingers), times in seconds (bag time from the replay's first message
unless named *_ns), latencies in seconds.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dreamzero_policy.replay.metrics import ErrorAccumulator, percentiles

FORMAT = "dreamzero-replay-report/1"
SUMMARY_FORMAT = "dreamzero-replay-summary/1"
MAX_PLOTTED_CHUNKS = 300
REFUSAL_FIELDS = ("refusals_nan", "refusals_limit_clamp", "refusals_step_clamp", "refusals_stale_observation",
                  "refusals_stale_chunk", "refusals_malformed_image", "refusals_bad_joint_state",
                  "refusals_out_of_order_stamps", "refusals_exception", "refusals_total")


def _clean(value: Any) -> Any:
    """JSON-safe: NaN / inf -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def report_json(result) -> dict[str, Any]:
    """The machine-readable report of one ReplayResult."""
    emb, options = result.embodiment, result.options
    t0 = result.range_ns[0]
    metrics = result.errors.summary(emb.joint_names)
    units = {j: "rad" for j in emb.joint_names} | {g: "m (joint units)" for g in emb.gripper_joints}
    metrics["units"] = units
    metrics["executed"] = result.executed_errors
    latencies = [c.latency_s for c in result.chunks]
    psnrs = [v for p in result.video for v in p.psnr_db if math.isfinite(v)]
    ssims = [v for p in result.video for v in p.ssim]
    return _clean({
        "format": FORMAT,
        "bag": result.bag.to_json(),
        "replay": {
            "embodiment": emb.name, "ground_truth": options.ground_truth,
            "inference_delay_ms": options.inference_delay_ms, "stamps": options.stamps,
            "topic_map": dict(options.topic_map), "range_s": [options.start_s, options.end_s],
            "range_ns": list(result.range_ns), "control_rate_hz": emb.control_rate_hz,
            "action_horizon": emb.action_horizon, "node_params": dict(options.node_params),
            **result.timing,
        },
        "model": result.model,
        "chunks": {"computed": len(result.chunks),
                   "scored": result.errors.chunks,
                   "discarded_in_flight": result.replay_counters.get("chunks_discarded_in_flight", 0),
                   "due_after_end": result.replay_counters.get("chunks_due_after_end", 0)},
        "metrics": metrics,
        "latency_s": {"inference": percentiles(latencies), "stages": result.latency_stages},
        "safety": {"refusals": {k: result.status.get(k) for k in REFUSAL_FIELDS}, "counters": result.safety,
                   "holds": result.counters.get("commander.holds", 0)},
        "node": {"status": result.status, "counters": result.counters},
        "replay_counters": result.replay_counters,
        "inference_points": [
            {"chunk_index": c.index, "t_s": (c.t_inference_ns - t0) / 1e9, "t_obs_s": (c.t_obs_ns - t0) / 1e9,
             "t_delivered_s": None if c.t_delivered_ns is None else (c.t_delivered_ns - t0) / 1e9,
             "latency_s": c.latency_s, "fate": c.fate, "reset": c.reset_reason, "session_call": c.session_call,
             "block_index": c.block_index} for c in result.chunks],
        "video": {"enabled": options.decode_video, "note": result.video_note, "pairs": len(result.video),
                  "psnr_db": {"mean": float(np.mean(psnrs)) if psnrs else None,
                              "per_pair": [float(np.mean(p.psnr_db)) for p in result.video]},
                  "ssim": {"mean": float(np.mean(ssims)) if ssims else None,
                           "per_pair": [float(np.mean(p.ssim)) for p in result.video]},
                  "pair_t_s": [(p.t_ns - t0) / 1e9 for p in result.video]},
        "output_bag": result.output,
        "warnings": result.warnings,
    })


def summary_row(report: dict[str, Any], name: str) -> dict[str, Any]:
    """One line of the aggregate table, from a bag's JSON report."""
    metrics, latency = report["metrics"], report["latency_s"]["inference"]
    grippers = [g["agreement"] for g in metrics["gripper"].values() if g["agreement"] is not None]
    return {"bag": name, "recorded_s": report["replay"]["recorded_s"], "chunks": report["chunks"]["computed"],
            "arm_mae": metrics["arm"]["mae"], "arm_rmse": metrics["arm"]["rmse"],
            "final_step_error": metrics["arm"]["final_step_error"],
            "gripper_agreement": float(np.mean(grippers)) if grippers else None,
            "latency_p50_s": latency["p50"], "latency_p90_s": latency["p90"],
            "refusals": report["safety"]["refusals"]["refusals_total"], "speed": report["replay"]["speed"]}


def aggregate(rows: Sequence[dict[str, Any]], accumulators: Sequence[ErrorAccumulator],
              latencies: Sequence[float], arm_joints: Sequence[str]) -> dict[str, Any]:
    """Pooled metrics over several bags (exact: sums are merged, not averages of averages)."""
    pooled = None
    for acc in accumulators:
        if pooled is None:
            pooled = ErrorAccumulator(acc.joints, acc.horizon, acc.gripper_joints)
        if acc.joints == pooled.joints and acc.horizon == pooled.horizon:
            pooled.merge(acc)
    out: dict[str, Any] = {"bags": len(rows), "recorded_s": sum(r["recorded_s"] or 0 for r in rows),
                           "chunks": sum(r["chunks"] for r in rows),
                           "refusals": sum(r["refusals"] or 0 for r in rows),
                           "latency_s": percentiles(latencies)}
    if pooled is not None:
        s = pooled.summary(arm_joints)
        grippers = [g["agreement"] for g in s["gripper"].values() if g["agreement"] is not None]
        out.update({"arm_mae": s["arm"]["mae"], "arm_rmse": s["arm"]["rmse"],
                    "final_step_error": s["arm"]["final_step_error"],
                    "gripper_agreement": float(np.mean(grippers)) if grippers else None, "metrics": s})
    return _clean(out)


def format_table(rows: Sequence[dict[str, Any]], total: dict[str, Any] | None = None) -> str:
    """The aggregate table printed by the CLI."""
    head = ("bag", "rec s", "chunks", "arm MAE", "arm RMSE", "final err", "gripper", "p50 ms", "p90 ms",
            "refusals", "speed x")

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = []
    for r in list(rows) + ([dict(total, bag="all", speed=None, latency_p50_s=total["latency_s"]["p50"],
                                 latency_p90_s=total["latency_s"]["p90"])] if total else []):
        lines.append((str(r["bag"]), num(r["recorded_s"], ".1f"), str(r["chunks"]), num(r.get("arm_mae"), ".4f"),
                      num(r.get("arm_rmse"), ".4f"), num(r.get("final_step_error"), ".4f"),
                      num(r.get("gripper_agreement"), ".3f"),
                      num(None if r.get("latency_p50_s") is None else r["latency_p50_s"] * 1e3, ".1f"),
                      num(None if r.get("latency_p90_s") is None else r["latency_p90_s"] * 1e3, ".1f"),
                      num(r.get("refusals"), "d"), num(r.get("speed"), ".2f")))
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    out = [fmt(head), fmt(["-" * w for w in widths])]
    for i, line in enumerate(lines):
        if total and i == len(lines) - 1:
            out.append(fmt(["-" * w for w in widths]))
        out.append(fmt(line))
    return "\n".join(out) + "\n(errors in rad for arm joints; MAE/RMSE pooled over chunks, steps and arm joints; " \
                            "speed = recorded seconds per wall second)"


# --- HTML -----------------------------------------------------------------------------------------------------

def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(data: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _joint_figure(result) -> str:
    import matplotlib.pyplot as plt

    emb, t0 = result.embodiment, result.range_ns[0]
    joints = result.joints
    cols = 2
    rows = math.ceil(len(joints) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.3 * rows), squeeze=False, sharex=True)
    grid = np.arange(result.range_ns[0], result.range_ns[1] + 1, max(emb.dt_ns // 2, 1), dtype=np.int64)
    truth, valid = result.ground_truth.sample(grid)
    executed, executed_valid = result.executed.sample(grid)
    x = (grid - t0) / 1e9
    stride = max(1, math.ceil(len(result.chunks) / MAX_PLOTTED_CHUNKS))  # long bags: a readable, fast plot
    for k, joint in enumerate(joints):
        ax = axes[k // cols][k % cols]
        ax.plot(x, np.where(valid[:, k], truth[:, k], np.nan), color="black", lw=1.4,
                label=f"recorded ({result.options.ground_truth})")
        ax.plot(x, np.where(executed_valid[:, k], executed[:, k], np.nan), color="tab:blue", lw=1.0, ls="--",
                label="would have commanded")
        for n, c in enumerate(result.chunks[::stride]):
            times = (c.t_obs_ns + (np.arange(len(c.predicted)) + 1) * emb.dt_ns - t0) / 1e9
            ax.plot(times, c.predicted[:, k], color="tab:orange", lw=0.9, alpha=0.8,
                    label="predicted chunks" if n == 0 else None)
            ax.plot([(c.t_obs_ns - t0) / 1e9], [c.anchor[k]], "o", color="tab:red", ms=3,
                    label="inference points (observation)" if n == 0 else None)
            ax.axvline((c.t_inference_ns - t0) / 1e9, color="tab:red", lw=0.5, alpha=0.3)
        ax.set_title(joint, fontsize=9)
        ax.tick_params(labelsize=7)
    for k in range(len(joints), rows * cols):
        axes[k // cols][k % cols].axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("bag time [s]", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return _png(fig)


def _horizon_figure(result, metrics: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.4))
    per = np.array([[np.nan if v is None else v for v in row] for row in metrics["per_step_per_joint"]["mae"]])
    steps = np.arange(1, per.shape[0] + 1)
    for k, joint in enumerate(result.joints):
        ax.plot(steps, per[:, k], lw=0.9, alpha=0.7, label=joint)
    ax.plot(steps, [np.nan if v is None else v for v in metrics["per_step"]["mae"]], color="black", lw=2.0,
            label="arm MAE")
    ax.plot(steps, [np.nan if v is None else v for v in metrics["per_step"]["rmse"]], color="black", lw=1.5,
            ls="--", label="arm RMSE")
    ax.set_xlabel("horizon step (1 = first action of the chunk)")
    ax.set_ylabel("error [joint units]")
    ax.legend(fontsize=7, ncol=3)
    ax.grid(alpha=0.3)
    return _png(fig)


def _latency_figure(result) -> str | None:
    latencies = [c.latency_s * 1e3 for c in result.chunks]
    if not latencies:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.hist(latencies, bins=min(30, max(5, len(latencies) // 2)), color="tab:gray")
    ax.set_xlabel("inference latency [ms] (measured, wall clock)")
    ax.set_ylabel("model calls")
    return _png(fig)


def _video_figures(result) -> list[tuple[str, str]]:
    import matplotlib.pyplot as plt

    out = []
    t0 = result.range_ns[0]
    if result.video:
        fig, ax = plt.subplots(1, 2, figsize=(10, 2.6))
        t = [(p.t_ns - t0) / 1e9 for p in result.video]
        ax[0].plot(t, [np.mean(p.psnr_db) for p in result.video], "o-")
        ax[0].set_ylabel("PSNR [dB]")
        ax[1].plot(t, [np.mean(p.ssim) for p in result.video], "o-", color="tab:green")
        ax[1].set_ylabel("SSIM")
        for a in ax:
            a.set_xlabel("bag time of the real block [s]")
            a.grid(alpha=0.3)
        out.append((_png(fig), "PSNR and SSIM of the imagined vs the real next block"))
    for pair in [p for p in result.video if p.real is not None]:
        frames = len(pair.real)
        fig, axes = plt.subplots(2, frames, figsize=(1.6 * frames, 2.2), squeeze=False)
        for i in range(frames):
            for row, (images, name) in enumerate(((pair.real, "real"), (pair.imagined, "imagined"))):
                axes[row][i].imshow(images[i])
                axes[row][i].set_xticks([])
                axes[row][i].set_yticks([])
                if i == 0:
                    axes[row][i].set_ylabel(name, fontsize=8)
            axes[0][i].set_title(f"{pair.psnr_db[i]:.1f} dB / {pair.ssim[i]:.2f}", fontsize=6)
        fig.suptitle(f"model call {pair.call}: imagined next block vs recorded (t = {(pair.t_ns - t0) / 1e9:.2f} s)",
                     fontsize=8)
        out.append((_png(fig), f"imagined vs real frames, call {pair.call}"))
    return out


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1250px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#f3f3f3}td{text-align:right}td:first-child{text-align:left}img{max-width:100%}
h2{border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:1.6em}.note{color:#666;font-size:13px}
code{background:#f6f6f6;padding:1px 4px}"""


def report_html(result, report: dict[str, Any]) -> str:
    """The self-contained HTML page of one replay."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    metrics, replay, bag = report["metrics"], report["replay"], report["bag"]
    latency = report["latency_s"]["inference"]
    esc = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>DreamZero replay: {esc(bag['path'])}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>DreamZero replay</h1><p><code>{esc(bag['path'])}</code> ({esc(bag['storage'])}) through "
             f"<code>{esc(str(report['model'].get('name')))}</code> for embodiment <b>{esc(replay['embodiment'])}</b>"
             f"; ground truth: recorded {esc(replay['ground_truth'])}; simulated inference delay "
             f"{esc(str(replay['inference_delay_ms']))} ms; stamps: {esc(replay['stamps'])}.</p>"]
    gripper = [g["agreement"] for g in metrics["gripper"].values() if g["agreement"] is not None]
    parts.append("<h2>Summary</h2>" + _table(
        ("recorded s", "wall s", "speed x", "chunks", "arm MAE [rad]", "arm RMSE [rad]", "final-step error [rad]",
         "gripper agreement", "latency p50 / p90 / p99 [ms]", "safety refusals", "holds"),
        [(replay["recorded_s"], replay["replay_wall_s"], replay["speed"], report["chunks"]["computed"],
          metrics["arm"]["mae"], metrics["arm"]["rmse"], metrics["arm"]["final_step_error"],
          float(np.mean(gripper)) if gripper else None,
          " / ".join("-" if latency[k] is None else f"{latency[k] * 1e3:.1f}" for k in ("p50", "p90", "p99")),
          report["safety"]["refusals"]["refusals_total"], report["safety"]["holds"])]))
    rows = []
    for joint in metrics["joints"]:
        m = metrics["per_joint"][joint]
        ex = metrics["executed"].get(joint, {})
        rows.append((joint, metrics["units"][joint], m["mae"], m["rmse"], m["final_step_error"], m["mean_error"],
                     m["max_abs_error"], m["samples"], ex.get("mae"), ex.get("rmse"),
                     metrics["gripper"].get(joint, {}).get("agreement")))
    parts.append("<h2>Per joint</h2><p class='note'>Predicted chunk targets (after chunk decoding, before the "
                 "splice and safety) against the recorded ground truth at each action's due time; "
                 "'commanded' compares what the node would have sent (after splice and safety) on the control "
                 "grid.</p>" + _table(("joint", "unit", "MAE", "RMSE", "final-step error", "mean error (bias)",
                                        "max |error|", "samples", "commanded MAE", "commanded RMSE",
                                        "gripper agreement"), rows))
    stride = max(1, math.ceil(len(result.chunks) / MAX_PLOTTED_CHUNKS))
    parts.append("<h2>Predicted vs recorded</h2><p class='note'>Black: the recorded ground truth; orange: each "
                 "predicted chunk at its actions' due times" + (f" (every {stride}th chunk drawn)" if stride > 1
                                                               else "") +
                 "; red dots: the observation each chunk was computed from; red lines: when the model ran; blue: "
                 "what the node would have commanded.</p>" + _img(_joint_figure(result),
                                                                   "predicted vs recorded per joint"))
    parts.append("<h2>Error vs horizon step</h2>" + _img(_horizon_figure(result, metrics), "error vs horizon"))
    parts.append("<h2>Latency</h2><p class='note'>Measured wall-clock time per model call (block handed to the "
                 "session until the chunk is decoded); the action timing used the simulated delay.</p>")
    fig = _latency_figure(result)
    if fig:
        parts.append(_img(fig, "latency histogram"))
    stages = report["latency_s"]["stages"]
    parts.append(_table(("stage", "p50 ms", "p90 ms", "p99 ms", "n"),
                        [(k, v["p50"] * 1e3, v["p90"] * 1e3, v["p99"] * 1e3, v["n"]) for k, v in stages.items()]))
    parts.append("<h2>Safety</h2><p class='note'>The node's SafetyFilter counters and PolicyStatus refusal fields, "
                 "counted exactly as on the robot.</p>" +
                 _table(("counter", "count"), [*report["safety"]["counters"].items(),
                                               *report["safety"]["refusals"].items()]))
    parts.append("<h2>Imagined video</h2>")
    if report["video"]["pairs"]:
        parts.append(f"<p>{report['video']['pairs']} pairs; mean PSNR {report['video']['psnr_db']['mean']:.2f} dB, "
                     f"mean SSIM {report['video']['ssim']['mean']:.3f} (the model's imagined next block, decoded "
                     "with its VAE, against the frames the cameras recorded).</p>")
        for data, alt in _video_figures(result):
            parts.append(_img(data, alt))
    else:
        parts.append(f"<p class='note'>{esc(report['video']['note'] or 'none')}</p>")
    out = report["output_bag"]
    if out:
        parts.append("<h2>Output bag</h2><p><code>" + esc(out["path"]) + f"</code> ({esc(out['storage'])}, "
                     "metadata version 9)</p>" +
                     _table(("topic", "type", "messages"), [(t, v["type"], v["count"])
                                                            for t, v in out["topics"].items()]))
    parts.append("<h2>Counters</h2><details><summary>node counters</summary>" +
                 _table(("counter", "value"), sorted(report["node"]["counters"].items())) + "</details>"
                 "<details><summary>replay counters</summary>" +
                 _table(("counter", "value"), sorted(report["replay_counters"].items())) + "</details>"
                 "<details><summary>input bag</summary>" +
                 _table(("topic", "type", "messages"), [(t, v["type"], v["count"])
                                                        for t, v in bag["topics"].items()]) + "</details>")
    if report["warnings"]:
        parts.append("<h2>Warnings</h2><ul>" + "".join(f"<li>{esc(w)}</li>" for w in report["warnings"]) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def summary_html(rows: Sequence[dict[str, Any]], total: dict[str, Any], links: Sequence[str]) -> str:
    table_rows = []
    for row, link in zip(rows, links):
        table_rows.append((row["bag"], row["recorded_s"], row["chunks"], row["arm_mae"], row["arm_rmse"],
                           row["final_step_error"], row["gripper_agreement"], row["refusals"], row["speed"]))
    body = _table(("bag", "recorded s", "chunks", "arm MAE", "arm RMSE", "final-step error", "gripper agreement",
                   "refusals", "speed x"), table_rows)
    for row, link in zip(rows, links):
        body = body.replace(f"<td>{html.escape(str(row['bag']))}</td>",
                            f"<td><a href='{html.escape(link)}'>{html.escape(str(row['bag']))}</a></td>", 1)
    pooled = _table(("bags", "recorded s", "chunks", "arm MAE", "arm RMSE", "final-step error", "gripper agreement",
                     "refusals"), [(total["bags"], total["recorded_s"], total["chunks"], total.get("arm_mae"),
                                    total.get("arm_rmse"), total.get("final_step_error"),
                                    total.get("gripper_agreement"), total["refusals"])])
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>DreamZero replay summary</title>"
            f"<style>{_CSS}</style></head><body><h1>DreamZero replay summary</h1>{body}<h2>All bags (pooled)</h2>"
            f"{pooled}</body></html>")


def write_report(result, directory: Path, html_page: bool = True) -> dict[str, Any]:
    """report.json (+ report.html) into `directory`; returns the JSON report."""
    report = report_json(result)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False))
    if html_page:
        (directory / "report.html").write_text(report_html(result, report))
    return report
