"""Real, offline-obtainable cellpose weights: MouseLand's generalist "cyto" network.

Named cellpose models (``cyto3``, ``nuclei``) download from the cellpose website at first use, which
fails on machines without internet access. The package index, however, serves the first cellpose
release (``cellpose==0.0.1``, GPL-3 code, 24.7 MB wheel), whose ``cellpose/models/cyto_0`` holds the
trained generalist cytoplasm network (6,610,387 parameters) as an MXNet NDArray list file.

:func:`generalist_cyto_model` downloads that wheel once with ``pip download --no-deps`` (the package
is never installed or imported), reads the MXNet file with numpy alone, renames the parameters onto
cellpose 3's ``resnet_torch.CPnet``, checks every name and shape against a freshly built ``CPnet``,
and saves a cellpose-3 model file into a per-user cache (``$NAPARI_GRADCAMO_CACHE`` or
``~/.cache/napari-gradcamo``). Later calls return the cached file without touching the network.

The converted file is an ordinary cellpose 3 model: ``CellposeModel(pretrained_model=path)`` loads
it (with ``torch.load(weights_only=True)``); its diameter is 27 px (``diam_mean``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WHEEL_REQUIREMENT = "cellpose==0.0.1"
WHEEL_MEMBER = "cellpose/models/cyto_0"
SIZE_MEMBER = "cellpose/models/size_cyto_A.npy"
WHEEL_MEMBER_BYTES = 26_462_244
WHEEL_MEMBER_SHA256 = "dfc4dd843199e9aacb57cfa81f260b957e0b3e1cef92566db18b93c22a0967cb"
N_PARAMETERS = 6_610_387
NBASE = [2, 32, 64, 128, 256]
NOUT = 3
DIAM_MEAN = 27.0
MODEL_FILENAME = "cellpose_generalist_cyto_0.0.1.pth"
INFO_FILENAME = "cellpose_generalist_cyto_0.0.1.json"

_NDARRAY_LIST_MAGIC = 0x112
_NDARRAY_MAGIC = 0xF993FAC9
_MXNET_FLOAT32 = 0


class WeightsError(RuntimeError):
    """The generalist weights could not be obtained or converted; the message says what to do."""


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The per-user cache folder (argument, else ``$NAPARI_GRADCAMO_CACHE``, else ``~/.cache/napari-gradcamo``)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("NAPARI_GRADCAMO_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "napari-gradcamo"


def generalist_cyto_model(cache_dir: str | os.PathLike | None = None, *, force: bool = False) -> Path:
    """Path of a cellpose-3 model file holding MouseLand's generalist "cyto" weights.

    Fetched and converted once per cache folder; later calls only check that the file is there.
    Raises :class:`WeightsError` (with the way out) when the wheel cannot be downloaded.
    """
    folder = default_cache_dir(cache_dir)
    target = folder / MODEL_FILENAME
    if target.is_file() and not force:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        wheel = _download_wheel(Path(tmp), folder)
        raw, size_bytes = _read_wheel(wheel)
        state = convert_mxnet_params(parse_ndarray_list(raw))
        check_against_cpnet(state)
        _save_state_dict(state, target)
        info = {
            "source": f"{WHEEL_REQUIREMENT} (PyPI wheel {wheel.name}), member {WHEEL_MEMBER}",
            "source_sha256": hashlib.sha256(raw).hexdigest(),
            "source_license": "the cellpose 0.0.1 wheel (code and bundled weights) is distributed under GPL-3.0",
            "network": "cellpose 3 resnet_torch.CPnet",
            "nbase": NBASE,
            "nout": NOUT,
            "diam_mean": DIAM_MEAN,
            "n_values": N_PARAMETERS,
        }
        if size_bytes is not None:
            info["size_model"] = _size_model_summary(size_bytes, folder)
        (folder / INFO_FILENAME).write_text(json.dumps(info, indent=2))
    return target


# --------------------------------------------------------------------------- download


def _download_wheel(dest: Path, folder: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", "--retries", "2", "--timeout", "30", "--dest", str(dest), WHEEL_REQUIREMENT]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WeightsError(_offline_message(str(exc), folder)) from exc
    wheels = sorted(dest.glob("cellpose-0.0.1-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-3:])
        raise WeightsError(_offline_message(tail, folder))
    return wheels[0]


def _offline_message(detail: str, folder: Path) -> str:
    return (
        f"Could not download '{WHEEL_REQUIREMENT}' from the package index to obtain the generalist "
        f"cellpose weights ({detail.strip() or 'pip failed'}). Either run once on a machine with "
        "access to the package index (the converted file is cached in "
        f"{folder}; copy {MODEL_FILENAME} into that folder here, or point NAPARI_GRADCAMO_CACHE at a copy), "
        "or give a cellpose-3 model file path instead of a model name (e.g. a file from "
        "~/.cellpose/models or your own trained model)."
    )


def _read_wheel(wheel: Path) -> tuple[bytes, bytes | None]:
    try:
        with zipfile.ZipFile(wheel) as zf:
            raw = zf.read(WHEEL_MEMBER)
            size_bytes = zf.read(SIZE_MEMBER) if SIZE_MEMBER in zf.namelist() else None
    except (zipfile.BadZipFile, KeyError) as exc:
        raise WeightsError(f"{wheel.name} does not hold {WHEEL_MEMBER}: {exc}") from exc
    digest = hashlib.sha256(raw).hexdigest()
    if len(raw) != WHEEL_MEMBER_BYTES or digest != WHEEL_MEMBER_SHA256:
        raise WeightsError(
            f"{WHEEL_MEMBER} in {wheel.name} has {len(raw)} bytes and SHA-256 {digest}, expected "
            f"{WHEEL_MEMBER_BYTES} bytes and {WHEEL_MEMBER_SHA256}; the wheel on the index is not the "
            "one this converter was written for."
        )
    return raw, size_bytes


# --------------------------------------------------------------------------- MXNet parsing


def parse_ndarray_list(raw: bytes) -> dict[str, np.ndarray]:
    """Read an MXNet ``NDArray`` list file (``mx.nd.save`` format, dense float32) with numpy only."""
    offset = 0

    def take(fmt: str):
        nonlocal offset
        fmt = "<" + fmt
        values = struct.unpack_from(fmt, raw, offset)
        offset += struct.calcsize(fmt)
        return values

    try:
        magic, _reserved, count = take("QQQ")
        if magic != _NDARRAY_LIST_MAGIC:
            raise WeightsError(f"Not an MXNet NDArray list file (magic {magic:#x}).")
        arrays = []
        for i in range(count):
            amagic, storage, ndim = take("IiI")
            if amagic != _NDARRAY_MAGIC or storage not in (0, -1):
                raise WeightsError(f"Array {i}: unsupported header (magic {amagic:#x}, storage {storage}).")
            shape = take(f"{ndim}q")
            take("ii")  # device context
            (dtype_flag,) = take("i")
            if dtype_flag != _MXNET_FLOAT32:
                raise WeightsError(f"Array {i}: dtype flag {dtype_flag}, only float32 (0) is supported.")
            n = int(np.prod(shape, dtype=np.int64))
            arrays.append(np.frombuffer(raw, "<f4", n, offset).reshape(shape).astype(np.float32))
            offset += 4 * n
        (n_names,) = take("Q")
        names = []
        for _ in range(n_names):
            (length,) = take("Q")
            names.append(raw[offset:offset + length].decode("utf-8"))
            offset += length
    except struct.error as exc:
        raise WeightsError(f"Truncated MXNet NDArray file: {exc}") from exc
    if offset != len(raw) or len(names) != len(arrays):
        raise WeightsError(
            f"MXNet file parse mismatch: {len(arrays)} arrays, {len(names)} names, "
            f"{offset} of {len(raw)} bytes read."
        )
    return dict(zip(names, arrays))


_RENAMES = [
    (re.compile(r"^downsample\.down\.(\d+)\.conv\.(\d+)\."), r"downsample.down.res_down_\1.conv.conv_\2."),
    (re.compile(r"^downsample\.down\.(\d+)\."), r"downsample.down.res_down_\1."),
    (re.compile(r"^upsample\.up\.(\d+)\.conv\.(\d+)\."), r"upsample.up.res_up_\1.conv.conv_\2."),
    (re.compile(r"^upsample\.up\.(\d+)\."), r"upsample.up.res_up_\1."),
]
_SUFFIX = {"gamma": "weight", "beta": "bias"}


def mxnet_to_cpnet_name(name: str) -> str:
    """Map an MXNet (cellpose 0.0.1) parameter name onto cellpose 3's ``CPnet`` state-dict key."""
    for pattern, repl in _RENAMES:
        new, n = pattern.subn(repl, name, count=1)
        if n:
            name = new
            break
    head, _, last = name.rpartition(".")
    return f"{head}.{_SUFFIX.get(last, last)}"


