"""``gradcamo export-bioimageio``: a checkpoint as a bioimage.io model package (.zip), with the state dict and
TorchScript weights (the latter runs in any bioimage.io consumer with PyTorch, without napari-gradcamo).

Importing needs no command: ``--model`` of every command takes a package (.zip, its folder or rdf.yaml).
"""

from __future__ import annotations

import json

from napari_gradcamo.cli._common import add_trust_option


def cmd_export(args) -> int:
    from pathlib import Path

    from napari_gradcamo.io.atomic import OutputError
    from napari_gradcamo.models.bioimageio import export_package
    from napari_gradcamo.models.checkpoint import load_checkpoint

    folder = Path(args.out).parent
    if not folder.is_dir():  # checked before loading: the package's temporary file would be named instead
        raise OutputError(f"--out {args.out}: the folder {folder} does not exist; create it first "
                          f"(mkdir -p {folder}) or choose another --out.")
    if Path(args.out).is_dir():
        raise OutputError(f"--out {args.out} is a folder; give the package's file name, e.g. {Path(args.out) / 'model.zip'}.")
    bundle = load_checkpoint(args.model, args.trust_factory)
    out = export_package(bundle, args.out, name=args.name, overwrite=args.overwrite)
    report = {"package": str(out), "classes": bundle.metadata.class_names,
              "channels": bundle.metadata.channel_names, "crop_shape": bundle.metadata.crop_shape,
              "weights": ["pytorch_state_dict", "torchscript"]}
    if args.check:
        from bioimageio.core import test_model

        summary = test_model(out)
        report["bioimageio_core_test"] = summary.status
        if summary.status != "passed":
            print(summary.format(), flush=True)
            print(json.dumps(report, indent=2))
            return 1
    print(json.dumps(report, indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("export-bioimageio", help="write a checkpoint as a bioimage.io model package (.zip) with "
                       "state-dict and TorchScript weights")
    p.add_argument("model", help="checkpoint (.safetensors, or .pt state dict + .json) or a bioimage.io package (.zip, folder, rdf.yaml)")
    p.add_argument("--out", required=True, help="the package to write, NAME.zip")
    p.add_argument("--name", default=None, help="the model's name in the package (default: architecture and classes)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing package")
    p.add_argument("--check", action="store_true",
                   help="then run bioimage.io's own test on it (bioimageio.core: reproduces the test output offline)")
    add_trust_option(p)
    p.set_defaults(func=cmd_export)
