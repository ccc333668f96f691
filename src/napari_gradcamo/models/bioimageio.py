"""bioimage.io model packages (spec 0.5): audit one, export a checkpoint as one.

An exported package carries two weight formats of the same network: ``pytorch_state_dict`` (rebuilt from
napari-gradcamo's own code, see below) and ``torchscript`` (``torch.jit.trace`` of the network, checked to give the
same logits), which any bioimage.io consumer with PyTorch runs without napari-gradcamo.

A **TorchScript-only** package can be audited only when the network can be rebuilt as Python modules, because
Grad-CAM hooks an inner layer and a TorchScript module refuses Python hooks (``register_forward_hook is not
supported on ScriptModules``). So: a package exported by napari-gradcamo (its ``config.napari_gradcamo.metadata``
names a built-in or installed architecture) is rebuilt from that metadata and given the TorchScript module's
parameters (tracing keeps their names; loaded strictly, never run as TorchScript); its target layer is the
metadata's. Any other TorchScript-only package is refused with that reason.

Reading and writing go through ``bioimageio.spec`` (every field validated by it); the weights are read with
``torch.load(weights_only=True)`` (no unpickled code). What decides which code builds the network:

* a package exported here names :func:`network_from_metadata` in this module and carries the checkpoint's
  metadata: only built-in or installed (entry-point) architectures are built, as for a checkpoint;
* a third-party package names ``import_from`` + ``callable``: that is a ``custom`` factory, built only when the
  user trusts exactly that ``package.module:function`` (``--trust-factory``, the trust dialog);
* a package whose network is Python source inside it is refused (its code would run from a downloaded file).

Axes, channel names, class names (the output's channel names) and the preprocessing (fixed mean/s.d. per
channel, or percentile scaling per crop) are mapped onto :class:`~napari_gradcamo.models.metadata.ModelMetadata`;
anything else is refused with a message that names it.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from napari_gradcamo.models.metadata import CheckpointError, ModelBundle, ModelMetadata

NETWORK_CALLABLE = "network_from_metadata"
THIS_MODULE = "napari_gradcamo.models.bioimageio"
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
INPUT_ID, OUTPUT_ID = "crops", "logits"
TORCHSCRIPT_FILE = "weights_torchscript.pt"
CITATION = {"text": "Grad-CAMO: learning interpretable single-cell morphological profiles from 3D Cell Painting "
                    "images (Lim et al., 2024)", "doi": "10.1101/2024.05.21.595211"}


def is_package(path: str | Path) -> bool:
    """A bioimage.io package: a .zip, a folder holding an rdf.yaml, or the rdf.yaml itself."""
    path = Path(path)
    return (path.suffix == ".zip" or path.name in RDF_NAMES or path.name.endswith(".bioimageio.yaml")
            or (path.is_dir() and any((path / name).is_file() for name in RDF_NAMES)))


def network_from_metadata(metadata: dict[str, Any]):
    """The callable a package exported by napari-gradcamo names: its metadata in, the untrained network out."""
    from napari_gradcamo.models.architectures import build_model

    return build_model(ModelMetadata.from_dict(metadata, "the bioimage.io package"))


# ------------------------------------------------------------------------------------------------ import


#: Bounds on an rdf.yaml read from a package the user did not write: its size, the aliases it may use and the
#: nodes it may expand to ("billion laughs": nine levels of ten aliases expand to 10⁹ nodes and hang a loader).
MAX_RDF_BYTES = 2_000_000
MAX_YAML_ALIASES = 64
MAX_YAML_NODES = 200_000


def _rdf_text(source) -> tuple[str, bytes] | None:
    """The rdf.yaml of a local package (folder, YAML file or .zip) as bytes, its size bounded; None when
    ``source`` is not a local package (left to bioimageio.spec)."""
    import zipfile

    path = Path(str(source))
    if not path.exists():
        return None
    if path.is_dir():
        found = [path / name for name in RDF_NAMES if (path / name).is_file()]
        path = found[0] if found else None
        if path is None:
            return None
    if path.suffix == ".zip":
        try:
            with zipfile.ZipFile(path) as archive:
                entries = [i for i in archive.infolist() if i.filename in RDF_NAMES
                           or i.filename.endswith(".bioimageio.yaml")]
                if not entries:
                    return None
                if entries[0].file_size > MAX_RDF_BYTES:
                    raise CheckpointError(f"{source}: its {entries[0].filename} is {entries[0].file_size} bytes "
                                          f"(at most {MAX_RDF_BYTES}); it is not a model description.")
                with archive.open(entries[0]) as handle:
                    return entries[0].filename, handle.read(MAX_RDF_BYTES + 1)
        except zipfile.BadZipFile as error:
            raise CheckpointError(f"{source} is not a readable .zip package ({error}).") from None
    if path.stat().st_size > MAX_RDF_BYTES:
        raise CheckpointError(f"{source}: {path.name} is {path.stat().st_size} bytes (at most {MAX_RDF_BYTES}); "
                              "it is not a model description.")
    return path.name, path.read_bytes()


def check_yaml(text: bytes | str, where: str) -> None:
    """Refuse YAML that is too large, uses more than :data:`MAX_YAML_ALIASES` aliases, or expands to more than
    :data:`MAX_YAML_NODES` nodes, before any loader expands it; a :class:`CheckpointError` names the problem.

    The document is only composed (aliases stay shared references), never constructed, so the check itself is
    bounded by the file's size.

    Examples
    --------
    >>> check_yaml("a: &x [1, 2]\nb: *x\n", "rdf.yaml")
    >>> check_yaml("a: [" + "1, " * 300_000 + "1]", "rdf.yaml")
    Traceback (most recent call last):
    ...
    napari_gradcamo.models.metadata.CheckpointError: rdf.yaml expands to more than 200000 YAML nodes; ...
    """
    import yaml

    if len(text) > MAX_RDF_BYTES:
        raise CheckpointError(f"{where} is {len(text)} bytes (at most {MAX_RDF_BYTES}); it is not a model description.")

    class BoundedLoader(yaml.SafeLoader):
        """A SafeLoader that counts the aliases it meets while composing."""

        aliases = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_YAML_ALIASES:
                    raise CheckpointError(f"{where} uses more than {MAX_YAML_ALIASES} YAML aliases (*name); a "
                                          "model description needs few or none. It may be a 'billion laughs' "
                                          "file made to hang the reader; use the package from its author.")
            return super().compose_node(parent, index)

    try:
        loader = BoundedLoader(text)  # the reader checks the characters here already
        try:
            nodes = loader.get_single_node()
        finally:
            loader.dispose()
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{where} is not valid YAML: {error}") from None
    # expanded size of the node graph, each shared node counted once per reference, without expanding it
    # (a post-order walk; composing refuses recursive aliases, so the graph has no cycles)
    def children(node):
        if isinstance(node, yaml.SequenceNode):
            return node.value
        if isinstance(node, yaml.MappingNode):
            return [n for pair in node.value for n in pair]
        return []

    sizes: dict[int, int] = {}
    stack = [(nodes, False)] if nodes is not None else []
    while stack:
        node, done = stack.pop()
        if done:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children(node))
            if sizes[id(node)] > MAX_YAML_NODES:
                raise CheckpointError(f"{where} expands to more than {MAX_YAML_NODES} YAML nodes; it is not a "
                                      "model description (a 'billion laughs' file?). Use the package from its author.")
        elif id(node) not in sizes:
            sizes[id(node)] = 0  # seen; its size is set when its children are done
            stack.append((node, True))
            stack.extend((c, False) for c in children(node) if id(c) not in sizes)


def _describe(source):
    from bioimageio.spec import InvalidDescr, load_description
    from bioimageio.spec.model import v0_5

    rdf = _rdf_text(source)
    if rdf is not None:
        check_yaml(rdf[1], f"{source}: {rdf[0]}" if Path(str(source)).suffix == ".zip" else str(Path(str(source))))
    try:
        descr = load_description(source, format_version="latest")
    except Exception as error:  # a missing file, a broken zip or YAML
        raise CheckpointError(f"{source} cannot be read as a bioimage.io package: {error}") from None
    if isinstance(descr, InvalidDescr):
        problems = [f"{e.loc}: {e.msg}" for e in descr.validation_summary.errors][:5]
        raise CheckpointError(f"{source} is not a valid bioimage.io model: {'; '.join(problems)}")
    if not isinstance(descr, v0_5.ModelDescr):
        raise CheckpointError(f"{source} describes a bioimage.io {descr.type}, not a model.")
    if descr.weights.pytorch_state_dict is None and descr.weights.torchscript is None:
        formats = [name for name, entry in descr.weights if entry is not None]
        raise CheckpointError(f"{source} has no PyTorch weights (it has: {', '.join(formats)}); export the "
                              "model's PyTorch state dict (or TorchScript) into the package.")
    return descr


def _own_metadata(descr) -> dict | None:
    """The checkpoint metadata a package exported by napari-gradcamo carries in its config (None otherwise)."""
    config = getattr(descr, "config", None)
    config = config.model_dump() if hasattr(config, "model_dump") else dict(config or {})
    own = config.get("napari_gradcamo")
    return own.get("metadata") if isinstance(own, dict) and isinstance(own.get("metadata"), dict) else None


def _axes(tensor) -> dict[str, Any]:
    return {str(axis.id): axis for axis in tensor.axes}


def _size(axis) -> int:
    size = axis.size
    return int(size) if isinstance(size, int) else int(getattr(size, "min", 0) or 0)


def _crop_shape(axes: dict, source) -> list[int]:
    kinds = {name: axis.type for name, axis in axes.items()}
    if kinds.get("batch") != "batch" or kinds.get("channel") != "channel":
        raise CheckpointError(f"{source}: the input needs a batch and a channel axis (has {', '.join(kinds)}).")
    space = [name for name, kind in kinds.items() if kind == "space"]
    if space not in (["z", "y", "x"], ["y", "x"]):
        raise CheckpointError(f"{source}: the input's space axes are {space}; napari-gradcamo reads (z,) y, x crops.")
    return [_size(axes["z"]) if "z" in axes else 1, _size(axes["y"]), _size(axes["x"])]


def _normalization(tensor, n_channels: int, source) -> dict:
    steps = [p for p in tensor.preprocessing if p.id != "ensure_dtype"]
    if not steps:
        return {"method": "none"}
    if len(steps) == 1 and steps[0].id == "fixed_zero_mean_unit_variance":
        kwargs = steps[0].kwargs
        mean = np.broadcast_to(np.asarray(kwargs.mean, float), (n_channels,)).tolist()
        std = np.broadcast_to(np.asarray(kwargs.std, float), (n_channels,)).tolist()
        return {"method": "fixed", "mean": mean, "std": std}
    if len(steps) == 1 and steps[0].id == "scale_range" and steps[0].kwargs.reference_tensor is None:
        kwargs = steps[0].kwargs
        return {"method": "percentile", "low": float(kwargs.min_percentile), "high": float(kwargs.max_percentile)}
    raise CheckpointError(f"{source}: preprocessing {[p.id for p in steps]} is not supported; napari-gradcamo "
                          "applies a fixed mean/s.d. per channel, percentile scaling per crop, or nothing.")


def _third_party_metadata(descr, architecture, source) -> ModelMetadata:
    inputs, outputs = descr.inputs, descr.outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise CheckpointError(f"{source}: {len(inputs)} inputs and {len(outputs)} outputs; a classifier of cell "
                              "crops has one of each.")
    in_axes, out_axes = _axes(inputs[0]), _axes(outputs[0])
    crop_shape = _crop_shape(in_axes, source)
    channels = [str(c) for c in in_axes["channel"].channel_names]
    if set(out_axes) != {"batch", "channel"} or out_axes["channel"].type != "channel":
        raise CheckpointError(f"{source}: the output's axes are {list(out_axes)}; a classifier outputs (batch, "
                              "channel) with one channel per class.")
    classes = [str(c) for c in out_axes["channel"].channel_names]
    spec = f"{architecture.import_from}:{architecture.callable}"
    return ModelMetadata.from_dict({
        "architecture": "custom", "architecture_kwargs": {"factory": spec, **dict(architecture.kwargs)},
        "class_names": classes, "channel_names": channels, "crop_shape": crop_shape,
        "normalization": _normalization(inputs[0], len(channels), source),
        "training": {"bioimageio": {"name": descr.name, "id": str(descr.id or ""), "source": str(source)}},
    }, str(source))


def package_metadata(source: str | Path) -> ModelMetadata:
    """The checkpoint metadata a package maps to (validated; nothing imported or built)."""
    descr = _describe(source)
    if descr.weights.pytorch_state_dict is None:  # TorchScript weights only
        own = _own_metadata(descr)
        if own is None:
            raise CheckpointError(
                f"{source} has TorchScript weights only and was not exported by napari-gradcamo: Grad-CAM needs "
                "the activations and gradients of an inner layer, and a TorchScript module runs as one compiled "
                "graph that refuses Python hooks. Ask for the package's pytorch_state_dict weights (with the "
                "network's code as an installed package), or export the model with 'gradcamo export-bioimageio'.")
        return ModelMetadata.from_dict(own, str(source))
    architecture = descr.weights.pytorch_state_dict.architecture
    if not hasattr(architecture, "import_from"):
        raise CheckpointError(
            f"{source}: the network is Python source inside the package ({architecture.source}); napari-gradcamo "
            "does not run code from a model file. Install the code as a package and name it in the package "
            "(import_from), or register it under the entry-point group 'napari_gradcamo.architectures'.")
    if architecture.import_from == THIS_MODULE and str(architecture.callable) == NETWORK_CALLABLE:
        return ModelMetadata.from_dict(dict(architecture.kwargs).get("metadata"), str(source))
    return _third_party_metadata(descr, architecture, source)


def import_package(source: str | Path, trusted_factory: str | None = None) -> ModelBundle:
    """A bioimage.io package (folder, rdf.yaml or .zip) as a model ready for the audit."""
    import io

    import torch
    from bioimageio.spec.utils import download

    from napari_gradcamo.models.architectures import build_model

    meta = package_metadata(source)
    model = build_model(meta, trusted_factory, Path(str(source)).name)
    descr = _describe(source)
    try:
        if descr.weights.pytorch_state_dict is not None:
            data = download(descr.weights.pytorch_state_dict.source).read()
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        else:  # only the parameters are taken from the TorchScript module; its code is never run
            data = download(descr.weights.torchscript.source).read()
            state = torch.jit.load(io.BytesIO(data), map_location="cpu").state_dict()
        model.load_state_dict(state, strict=True)
    except Exception as error:
        raise CheckpointError(f"{source}: the weights do not load into the network: {error}") from None
    model.eval()
    return ModelBundle(model, meta, str(source))


def package_factory(source: str | Path) -> str | None:
    """The ``package.module:function`` a third-party package asks to run (nothing imported), else None."""
    from napari_gradcamo.models.architectures import requested_factory

    return requested_factory(package_metadata(source))


# ------------------------------------------------------------------------------------------------ export


def _preprocessing(normalization: dict, space: list[str]) -> list[dict]:
    method = normalization.get("method", "none")
    if method == "fixed":
        return [{"id": "fixed_zero_mean_unit_variance", "kwargs": {
            "mean": [float(v) for v in normalization["mean"]], "std": [float(v) for v in normalization["std"]],
            "axis": "channel"}}]
    if method == "percentile":
        return [{"id": "scale_range", "kwargs": {"axes": space, "min_percentile": float(normalization["low"]),
                                                 "max_percentile": float(normalization["high"])}}]
    return []


def _documentation(meta: ModelMetadata, name: str) -> str:
    return (f"# {name}\n\nA single-cell crop classifier exported by napari-gradcamo.\n\n"
            f"- classes: {', '.join(meta.class_names)}\n- channels: {', '.join(meta.channel_names)}\n"
            f"- crop (z, y, x): {meta.crop_shape}; head: {meta.head}; Grad-CAM layer: {meta.target_layer}\n\n"
            "The output is one logit per class (`head` in `config.napari_gradcamo` says how to turn them into "
            "probabilities). Audit it with `gradcamo audit IMAGE --model this.zip --masks MASKS --out OUT`.\n\n"
            "# Validation\n\nThe test tensors are one synthetic crop and this network's logits for it; "
            "`bioimageio.core` reproduces them from either weight format.\n\n"
            "# Weights\n\n- `pytorch_state_dict`: rebuilt by napari-gradcamo (`pip install napari-gradcamo`).\n"
            "- `torchscript`: the same network traced with `torch.jit.trace`; runs with PyTorch alone.\n")


def _test_input(meta: ModelMetadata, seed: int = 0) -> np.ndarray:
    """One crop in camera units around the normalisation's mean (a fixed seed: the package is reproducible)."""
    rng = np.random.default_rng(seed)
    norm = meta.normalization
    shape = (1, len(meta.channel_names), *meta.crop_shape)
    if norm.get("method") == "fixed":
        mean = np.asarray(norm["mean"])[None, :, None, None, None]
        std = np.asarray(norm["std"])[None, :, None, None, None]
        return (mean + std * rng.standard_normal(shape)).astype(np.float32)
    return rng.uniform(0, 1000, shape).astype(np.float32)


