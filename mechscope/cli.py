"""The ``mechscope`` command.

Parsing imports nothing heavy (``--help`` and ``--version`` answer without importing torch);
each command imports what it needs when it runs. A `MechscopeError` (a bad argument, a model
that cannot be found, ...) is printed as ``mechscope: error: <message>`` on stderr with exit
status 2 and no traceback; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import MechscopeError

EXIT_ERROR = 2  # argparse's status for a usage error too


def _names(args: argparse.Namespace) -> None:
    from .models.hook_points import select_names
    from .models.loading import load

    model = load(args.model)
    for name in select_names(args.pattern, model.names):
        point = model.hook_point(name)
        print(f"{name:40s} {point.layout}")


def _demo(args: argparse.Namespace) -> None:
    from .demo import main as demo_main

    demo_main(args.model)


def _sae(args: argparse.Namespace) -> None:
    from .sae.commands import run as run_sae

    run_sae(args)


def _transcoders(args: argparse.Namespace) -> None:
    from .graphs.commands import run as run_transcoders

    run_transcoders(args)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (builds without importing torch)."""
    from .graphs.commands import add_parsers as add_transcoder_parsers
    from .sae.commands import add_parsers as add_sae_parsers

    parser = argparse.ArgumentParser(prog="mechscope", description="Mechanistic interpretability toolkit.")
    parser.add_argument("--version", action="version", version=f"mechscope {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    common = argparse.ArgumentParser(add_help=False)  # --debug after the command name too
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the IOI demo report on the bundled model", parents=[common])
    demo.add_argument("--model", default="smollm2-135m")
    demo.set_defaults(handler=_demo)

    names = sub.add_parser("names", help="list a model's activation names and layouts", parents=[common])
    names.add_argument("--model", default="smollm2-135m")
    names.add_argument("pattern", nargs="?", default="*", help="glob, e.g. 'blocks.0.*'")
    names.set_defaults(handler=_names)

    add_sae_parsers(sub, parents=(common,))
    sub.choices["sae"].set_defaults(handler=_sae)
    add_transcoder_parsers(sub, parents=(common,))
    sub.choices["transcoders"].set_defaults(handler=_transcoders)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except MechscopeError as error:
        if args.debug:
            raise
        print(f"mechscope: error: {error}", file=sys.stderr)
        print("(run with --debug for the traceback)", file=sys.stderr)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
