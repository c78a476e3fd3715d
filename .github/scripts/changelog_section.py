#!/usr/bin/env python3
"""Print one version's section of CHANGELOG.md (Keep a Changelog), for a GitHub release's notes.

    python .github/scripts/changelog_section.py v0.2.0 [CHANGELOG.md]

The section is everything between ``## [0.2.0] ...`` and the next ``## `` heading (or the link
references at the end), without the heading itself. A missing or empty section is an error, so a
tag pushed without its changelog entry stops the release before anything is published.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def section(text: str, version: str) -> str:
    """The body of ``version``'s section in ``text`` (a leading ``v`` in ``version`` is ignored)."""
    version = version.strip().removeprefix("refs/tags/").removeprefix("v")
    heading = re.compile(rf"^## \[{re.escape(version)}\](?:\s|$)")
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if heading.match(line)), None)
    if start is None:
        raise ValueError(f"CHANGELOG has no section '## [{version}]'; add one before tagging v{version}")
    body = []
    for line in lines[start + 1:]:
        if line.startswith("## ") or re.match(r"^\[[^\]]+\]:\s", line):
            break
        body.append(line)
    result = "\n".join(body).strip()
    if not result:
        raise ValueError(f"the CHANGELOG section of {version} is empty; describe the release first")
    return result + "\n"


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    path = Path(argv[2] if len(argv) == 3 else "CHANGELOG.md")
    try:
        sys.stdout.write(section(path.read_text(encoding="utf-8"), argv[1]))
    except (OSError, ValueError) as error:
        print(f"changelog_section: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
