"""Command line: ``gradcamo audit | layers | sweep | demo | train | profile | synthetic``.

Each subcommand lives in its own module with a ``register(subparsers)`` function; the option defaults
come from the settings dataclasses of the core.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ("audit", "demo", "train", "profile", "sweep", "plate", "virtual_stain", "bioimageio")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradcamo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"napari_gradcamo.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from napari_gradcamo.io.images import ImageError
    from napari_gradcamo.models.metadata import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        folder = getattr(args, "lock_folder", None)  # commands writing a folder hold it (io/lock.py)
        if folder is None:
            return args.func(args)
        from napari_gradcamo.io.lock import folder_lock

        with folder_lock(getattr(args, folder), what=f"--{folder}" if folder == "out" else "the output folder"):
            return args.func(args)
    except (ImageError, CheckpointError, ValueError) as error:
        print(f"gradcamo: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gradcamo: interrupted; no output of this step was written (files are replaced only when "
              "complete).", file=sys.stderr)
        return 130
    except OSError as error:  # disk full, permissions changed mid-run: the atomic writers left old files intact
        print(f"gradcamo: error: could not read or write {error.filename or 'a file'}: "
              f"{error.strerror or error}. Files already there were left as they were.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