def export_package(bundle: ModelBundle, out: str | Path, *, name: str | None = None, overwrite: bool = False) -> Path:
    """Write ``bundle`` as a bioimage.io model package (.zip), validated by ``bioimage.spec`` before it is saved."""
    import torch
    from bioimageio.spec import InvalidDescr, load_description, save_bioimageio_package

    from napari_gradcamo.models.layers import crops_as_input, model_spatial_dims
    from napari_gradcamo.models.metadata import normalize_crops

    out = Path(out)
    meta = bundle.metadata
    if out.suffix != ".zip":
        raise CheckpointError(f"{out.name}: a bioimage.io package is a .zip file; give --out NAME.zip.")
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out} exists; choose another --out or pass --overwrite.")
    if meta.architecture == "custom":
        raise CheckpointError("A 'custom' architecture's code is not part of napari-gradcamo; register it as an "
                              "installed architecture (entry point) before exporting the model.")
    dims = model_spatial_dims(bundle.model)
    space = ["z", "y", "x"] if dims == 3 else ["y", "x"]
    name = name or f"napari-gradcamo {meta.architecture} ({' vs '.join(meta.class_names)})"
    name = re.sub(r"[^A-Za-z0-9_+\- ()]", "_", name)  # the characters bioimage.io allows in a name
    with tempfile.TemporaryDirectory(prefix=".bioimageio-", dir=out.parent) as tmp:
        folder = Path(tmp)
        sample = _test_input(meta)
        model_input = normalize_crops(sample, meta.normalization)
        with torch.no_grad():
            logits = bundle.model.eval()(crops_as_input(torch.as_tensor(model_input), dims)).float().numpy()
        raw = sample if dims == 3 else sample[:, :, 0]
        np.save(folder / "test_input.npy", raw)
        np.save(folder / "test_output.npy", logits)
        torch.save({k: v.detach().cpu() for k, v in bundle.model.state_dict().items()}, folder / "weights.pt")
        _save_torchscript(bundle.model, crops_as_input(torch.as_tensor(model_input), dims), logits,
                          folder / TORCHSCRIPT_FILE)
        (folder / "README.md").write_text(_documentation(meta, name))
        plain = json.loads(meta.model_dump_json())
        sizes = dict(zip(["z", "y", "x"], meta.crop_shape))
        rdf = {
            "type": "model", "format_version": "0.5.4", "name": name,
            "description": f"Single-cell classifier ({', '.join(meta.class_names)}) exported by napari-gradcamo.",
            "authors": [{"name": "napari-gradcamo export"}], "cite": [CITATION], "license": "MIT",
            "documentation": "README.md", "tags": ["napari-gradcamo", "classification", "single-cell", f"{dims}d"],
            "inputs": [{"id": INPUT_ID, "axes": [{"type": "batch"}, {"type": "channel", "channel_names": meta.channel_names},
                                                  *({"type": "space", "id": a, "size": sizes[a]} for a in space)],
                        "test_tensor": {"source": "test_input.npy"},
                        "preprocessing": _preprocessing(meta.normalization, space)}],
            "outputs": [{"id": OUTPUT_ID, "axes": [{"type": "batch"}, {"type": "channel", "channel_names": meta.class_names}],
                         "test_tensor": {"source": "test_output.npy"}}],
            "weights": {"pytorch_state_dict": {
                "source": "weights.pt", "pytorch_version": torch.__version__.split("+")[0],
                "architecture": {"callable": NETWORK_CALLABLE, "import_from": THIS_MODULE, "kwargs": {"metadata": plain}}},
                "torchscript": {"source": TORCHSCRIPT_FILE, "pytorch_version": torch.__version__.split("+")[0],
                                "parent": "pytorch_state_dict"}},
            "config": {"napari_gradcamo": {"metadata": plain, "source": Path(str(bundle.source or "")).name}},
        }
        _write_yaml(folder / "rdf.yaml", rdf)
        descr = load_description(folder / "rdf.yaml")
        if isinstance(descr, InvalidDescr):
            raise CheckpointError(f"The exported description does not validate: {descr.validation_summary.format()}")
        partial = folder / out.name
        save_bioimageio_package(descr, output_path=partial)
        shutil.move(str(partial), str(out.with_name(f".{out.name}.tmp")))
    out.with_name(f".{out.name}.tmp").replace(out)
    return out


