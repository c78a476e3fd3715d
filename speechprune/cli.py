"""The `speechprune` command line: one sub-command per task.

Each sub-command lives beside the code it drives: a module listed in ``_COMMAND_MODULES``
defines ``register_cli(subparsers)``, which adds its parser and sets ``func`` to a callable
taking the parsed namespace and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

_COMMAND_MODULES = (
    "speechprune.compress",
    "speechprune.evaluate",
    "speechprune.finetune",
    "speechprune.experiment",
    "speechprune.study",
)

from speechprune.errors import SpeechPruneError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speechprune",
        description="Data-free, training-free compression of speech foundation models.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:  # a module not written yet
            if err.name == name:
                continue
            raise
        module.register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (SpeechPruneError, FileNotFoundError) as err:
        print(f"speechprune {args.command}: error: {err}", file=sys.stderr)
        return 2
