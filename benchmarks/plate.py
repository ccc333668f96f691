#!/usr/bin/env python
"""Plate benchmark (issue 13): cells/s of ``gradcamo plate`` with 1 and 2 dask workers, peak memory per worker,
a worker killed mid-run, and a resume — on synthetic plates written as OME-Zarr.

    python benchmarks/plate.py            # ~6 min on 2 CPU cores
    python benchmarks/plate.py --fields 48 --no-effnet
    python benchmarks/plate.py --device cuda    # on a GPU machine
    python benchmarks/plate.py --fields 24 --no-effnet --workers 1,2,4 --external --no-kill   # scaling table

Workloads (seeded):
  small   48 fields (12 wells × 4 sites), each 5 × 12 × 64 × 64 uint16 with 12 cells; the bundled small 3D CNN
          (crops 8 × 32 × 32, Grad-CAM at stage1).
  effnet  8 fields (2 wells × 4 sites), each 5 × 21 × 256 × 256 with 8 cells; an untrained MONAI
          EfficientNet-B0 3D (crops 21 × 128 × 128, 6 classes, the default target layer): the paper's crop size.
Each run: a fresh LocalCluster (processes, 1 thread per worker, 1 torch thread per worker), started before the
clock; the clock covers iter_plate from submission to the last field. Peak memory per worker = the largest
``getrusage`` max RSS a worker reported with a finished field; ``idle`` = a worker's RSS after importing torch
and the audit code, before any field. Also per run: the seconds to the first finished field, the wall time
from starting the cluster to its close (``end_to_end_s``, what a user waits for), and how many workers dask's
nanny killed at shutdown for taking over 4 s to exit. ``--external`` runs the plate against a ``dask scheduler``
and ``dask worker`` processes started from the command line (as on a cluster). Writes
benchmarks/results/plate-latest.json (``--json`` elsewhere); nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


def _idle_rss_mb() -> float:
    import resource

    import torch  # noqa: F401

    import napari_gradcamo.audit.run  # noqa: F401

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _NannyKills(logging.Handler):
    """Counts dask nanny warnings that a worker was killed for taking too long to exit."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record):
        self.count += "still alive" in record.getMessage()


