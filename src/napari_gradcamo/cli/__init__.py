"""Command line ``gradcamo``: audit where a single-cell classifier looks (Grad-CAMO), and the tools around it.

Each subcommand lives in its own module (listed in ``COMMAND_MODULES``) with a ``register(subparsers)``
function; the option defaults come from the settings dataclasses of the core. ``gradcamo --help`` lists
every subcommand with its one-line help; ``gradcamo --version`` prints the installed version.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ("audit", "demo", "train", "profile", "sweep", "plate", "virtual_stain", "bioimageio")


def build_parser() -> argparse.ArgumentParser:
    """The ``gradcamo`` parser with every subcommand of ``COMMAND_MODULES`` registered."""
    from napari_gradcamo import __version__

    what = __doc__.splitlines()[0].split(": ", 1)[1]
    parser = argparse.ArgumentParser(
        prog="gradcamo", description=what[0].upper() + what[1:],
        epilog="Run 'gradcamo COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s (napari-gradcamo) {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
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
