"""Measuring on this machine: threads, machine description, load, memory, child processes, fits."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from audit_bench.config import HERE, THREADS


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    info = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": THREADS,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cuda": torch.cuda.is_available(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_hardware": bf16_hardware(),
    }
    try:
        from importlib.metadata import version

        import pytorch_grad_cam  # noqa: F401

        info["grad-cam"] = version("grad-cam")
        info["monai"] = version("monai")
    except Exception:  # pragma: no cover - informational only
        pass
    return info


def bf16_hardware() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def load_avg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")


def rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # pragma: no cover
        return float("nan")


def peak_rss_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_child(kind: str, cfg: dict, timeout: float, prefix: list[str] | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg["threads"]), MKL_NUM_THREADS=str(cfg["threads"]))
    env.setdefault("PYTHONWARNINGS", "ignore")
    cmd = list(prefix or []) + [sys.executable, str(HERE / "run.py"), f"--{kind}", json.dumps(cfg)]
    load = load_avg()
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", **{k: cfg.get(k) for k in ("model", "method", "n")}}
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("RESULT "):
            out = json.loads(line[7:])
            out["load_avg_before"] = load
            out["process_s"] = time.perf_counter() - t
            return out
    tail = (proc.stderr or proc.stdout)[-800:]
    return {"error": f"exit {proc.returncode}: {tail}", **{k: cfg.get(k) for k in ("model", "method", "n")}}


def linear_fit(ns, ts) -> dict | None:
    import numpy as np

    if len(ns) < 2:
        return None
    ns, ts = np.asarray(ns, float), np.asarray(ts, float)
    slope, intercept = np.polyfit(ns, ts, 1)
    pred = slope * ns + intercept
    ss_res = float(np.sum((ts - pred) ** 2))
    ss_tot = float(np.sum((ts - ts.mean()) ** 2))
    return {
        "slope_s_per_cell": float(slope),
        "intercept_s": float(intercept),
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0,
        "max_rel_residual": float(np.max(np.abs(ts - pred) / ts)),
        "max_residual_of_largest": float(np.max(np.abs(ts - pred)) / np.max(ts)),
        "points": len(ns),
    }


def drift(batch_s) -> float | None:
    """Mean time of the last quarter of batches over the first quarter (1 = no slow-down as N grows)."""
    if len(batch_s) < 8:
        return None
    q = len(batch_s) // 4
    return (sum(batch_s[-q:]) / q) / (sum(batch_s[:q]) / q)
