"""Peak memory of locating cells vs the largest label id (issue 9): `cell_table` against the old approach
(`scipy.ndimage.find_objects` straight on the ids, one entry per id up to the largest), each in a fresh process.

    PYTHONPATH=src python benchmarks/label_memory.py
"""

from __future__ import annotations

import subprocess
import sys

SHAPE = (20, 256, 256)
IDS = (20, 2**24, 2**31 - 1)

CHILD = """
import resource, sys
import numpy as np
from scipy import ndimage
from napari_gradcamo.crops.extract import cell_table
labels = np.zeros({shape}, np.int64)
for k in range(20):
    labels[k, 10:20, 10 * k:10 * k + 8] = k + 1
labels[labels == 20] = {top}
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    n = len(cell_table(labels)) if sys.argv[1] == "cell_table" else sum(b is not None for b in ndimage.find_objects(labels))
    print(n, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1e3)
except MemoryError:
    print("MemoryError", "nan")
"""


def peak(method: str, top: int) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD.format(shape=SHAPE, top=top), method],
                         capture_output=True, text=True).stdout.split()
    return out[0], float(out[1])


def main() -> None:
    print(f"label image {'x'.join(map(str, SHAPE))}, 20 cells; extra peak memory (MB) while locating cells")
    print(f"{'largest id':>12} {'find_objects':>14} {'cell_table':>12} {'ratio':>8}")
    for top in IDS:
        (_, old), (cells, new) = peak("find_objects", top), peak("cell_table", top)
        print(f"{top:>12} {old:>14.1f} {new:>12.1f} {old / new if new else float('nan'):>8.1f}   ({cells} cells)")


if __name__ == "__main__":
    main()
