"""Work-arounds for the GUI process.

Mesa's software OpenGL (llvmpipe: virtual machines, remote desktops, CI under xvfb) and AMD's
radeonsi load ``libLLVM`` into napari's process. Triton (pulled in by ``torch._dynamo`` when
torchvision, and so pytorch-grad-cam, is imported) carries its own LLVM; loading it after Mesa's
crashes the interpreter (segmentation fault; seen with triton 3.9 and Mesa llvmpipe). The audit
never uses triton (no ``torch.compile``), so when an LLVM is already mapped and triton is not yet
imported, triton is marked unavailable for this process: torch then behaves as on a machine without
triton. Loading triton *before* the OpenGL context is harmless, so nothing is done in that case.
"""

from __future__ import annotations

import sys


def llvm_loaded() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return any("libLLVM" in line for line in maps)
    except OSError:
        return False


def avoid_llvm_clash() -> bool:
    """Keep triton out of a process that already maps an LLVM; True when triton was blocked."""
    if "triton" in sys.modules:
        return sys.modules["triton"] is None
    if llvm_loaded():
        sys.modules["triton"] = None  # `import triton` now raises ImportError: torch treats it as absent
        return True
    return False
