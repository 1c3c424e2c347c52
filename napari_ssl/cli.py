"""The `napari-ssl` command. Each subcommand lives in napari_ssl/commands/<name>.py and defines
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``; heavy imports stay inside run."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import NapariSSLError

# order shown in --help
COMMANDS = ["info", "methods", "pretrain", "finetune", "fill_between", "predict", "suggest", "export_seg", "export_nifti", "deidentify",
            "pacs", "demo"]


def _load(name: str):
    try:
        return importlib.import_module(f"napari_ssl.commands.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"napari_ssl.commands.{name}":
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="napari-ssl", description="Self-supervised pretraining and few-shot segmentation of CT/MR scans.")
    parser.add_argument("--version", action="version", version=f"napari-ssl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        mod = _load(name)
        if mod is None:
            continue
        p = sub.add_parser(name.replace("_", "-"), help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except NapariSSLError as exc:
        print(f"napari-ssl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-ssl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
