"""`python -m sim.demo` end to end: the sim and the policy node as separate processes over DDS on loopback, two
reach episodes of the bundled policy, the report, and no process left behind (also after SIGTERM)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("pybullet")
pytest.importorskip("cyclonedds")

REPO = Path(__file__).resolve().parents[2]


def demo_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A pid that still exists may be a zombie of another parent or a reused pid: look at its state and command.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return True
    return stat.split(") ")[-1].startswith("Z") or ("sim.serve" not in cmdline and "dreamzero_policy" not in cmdline)


@pytest.mark.slow
def test_demo_runs_two_episodes_and_cleans_up(tmp_path):
    from sim.video import read_mp4

    out = tmp_path / "demo"
    tic = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "sim.demo", "--episodes", "2", "--out", str(out)], cwd=REPO,
                          env=demo_env(), capture_output=True, text=True, timeout=150)
    elapsed = time.monotonic() - tic
    assert proc.returncode == 0, f"demo failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    assert elapsed < 90, f"demo took {elapsed:.0f} s"
    assert re.search(r"demo: success \d/2 = \d+% \(Wilson 95% CI \d+-\d+%\); chunk latency mean", proc.stdout)

    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["episodes"] == 2 and report["seeds"] == [10000, 10001]
    assert 0.0 <= report["summary"]["wilson95"][0] <= report["summary"]["success_rate"] <= \
        report["summary"]["wilson95"][1] <= 1.0
    assert report["summary"]["chunk_latency"]["n"] >= 2 and report["summary"]["chunk_latency"]["mean_ms"] > 0
    assert report["sampling"] == "Flash 1-step sampling"
    assert report["training"].startswith("trained on 1170 episodes of sim_reach_miss_1200")
    assert all(row["chunks"] >= 1 for row in report["episodes"])
    assert report["node_counters"]["session.chunks"] >= 2
    assert "Success:" in (out / "report.md").read_text()
    frames = read_mp4(out / report["video"])
    assert frames.shape[0] >= 10 and frames.shape[1:] == (90, 480, 3)  # three 90x160 cameras side by side
    for name, pid in report["pids"].items():
        assert gone(pid), f"{name} process {pid} still running"


@pytest.mark.slow
def test_demo_stops_its_processes_when_terminated(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "sim.demo", "--episodes", "50", "--out", str(tmp_path / "demo")],
                            cwd=REPO, env=demo_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pids, lines = [], []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if m := re.search(r"started sim \(pid (\d+)\) and policy node \(pid (\d+)\)", line):
                pids = [int(m.group(1)), int(m.group(2))]
            if "node active" in line:
                break
        assert len(pids) == 2, "".join(lines)
        assert not any(gone(p) for p in pids)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=40)
        assert proc.returncode == 130, "".join(lines) + rest
        assert "interrupted" in rest
        assert all(gone(p) for p in pids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_demo_fails_cleanly_without_a_checkpoint(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sim.demo", "--episodes", "1", "--checkpoint",
                           str(tmp_path / "missing"), "--out", str(tmp_path / "demo")], cwd=REPO, env=demo_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "no checkpoint at" in proc.stderr
