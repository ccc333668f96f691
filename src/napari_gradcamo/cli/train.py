"""``gradcamo train`` and ``gradcamo synthetic``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from napari_gradcamo.cli._cache import add_cache_options, load_cache
from napari_gradcamo.cli._common import check_device, device_name, finite_float, positive_int, progress_bar
from napari_gradcamo.io.atomic import write_text


def cmd_train(args) -> int:
    from napari_gradcamo.crops.cache import check_class_list, check_images_once
    from napari_gradcamo.io.atomic import check_writable_folder, refuse_existing
    from napari_gradcamo.models.architectures import check_layer
    from napari_gradcamo.segment.field_list import read_manifest
    from napari_gradcamo.train.fit import BEST_FILE, LAST_FILE, RESUME_FILE, TrainConfig, fit
    from napari_gradcamo.train.resume import load_resume

    out = check_writable_folder(args.out)  # before any compute
    check_device(args.device)
    if args.resume:
        load_resume(out / RESUME_FILE)  # a missing, corrupt or foreign resume.pt: refused before the cache
    else:
        refuse_existing([out / name for name in (BEST_FILE, LAST_FILE, RESUME_FILE, "history.csv", "summary.json")],
                        args.overwrite)
    channels = args.channels.split(",") if args.channels else None
    manifest = read_manifest(args.manifest)
    check_images_once(manifest)
    classes = check_class_list(manifest, args.classes.split(",") if args.classes else None)
    if args.objective != "classifier":
        config = _vae_config(args)  # a wrong combination of options: refused before the cache is built
        manifest, cache = load_cache(args, args.manifest, out, args.crop_shape, channels, classes)
        return _train_vae(args, config, manifest, cache, out)
    outside_weight = _outside_gradient_weight(args)
    kwargs = _arch_kwargs(args)
    # a factory the user names on this command line (--arch custom --arch-kwargs '{"factory": ...}') is trusted
    trusted = kwargs.get("factory") if args.arch == "custom" else None
    check_layer(args.arch, kwargs, args.crop_shape, args.layer, trusted)  # unknown arch, kwargs or layer: before the cache
    config = TrainConfig(
        architecture=args.arch, architecture_kwargs=kwargs, target_layer=args.layer, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, patience=args.patience, balance=args.balance, jitter=args.jitter,
        outside_gradient_weight=outside_weight, context_randomisation=args.context_randomisation, seed=args.seed, device=args.device, amp=not args.no_amp,
        head=args.head, crop_mode=args.crop_mode, padding_value=args.padding_value,
    )
    config.validate()
    manifest, cache = load_cache(args, args.manifest, out, args.crop_shape, channels, classes)
    print(f"{len(cache.data)} crops of {len(manifest)} fields, classes {cache.class_names}, channels "
          f"{cache.channel_names}; cache {cache.folder} ({'reused' if cache.reused else 'built'})", file=sys.stderr)
    bar, update = progress_bar("train", "batch")

    def epoch_end(epoch: int, stats: dict) -> None:
        text = f"epoch {epoch}: loss {stats['loss']:.3f} acc {stats['accuracy']:.2f}"
        if stats.get("val_loss") is not None:
            text += f", val loss {stats['val_loss']:.3f} acc {stats['val_accuracy']:.2f}"
        if outside_weight > 0:
            text += f", outside-gradient penalty {stats['penalty']:.3g}"
        bar.write(text, file=sys.stderr)

    extra = {"manifest": str(Path(args.manifest).resolve()), "crop_cache": str(cache.folder)}
    try:
        result = fit(cache.data, cache.class_names, cache.channel_names, args.crop_shape, config, out,
                     resume=args.resume, extra_metadata=extra, trusted_factory=trusted, input_metadata={"voxel_size": cache.voxel_size},
                     progress=update, epoch_end=epoch_end)
    finally:
        bar.close()
    summary = {
        "checkpoint": str(out / BEST_FILE), "best_epoch": result.best_epoch, "epochs_run": len(result.history.loss),
        "stopped_early": result.stopped_early,
        "val_accuracy": result.history.val_accuracy[result.best_epoch - 1] if result.history.val_accuracy else None,
        "val_loss": result.history.val_loss[result.best_epoch - 1] if result.history.val_loss else None,
        "test": result.test, "crops": {k: int(len(v)) for k, v in result.split.items()},
        "target_layer": result.metadata.target_layer,
        "regularizer": result.metadata.training["regularizer"]["kinds"],
    }
    write_text(out / "summary.json", json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


def _outside_gradient_weight(args) -> float:
    """λ of the outside-gradient penalty: ``--outside-gradient-weight``, or its deprecated alias
    ``--gradcamo-weight`` (with a FutureWarning that names the new option)."""
    import warnings

    old = getattr(args, "gradcamo_weight", None)
    if old is None:
        return args.outside_gradient_weight
    if args.outside_gradient_weight_given:
        raise ValueError("Give --outside-gradient-weight only: --gradcamo-weight is its deprecated alias.")
    warnings.warn(
        "--gradcamo-weight is deprecated: it is now --outside-gradient-weight, and it penalises the squared input "
        "gradient outside the cell, not the Grad-CAMO share (that penalty raised the score without changing what "
        "the model used; docs/regularizer.md). Its scale differs: see docs/regularizer.md for the λ to use.",
        FutureWarning, stacklevel=2)
    return old


class _Given(argparse.Action):
    """Store the value and remember that the option was given (to refuse it together with its alias)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_given", True)


