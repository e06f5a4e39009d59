"""The ``mechscope`` command."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def _names(args: argparse.Namespace) -> None:
    from .models.hook_points import select_names
    from .models.loading import load

    model = load(args.model)
    for name in select_names(args.pattern, model.names):
        point = model.hook_point(name)
        print(f"{name:40s} {point.layout}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mechscope", description="Mechanistic interpretability toolkit.")
    parser.add_argument("--version", action="version", version=f"mechscope {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the IOI demo report on the bundled model")
    demo.add_argument("--model", default="smollm2-135m")

    names = sub.add_parser("names", help="list a model's activation names and layouts")
    names.add_argument("--model", default="smollm2-135m")
    names.add_argument("pattern", nargs="?", default="*", help="glob, e.g. 'blocks.0.*'")

    from .sae.commands import add_parsers as add_sae_parsers

    add_sae_parsers(sub)

    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import main as demo_main

        demo_main(args.model)
    elif args.command == "names":
        _names(args)
    elif args.command == "sae":
        from .sae.commands import run as run_sae

        run_sae(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