def timed_run(source, layout, model, out, workers: int, kill: bool = False, settings=None,
              scheduler: str | None = None) -> dict:
    """One plate run on a fresh LocalCluster (or on the running cluster at ``scheduler``); optionally SIGKILL a
    busy worker after the first finished field."""
    from napari_gradcamo.plate.run import iter_plate, make_client

    kills = _NannyKills()
    logging.getLogger("distributed.nanny").addHandler(kills)
    opened = time.perf_counter()
    client, cluster = make_client(workers, scheduler)
    if scheduler:
        client.wait_for_workers(workers, timeout=120)
    load = os.getloadavg()[0]
    first = None
    try:
        idle = client.run(_idle_rss_mb)
        started = time.perf_counter()
        outcomes, killed = [], None
        for outcome in iter_plate(source, model, out, settings, layout=layout, client=client):
            outcomes.append(outcome)
            if first is None and outcome.status == "done":
                first = time.perf_counter() - started
            if kill and killed is None and outcome.status == "done":
                busy = [a for a, keys in client.processing().items() if keys]
                killed = client.run(os.getpid, workers=busy[:1])[busy[0]]
                os.kill(killed, signal.SIGKILL)
        wall = time.perf_counter() - started
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
        logging.getLogger("distributed.nanny").removeHandler(kills)
    end_to_end = time.perf_counter() - opened
    done = [o for o in outcomes if o.status == "done"]
    cells = sum(o.cells for o in done)
    peak = {}
    for o in done:
        peak[o.worker] = max(peak.get(o.worker, 0.0), o.peak_rss_mb)
    return {"workers": workers, "wall_s": wall, "cells": cells, "cells_per_s": cells / wall if wall else 0.0,
            "fields": {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")},
            "task_s_per_cell": sum(o.seconds for o in done) / max(cells, 1),
            "task_cpu_s_per_cell": sum(o.cpu_seconds for o in done) / max(cells, 1),
            "peak_rss_mb_per_worker": sorted(peak.values()), "idle_rss_mb_per_worker": sorted(idle.values()),
            "model_loads_per_worker_thread": max((o.model_loads for o in done), default=0), "killed_pid": killed,
            "first_field_s": first, "end_to_end_s": end_to_end, "killed_at_shutdown": kills.count,
            "scheduler": "external" if scheduler else "LocalCluster", "load_average_1min_at_start": load}


def external_cluster(workers: int, folder: Path):
    """``dask scheduler`` and ``workers`` × ``dask worker --nthreads 1`` started as separate processes (as on a
    cluster); returns (address, processes)."""
    import subprocess

    dask = Path(sys.executable).with_name("dask")
    command = [str(dask)] if dask.exists() else [sys.executable, "-m", "distributed.cli.dask_spec"]
    folder.mkdir(parents=True, exist_ok=True)
    scheduler_file = folder / "scheduler.json"
    scheduler_file.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(folder / "cluster.log", "ab")
    processes = [subprocess.Popen(command + ["scheduler", "--no-dashboard", "--port", "0", "--scheduler-file",
                                             str(scheduler_file)], stdout=log, stderr=log, env=env)]
    deadline = time.time() + 60
    while not scheduler_file.exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    address = json.loads(scheduler_file.read_text())["address"]
    for _ in range(workers):
        processes.append(subprocess.Popen(command + ["worker", address, "--nthreads", "1", "--nworkers", "1",
                                                     "--no-dashboard"], stdout=log, stderr=log, env=env))
    return address, processes


def exactly_once(out: Path, source, layout) -> dict:
    """Cells in the plate table against the cells in the label images: missing and duplicated (field, label)."""
    import numpy as np

    from napari_gradcamo.io.lazy import open_labels
    from napari_gradcamo.plate import store
    from napari_gradcamo.plate.sources import discover

    table, failures = store.collect(out, store.read_run(out)["fingerprint"])
    keys = list(zip(table["field"], table["label"]))
    expected = {(t.field_id, int(v)) for t in discover(source, layout) for v in np.unique(open_labels(t.image)) if v}
    return {"rows": len(keys), "expected": len(expected), "duplicates": len(keys) - len(set(keys)),
            "missing": len(expected - set(keys)), "failed_fields": len(failures)}


def effnet_checkpoint(folder: Path) -> Path:
    import torch

    from napari_gradcamo.models.architectures import build_model
    from napari_gradcamo.models.checkpoint import save_checkpoint
    from napari_gradcamo.models.metadata import ModelMetadata

    meta = ModelMetadata(architecture="efficientnet-b0", class_names=["control"] + [f"dose{i}" for i in range(1, 6)],
                         channel_names=["DNA", "ER", "RNA", "AGP", "Mito"], crop_shape=[21, 128, 128],
                         normalization={"method": "percentile", "low": 1.0, "high": 99.8})
    torch.manual_seed(0)
    return save_checkpoint(folder / "effnet-b0.safetensors", build_model(meta).eval(), meta)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=48)
    parser.add_argument("--work", default="/tmp/gradcamo-plate-bench")
    parser.add_argument("--no-effnet", action="store_true")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (workers share one GPU)")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts of the small plate (1 first)")
    parser.add_argument("--no-kill", action="store_true", help="skip the resume and killed-worker runs")
    parser.add_argument("--external", action="store_true",
                        help="also run the small plate on `dask scheduler` + `dask worker` processes (2 workers)")
    parser.add_argument("--json", default=str(HERE / "results" / "plate-latest.json"), help="where to write the results")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    if counts[0] != 1:
        parser.error("--workers must start with 1 (the ratios are against one worker)")
    import shutil

    from napari_gradcamo.audit.run import AuditSettings
    from napari_gradcamo.models.bundled import bundled_model_path
    from napari_gradcamo.plate.synthetic import write_synthetic_plate

    settings = AuditSettings(device=args.device)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    results = {"command": "python benchmarks/plate.py " + " ".join(sys.argv[1:]), "machine":
               f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs",
               "load_average_at_start": os.getloadavg()[0]}
    t = time.perf_counter()
    source, layout = write_synthetic_plate(work / "small", args.fields, sites_per_well=4, chunks=(1, 4, 32, 32))
    results["small_plate"] = {"fields": args.fields, "field_shape": "5 x 12 x 64 x 64 uint16", "cells_per_field": 12,
                              "write_s": time.perf_counter() - t, "path": str(source)}
    model = bundled_model_path("honest")
    for workers in counts:
        results[f"small_{workers}w"] = timed_run(source, layout, model, work / f"out{workers}", workers, settings=settings)
        print(json.dumps({f"small_{workers}w": results[f"small_{workers}w"]}), flush=True)
    if args.external:
        address, processes = external_cluster(2, work / "external")
        try:
            results["small_external_2w"] = timed_run(source, layout, model, work / "outext", 2, settings=settings,
                                                     scheduler=address)
        finally:
            for process in processes[::-1]:
                process.terminate()
            for process in processes:
                process.wait(timeout=60)
        print(json.dumps({"small_external_2w": results["small_external_2w"]}), flush=True)
    if not args.no_kill:
        results["small_resume_2w"] = timed_run(source, layout, model, work / "out2", 2, settings=settings)
        results["small_killed_2w"] = timed_run(source, layout, model, work / "outkill", 2, kill=True, settings=settings)
        results["small_killed_2w"]["check"] = exactly_once(work / "outkill", source, layout)
        print(json.dumps({k: results[k] for k in ("small_resume_2w", "small_killed_2w")}), flush=True)
    if not args.no_effnet:
        esource, elayout = write_synthetic_plate(work / "effnet", 8, sites_per_well=4, n_cells=8, shape=(21, 256, 256),
                                                 chunks=(1, 7, 128, 128), name="EFF01")
        checkpoint = effnet_checkpoint(work)
        for workers in (1, 2):
            results[f"effnet_{workers}w"] = timed_run(esource, elayout, checkpoint, work / f"eout{workers}", workers,
                                                  settings=settings)
            print(json.dumps({f"effnet_{workers}w": results[f"effnet_{workers}w"]}), flush=True)
    results["load_average_at_end"] = os.getloadavg()[0]
    results["other_processes_note"] = "the machine is shared: compare the CPU s/cell, which contention does not inflate"
    lines = []
    for key in [k for k in results if k.startswith(("small_", "effnet_")) and k != "small_plate"]:
        r = results[key]
        lines.append(f"{key:18s} workers {r['workers']}  fields {r['fields']}  cells {r['cells']:5d}  wall {r['wall_s']:6.1f} s"
                     f"  {r['cells_per_s']:6.2f} cells/s  task {r['task_s_per_cell']:.3f} s/cell"
                     f" (CPU {r['task_cpu_s_per_cell']:.3f})  load {r['load_average_1min_at_start']:.1f}  peak RSS/worker "
                     f"{[round(m) for m in r['peak_rss_mb_per_worker']]} MB (idle {[round(m) for m in r['idle_rss_mb_per_worker']]})"
                     f"  first field {r['first_field_s'] or float('nan'):.1f} s  end to end {r['end_to_end_s']:.1f} s"
                     f"  killed at shutdown {r['killed_at_shutdown']}")
    for family in ("small", "effnet"):
        one = results.get(f"{family}_1w")
        for key in [k for k in results if k.startswith(f"{family}_") and k.endswith("w") and one is not None]:
            r = results[key]
            if key == f"{family}_1w" or r["fields"]["done"] == 0:
                continue
            lines.append(f"{family}: {key[len(family) + 1:]} / 1 worker: cells/s {r['cells_per_s'] / one['cells_per_s']:.2f}"
                         f" (goal for 2 workers on 2 cores >= 1.8), end to end {one['end_to_end_s'] / r['end_to_end_s']:.2f}")
    if "small_killed_2w" in results:
        lines.append(f"killed worker check: {results['small_killed_2w']['check']}")
    results["summary"] = lines
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    print("\n".join(lines))
    runs = [r for k, r in results.items() if k.startswith(("small_", "effnet_")) and k != "small_plate"]
    bad = [k for k, r in results.items() if r in runs and (r["fields"]["failed"] or r["killed_at_shutdown"])]
    if bad:  # the CI gate (make bench-ci): a failed field or a worker killed at shutdown
        print(f"FAILED: {', '.join(bad)} had failed fields or workers killed at shutdown", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