def _arch_kwargs(args) -> dict:
    if not args.arch_kwargs:
        return {"width": args.width} if args.arch in ("small-cnn-3d", "small-cnn-2d") else {}
    try:
        kwargs = json.loads(args.arch_kwargs)
    except json.JSONDecodeError as error:
        raise ValueError(f"--arch-kwargs is not valid JSON ({error}); give an object, e.g. '{{\"width\": 8}}'.") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"--arch-kwargs must be a JSON object such as '{{\"width\": 8}}', not {args.arch_kwargs!r}.")
    return kwargs


def _vae_config(args):
    """The checked :class:`~napari_gradcamo.train.vae_loop.VaeConfig` of ``--objective vae | sc-vae | infomax-vae``."""
    from napari_gradcamo.train.vae_loop import VaeConfig

    encoder = "small-cnn" if args.arch == "small-cnn-3d" else args.arch
    config = VaeConfig(objective=args.objective, encoder=encoder, width=args.width, latent_dim=args.latent_dim,
                       beta=args.beta, mi_weight=args.mi_weight, mi_alpha=args.mi_alpha, epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                       val_fraction=args.val_fraction, jitter=args.jitter, seed=args.seed, device=args.device)
    config.validate()
    return config


def _train_vae(args, config, manifest, cache, out: Path) -> int:
    """``--objective vae | sc-vae | infomax-vae``: a VAE (plain, skip-connection or InfoMax) whose latent means
    become the profiles."""
    from napari_gradcamo.train.vae_loop import fit_vae
    print(f"{len(cache.data)} crops of {len(manifest)} fields; {args.objective}, latent {args.latent_dim}; "
          f"cache {cache.folder} ({'reused' if cache.reused else 'built'})", file=sys.stderr)
    bar, update = progress_bar("train", "batch")

    def epoch_end(epoch: int, stats: dict) -> None:
        bar.write(f"epoch {epoch}: loss {stats['loss']:.1f} (reconstruction {stats['reconstruction']:.1f}, "
                  f"KL {stats['kl']:.2f}, MI {stats['mutual_information']:.3f}), val loss {stats['val_loss']:.1f}, "
                  f"{stats['seconds']:.1f} s", file=sys.stderr)

    extra = {"manifest": str(Path(args.manifest).resolve()), "crop_cache": str(cache.folder)}
    try:
        result = fit_vae(cache.data, cache.class_names, cache.channel_names, args.crop_shape, config, out,
                         extra_metadata=extra, progress=update, epoch_end=epoch_end)
    finally:
        bar.close()
    h = result.history
    summary = {"checkpoint": str(result.checkpoint), "objective": args.objective, "best_epoch": result.best_epoch,
               "epochs_run": len(h.loss), "val_loss": h.val_loss[result.best_epoch - 1],
               "seconds_per_epoch": sum(h.seconds) / len(h.seconds), "crops": {k: int(len(v)) for k, v in result.split.items()},
               "target_layer": result.metadata.target_layer}
    write_text(out / "summary.json", json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


def cmd_synthetic(args) -> int:
    from napari_gradcamo.synthetic.files import write_synthetic_manifest

    confound = args.confound_class
    if confound is not None and confound not in ("mismatch", "random"):
        confound = int(confound)
    path = write_synthetic_manifest(args.out, args.scenario, seed=args.seed, n_fields=args.fields,
                                    first_well=args.first_well, confound_class=confound, n_cells=args.cells,
                                    sites_per_well=args.sites_per_well, planar=args.planar)
    print(json.dumps({"manifest": str(path)}, indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a 3D crop classifier from a manifest (CSV) of images and masks")
    p.add_argument("manifest", help="CSV with image, class, plate, well, site and masks (or cellpose settings)")
    p.add_argument("--out", required=True, help="output folder: model.safetensors, last.safetensors, resume.pt, history.csv")
    p.add_argument("--overwrite", action="store_true", help="replace a finished training's files in --out")
    p.add_argument("--arch", default="small-cnn-3d",
                   help="small-cnn-3d, small-cnn-2d (2D images, --crop-shape 1 Y X), efficientnet-b0 … efficientnet-b7, "
                        "or a name registered by an installed package (the VAE encoder: small-cnn-3d or efficientnet-b0…b2)")
    p.add_argument("--head", default="softmax", choices=("softmax", "sigmoid-binary", "multilabel"),
                   help="output head: softmax over the classes, one sigmoid logit (two classes), or multi-label sigmoids")
    p.add_argument("--width", type=positive_int, default=8, help="small CNN width")
    p.add_argument("--arch-kwargs", default=None, help="JSON architecture keyword arguments (overrides --width)")
    p.add_argument("--crop-shape", type=positive_int, nargs=3, default=[8, 32, 32], metavar=("Z", "Y", "X"))
    p.add_argument("--crop-mode", choices=("context", "masked"), default="context",
                   help="context: crops keep the neighbourhood; masked: everything outside the cell is set to "
                        "--padding-value (DeepProfiler's mask_objects). Recorded in the checkpoint; the audit crops alike")
    p.add_argument("--padding-value", type=finite_float, default=0.0,
                   help="value outside the cell for --crop-mode masked, in normalised units (0 = the training mean)")
    p.add_argument("--channels", default=None, help="comma-separated stains to use, in order (default: the first image's)")
    p.add_argument("--classes", default=None, help="comma-separated class order (default: sorted class names)")
    p.add_argument("--layer", default=None, help="Grad-CAM layer stored in the checkpoint (default: chosen on the validation crops)")
    p.add_argument("--epochs", type=positive_int, default=30)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--lr", type=finite_float, default=2e-3, help="peak learning rate of the one-cycle schedule (AdamW)")
    p.add_argument("--weight-decay", type=finite_float, default=1e-4)
    p.add_argument("--val-fraction", type=finite_float, default=0.2, help="share of wells (per class) for validation")
    p.add_argument("--test-fraction", type=finite_float, default=0.0, help="share of wells (per class) held out as a test split")
    p.add_argument("--patience", type=int, default=5, help="stop after this many epochs without a lower validation loss (0: never)")
    p.add_argument("--balance", choices=("loss", "sampler", "none"), default="loss",
                   help="class balance: weighted loss, balanced sampling, or none")
    p.add_argument("--jitter", type=finite_float, default=0.1, help="per-channel intensity jitter (s.d. of the gain)")
    p.add_argument("--outside-gradient-weight", type=finite_float, default=0.0, metavar="LAMBDA", action=_Given,
                   help="weight λ of the outside-gradient penalty: λ · the summed squared input gradient of the "
                        "log-probabilities outside the cell (docs/regularizer.md; 0: off)")
    p.add_argument("--gradcamo-weight", type=finite_float, default=None, metavar="LAMBDA",
                   help="deprecated alias of --outside-gradient-weight (warns)")
    p.add_argument("--context-randomisation", type=finite_float, default=0.0, metavar="P",
                   help="probability that a training crop keeps its cell and takes the context of a random crop of "
                        "its batch, so the context cannot carry the class (docs/regularizer.md; 0: off)")
    p.set_defaults(outside_gradient_weight_given=False)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda[:N] or mps")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out (resume.pt)")
    g = p.add_argument_group("self-supervised objectives (docs/self-supervised.md)")
    g.add_argument("--objective", choices=("classifier", "vae", "sc-vae", "infomax-vae"), default="classifier",
                   help="classifier (default); vae, sc-vae (skip-connection VAE) or infomax-vae: profiles = latent "
                        "means, no labels used")
    g.add_argument("--latent-dim", type=int, default=16, help="VAE latent size")
    g.add_argument("--beta", type=float, default=1.0, help="weight β of the VAE's KL term")
    g.add_argument("--mi-weight", type=float, default=0.0,
                   help="weight γ of the mutual-information bound (infomax-vae; 0 there means 1.0)")
    g.add_argument("--mi-alpha", type=float, default=0.5, help="interpolation α of the MI bound (1: InfoNCE-like, 0: NWJ)")
    add_cache_options(p)
    p.set_defaults(func=cmd_train, lock_folder="out")

    p = sub.add_parser("synthetic", help="write synthetic 3D Cell Painting fields + masks + manifest.csv")
    p.add_argument("out", help="output folder")
    p.add_argument("--scenario", choices=("honest", "shortcut"), default="honest")
    p.add_argument("--fields", type=int, default=16, help="fields (--sites-per-well sites per well, wells alternate classes)")
    p.add_argument("--cells", type=int, default=12, help="cells per field")
    p.add_argument("--sites-per-well", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--first-well", type=int, default=0)
    p.add_argument("--confound-class", default=None, help="break the background confound: mismatch, random or a class index")
    p.add_argument("--2d", dest="planar", action="store_true", help="2D fields (CYX): each field's widest plane")
    p.set_defaults(func=cmd_synthetic)
