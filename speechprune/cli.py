"""The `speechprune` command line: one sub-command per task.

The sub-commands live in :mod:`speechprune.commands` (``speechprune study`` in
:mod:`speechprune.study`): each adds its parser and sets ``func`` to a callable taking the
parsed namespace and returning an exit code. This module runs one and turns a user's mistake
into one line on stderr.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
import traceback
import warnings
from typing import NoReturn

from speechprune.commands import register_all
from speechprune.errors import SpeechPruneError, SpeechPruneWarning


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line (``speechprune CMD: error: --flag ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        match = re.fullmatch(r"argument ([^:]+?): (must .*|invalid choice.*|expected .*)", message, flags=re.S)
        if match:  # "argument --seed/-s: must be ..." -> "--seed must be ..."
            flag = match.group(1).split("/")[0]
            message = f"{flag} {match.group(2)}" if match.group(2).startswith("must") else \
                f"{flag}: {match.group(2)}"
        hint = f" (see {self.prog} --help)"
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}{hint}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="speechprune",
        description="Data-free, training-free compression of speech foundation models.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_all(sub)
    return parser


def _describe(err: BaseException) -> str:
    """One line for a user's mistake: what failed, where, and what to do."""
    if isinstance(err, UnicodeDecodeError):
        return (f"cannot read a text file as UTF-8 ({err.reason} at byte {err.start}); "
                "save it as UTF-8 and run again")
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError | PermissionError):
        where = f" {err.filename}" if err.filename else ""
        hints = {errno.EROFS: "choose a writable place", errno.ENOSPC: "free some space or choose another place",
                 errno.EACCES: "check its permissions", errno.EDQUOT: "free some space or choose another place"}
        hint = hints.get(err.errno, "check the path and run again")
        return f"{err.strerror or err}{':' + where if where else ''}; {hint}"
    if isinstance(err, FileNotFoundError | PermissionError) and err.filename:
        fix = "check the path" if isinstance(err, FileNotFoundError) else "check its permissions"
        return f"{err.strerror}: {err.filename}; {fix}"
    return str(err)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, SpeechPruneWarning):
        print(f"speechprune: warning: {message}", file=sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command. A user's mistake (bad input, a path that cannot be read or written,
    a file that is not UTF-8) is one line on stderr and exit code 2; ``SPEECHPRUNE_DEBUG=1``
    adds the traceback. Anything else is a bug and keeps its traceback."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help (0) or a usage error, already said in one line (2)
        return done.code if isinstance(done.code, int) else 2
    debug = os.environ.get("SPEECHPRUNE_DEBUG", "") not in ("", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("always", SpeechPruneWarning)
        warnings.showwarning = _show_warning
        try:
            return int(args.func(args) or 0)
        except (SpeechPruneError, OSError, UnicodeDecodeError) as err:
            if debug:
                traceback.print_exc()
            print(f"speechprune {args.command}: error: {_describe(err)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            if debug:
                traceback.print_exc()
            print(f"speechprune {args.command}: interrupted", file=sys.stderr)
            return 130
