"""Write (or check) the study tables of the README and of the book's "Every saved study" page.

Every table in those files that summarises a saved study sits between two markers:

    <!-- speechprune study studies/NAME.toml --summary -->
    ...what that command prints...
    <!-- end of study summary -->

(or ``--scores`` for a screening's score table, ``--target`` for the README's compact table).

    python scripts/readme_studies.py           # rewrite every block from results/studies/NAME.json
    python scripts/readme_studies.py --check   # exit 1 when a block differs (tests/test_readme.py)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ("README.md", "book/study_tables.md")
BLOCK = re.compile(r"(<!-- speechprune study (studies/[\w.-]+\.toml) (--summary|--scores|--target) -->\n)(.*?)"
                   r"(<!-- end of study summary -->)",
                   re.S)


def summary(study_file: str, flag: str = "--summary") -> str:
    """What ``speechprune study STUDY --summary`` (or ``--scores``) prints, run from the repository root."""
    from speechprune.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.chdir(ROOT):
        code = main(["study", study_file, flag])
    if code != 0:
        raise SystemExit(f"speechprune study {study_file} {flag} failed with exit code {code}")
    return out.getvalue().rstrip("\n") + "\n"


def render(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + "\n" + summary(m.group(2), m.group(3)) + "\n" + m.group(5), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that the README is up to date")
    args = parser.parse_args(argv)
    stale = []
    for name in FILES:
        path = ROOT / name
        text = path.read_text(encoding="utf-8")
        new = render(text)
        if new == text:
            continue
        if args.check:
            stale.append(name)
        else:
            path.write_text(new, encoding="utf-8")
            print(f"{name}: {len(BLOCK.findall(text))} study tables written")
    if stale:
        print(f"{', '.join(stale)}: a study table differs from its saved study; run python scripts/readme_studies.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
