"""The fixed cost of each ``run_audit`` call: :func:`napari_gradcamo.audit.run.prepare` (issue 25).

``prepare`` checks the target layer (it needs the layer's output shape at the checkpoint's crop shape) and
builds the whole-image cell table. Timed here, on this machine's CPU, median of ``--repeats`` after one
warm-up call:

* ``prepare``      — ``prepare(image, labels, bundle, AuditSettings(target_layer=L))`` on the benchmark field
  (``audit_bench.workloads``: a seeded synthetic 5-stain 24 × 384 × 384 field, ≈80 cells; seeded untrained
  models at 21 × 128 × 128 crops), called again and again with one model: the layer check and the cell table;
* ``check cold``   — the same with the cell table passed in (``cells=``), each call on a fresh copy of the model
  (``copy.deepcopy``, not timed): the layer check of a model not seen before;
* ``check warm``   — the same, with one model called again and again (a ``run_audit`` loop over fields);
* per family (``benchmarks/families.py``'s models and crop shapes): ``check_target_layer`` alone, cold and warm,
  and how many cold calls fell back from the ``meta`` device to a real forward pass.

Run: ``python benchmarks/prepare.py [--repeats 5] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


class _Fallbacks(logging.Handler):
    """Counts the layer module's 'fell back to a real forward pass' debug records."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record):
        if "real forward" in record.getMessage():
            self.count += 1


def _times(fn, repeats: int) -> float:
    """Median of ``repeats`` calls after one untimed call, seconds."""
    fn()
    later = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        later.append(time.perf_counter() - t)
    return statistics.median(later)


def _cold(fn, model, repeats: int) -> float:
    """Median of ``repeats`` calls ``fn(copy)``, each on a fresh deep copy of ``model`` (the copy not timed)."""
    later = []
    for _ in range(repeats):
        fresh = copy.deepcopy(model)
        t = time.perf_counter()
        fn(fresh)
        later.append(time.perf_counter() - t)
    return statistics.median(later)


def _check_fresh(model, layer, crop, channels):
    from napari_gradcamo.models.layers import check_target_layer

    check_target_layer(model, layer, crop, channels)


def main(argv=None) -> int:
    import torch
    from audit_bench.config import B0, SMALL
    from audit_bench.workloads import load, make_bundle, make_data
    from families import families

    from napari_gradcamo.audit.run import AuditSettings, prepare
    from napari_gradcamo.crops.extract import cell_table
    from napari_gradcamo.models.layers import check_target_layer, default_target_layer, list_target_layers
    from napari_gradcamo.models.metadata import ModelBundle

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    counter = _Fallbacks()
    log = logging.getLogger("napari_gradcamo.models.layers")
    log.addHandler(counter)
    log.setLevel(logging.DEBUG)

    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} after one call; "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} (loaded: other work on this machine)")
    with tempfile.TemporaryDirectory() as tmp:
        make_data(Path(tmp), tiles=1)
        image, labels = load(Path(tmp))
    cells = cell_table(labels)
    print(f"\nbenchmark field {image.data.shape} (C, z, y, x), {len(cells)} cells")
    print(f"{'model':<18}{'layer':<12}{'prepare':>10}{'check cold':>12}{'check warm':>12}{'fallbacks':>11}")
    for arch in (SMALL, B0):
        bundle = make_bundle(arch)
        meta = bundle.metadata
        layer = default_target_layer(list_target_layers(bundle.model, meta.crop_shape, len(meta.channel_names)))
        settings = AuditSettings(target_layer=layer, device="cpu")
        full = _times(partial(prepare, image, labels, bundle, settings), args.repeats)
        counter.count = 0
        cold = _cold(lambda m, meta=meta, settings=settings: prepare(image, labels, ModelBundle(m, meta, ""),
                                                                     settings, cells), bundle.model, args.repeats)
        falls = counter.count
        warm = _times(partial(prepare, image, labels, bundle, settings, cells), args.repeats)
        print(f"{arch:<18}{layer:<12}{full:>9.4f}s{cold:>11.4f}s{warm:>11.4f}s{falls:>6} of {args.repeats}")

    print("\nper family: check_target_layer at the family's crop shape")
    print(f"{'family':<26}{'crop':<10}{'layer':<22}{'cold':>9}{'warm':>10}{'fallbacks':>11}")
    for name, (build, crop, channels, _, layer) in families().items():
        torch.manual_seed(0)
        model = build().eval()
        layer = layer or default_target_layer(list_target_layers(model, crop, channels))
        counter.count = 0
        cold = _cold(partial(_check_fresh, layer=layer, crop=crop, channels=channels), model, args.repeats)
        falls = counter.count
        warm = _times(partial(check_target_layer, model, layer, crop, channels), args.repeats)
        print(f"{name:<26}{'×'.join(map(str, crop)):<10}{layer:<22}{cold:>8.4f}s{warm:>9.4f}s"
              f"{falls:>6} of {args.repeats}")
    print(f"\nload average at the end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