def _save_torchscript(model, example, logits: np.ndarray, path: Path) -> None:
    """``torch.jit.trace`` of ``model`` saved at ``path``, refused unless the traced module gives the eager
    network's logits for the test crop and for a batch of two other crops (a batch size baked into the trace)."""
    import torch

    model = model.eval()
    try:
        with torch.no_grad():
            traced = torch.jit.trace(model, example, check_trace=False)
            other = torch.randn((2, *example.shape[1:]), generator=torch.Generator().manual_seed(1))
            same = (np.allclose(traced(example).float().numpy(), logits, rtol=1e-4, atol=1e-5)
                    and torch.allclose(traced(other).float(), model(other).float(), rtol=1e-4, atol=1e-5))
    except Exception as error:  # tracing raises many kinds of errors (data-dependent control flow, ...)
        raise CheckpointError(f"The network cannot be traced to TorchScript ({type(error).__name__}: {error}); "
                              "its forward must not depend on the input's values.") from None
    if not same:
        raise CheckpointError("The network traced to TorchScript gives other logits than the network itself "
                              "(its forward depends on the input's values or batch size); it cannot be exported.")
    torch.jit.save(traced, str(path))


def _write_yaml(path: Path, content: dict) -> None:
    from bioimageio.spec.utils import write_yaml

    write_yaml(content, path)
