"""The command line: `python -m feather_mini <command>` (or `feather-mini <command>`); with no
command (or only options) it runs `demo`.

Each command lives in its own module, which provides `add_arguments(parser)` and
`main(args) -> int`; this file only dispatches. Errors a user can cause (a missing file,
a bad value) are printed as one line and exit with code 2, without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# command -> (its module, a one-line summary); each module adds its own options to the parser.
COMMANDS = {
    "demo": ("feather_mini.demo", "what FastV, PyramidDrop and FEATHER keep on one image, and what it costs (default)"),
    "heatmap": ("feather_mini.heatmap", "how often each grid position is kept, per method, over many images (PNG)"),
    "bench": ("feather_mini.bench", "time the prefill and decode with and without pruning (random weights)"),
    "eval": ("feather_mini.evaluate", "Table 1 in miniature: accuracy of each pruning method on the test split"),
    "train": ("feather_mini.train", "train the tiny LLaVA on synthetic scenes"),
    "fetch": ("feather_mini.fetch",
              "a pretrained SmolLM2 decoder: the one command that reaches the network, through pip"),
}


class UsageError(Exception):
    """A command line argparse cannot read (an unknown option, a value of the wrong type)."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        # One line, like every other bad value, in place of argparse's usage dump and exit (-h shows the usage).
        raise UsageError(f"{self.prog}: error: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="feather-mini", description="Visual-token pruning for LLaVA-style "
                           "models; with no command, runs the demo.")
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    for name, (module, summary) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary)
        p.set_defaults(module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["demo"] + argv  # the demo is the default command: `python -m feather_mini --json`
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        print(e, file=sys.stderr)
        return 2
    try:
        return importlib.import_module(args.module).main(args) or 0
    except (ValueError, TypeError, OSError) as e:  # OSError: a file that cannot be read or written
        print(f"feather-mini {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"feather-mini {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