def convert_mxnet_params(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename all parameters and add the entries cellpose 3 expects (diameters, BN counters)."""
    state: dict[str, np.ndarray] = {}
    for name, value in params.items():
        key = mxnet_to_cpnet_name(name)
        if key in state:
            raise WeightsError(f"Two MXNet parameters map onto {key}.")
        state[key] = value
        if key.endswith(".running_var"):
            state[key[: -len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    state["diam_mean"] = np.full(1, DIAM_MEAN, np.float32)
    state["diam_labels"] = np.full(1, DIAM_MEAN, np.float32)
    return state


def check_against_cpnet(state: dict[str, np.ndarray]) -> None:
    """Refuse unless keys and shapes equal those of a fresh cellpose 3 ``CPnet`` exactly."""
    from cellpose.resnet_torch import CPnet

    reference = CPnet(list(NBASE), NOUT, sz=3, mkldnn=False, conv_3D=False, max_pool=True,
                      diam_mean=DIAM_MEAN).state_dict()
    missing = sorted(set(reference) - set(state))
    extra = sorted(set(state) - set(reference))
    wrong = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(reference[k].shape)}"
        for k in reference if k in state and tuple(state[k].shape) != tuple(reference[k].shape)
    ]
    if missing or extra or wrong:
        raise WeightsError(
            "The converted weights do not fit cellpose's CPnet "
            f"(missing {missing[:5]}, unexpected {extra[:5]}, shape mismatches {wrong[:5]}); "
            "the installed cellpose version may have changed its network."
        )
    n_weights = sum(
        int(np.prod(v.shape)) for k, v in state.items()
        if not k.startswith("diam") and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    n_buffers = sum(int(np.prod(v.shape)) for k, v in state.items() if k.endswith(("running_mean", "running_var")))
    if n_weights + n_buffers != N_PARAMETERS:
        raise WeightsError(f"Converted weights hold {n_weights + n_buffers} values, expected {N_PARAMETERS}.")


def _save_state_dict(state: dict[str, np.ndarray], target: Path) -> None:
    import torch

    tensors = {k: torch.from_numpy(np.array(v, order="C", copy=True)) for k, v in state.items()}
    tmp = target.with_name(target.name + ".part")
    torch.save(tensors, tmp)
    reloaded = torch.load(tmp, map_location="cpu", weights_only=True)
    check_against_cpnet({k: v.numpy() for k, v in reloaded.items()})
    os.replace(tmp, target)


# --------------------------------------------------------------------------- size model


class _NumpyOnlyUnpickler:
    """Unpickle an ``.npy`` object array allowing only numpy array reconstruction (no code execution)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    @classmethod
    def loads(cls, payload: bytes):
        import io
        import pickle

        allowed = cls._ALLOWED

        class _Restricted(pickle.Unpickler):
            def find_class(self, module, name):
                if (module, name) in allowed:
                    return super().find_class(module.replace("numpy.core.", "numpy._core.")
                                              if _has_numpy_core_underscore() else module, name)
                raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

        return _Restricted(io.BytesIO(payload), encoding="latin1").load()


def _has_numpy_core_underscore() -> bool:
    try:
        import numpy._core.multiarray  # noqa: F401
    except ImportError:
        return False
    return True


def _size_model_summary(npy_bytes: bytes, folder: Path) -> str:
    """Store the linear size model (``A``, ``smean``, ``ymean``) as a pickle-free ``.npz`` file."""
    try:
        header_end = npy_bytes.index(b"\n", 10) + 1
        obj = _NumpyOnlyUnpickler.loads(npy_bytes[header_end:])
        params = obj.item() if isinstance(obj, np.ndarray) else obj
        arrays = {k: np.asarray(v) for k, v in params.items()}
    except Exception as exc:  # the size model is optional; never fail the weights for it
        return f"not converted ({exc})"
    path = folder / "cellpose_generalist_cyto_0.0.1_size.npz"
    np.savez(path, **arrays)
    return path.name
