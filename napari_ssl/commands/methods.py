"""`napari-ssl methods`: the self-supervised pretraining methods, one line each."""
from __future__ import annotations

import argparse

HELP = "list the self-supervised pretraining methods"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--options", dest="show_options", action="store_true", help="also list each method's --opt options and defaults")


def run(args: argparse.Namespace) -> int:
    from ..pretext import METHODS

    width = max((len(n) for n in METHODS), default=10)
    for name, cls in METHODS.items():
        print(f"{name:<{width}}  {cls.kind:<15}  {cls.summary}")
        if args.show_options:
            for key, default in cls.options.items():
                doc = cls.option_help.get(key, "")
                print(f"{'':<{width}}    --opt {key}={default}" + (f"  ({doc})" if doc else ""))
    return 0
