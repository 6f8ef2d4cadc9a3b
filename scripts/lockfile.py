"""The lock file: merge uv's two resolutions into one file, and check it against pyproject.toml.

requirements.lock is a pip requirements file with exact versions and hashes. Its first part is
the runtime closure (what the container images install); after the line DEV_MARKER come the
packages only the tests, linters and code generators need. scripts/lock writes it;
scripts/test runs `check` so a pyproject.toml edit without a new lock fails with the fix.

    python scripts/lockfile.py merge RUNTIME.txt ALL.txt > requirements.lock
    python scripts/lockfile.py check pyproject.toml requirements.lock
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

DEV_MARKER = "# == dev =="
HEADER = """\
# plugforge's Python dependencies, exact versions and hashes, for Python >= 3.11 on any platform.
# Made by scripts/lock (uv pip compile --universal --generate-hashes); do not edit by hand.
# Install: pip install --require-hashes -r requirements.lock  (lines before the dev marker:
# the runtime only, as the container images do).
"""
_CONSTRAINT_NOTE = re.compile(r"^\s*#\s+-c ")
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_blocks(text: str) -> dict[str, str]:
    """Each pinned requirement of uv's output (its line, hashes and 'via' comments) by name."""
    blocks: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines(keepends=True):
        match = _PIN.match(line)
        if match:
            current = _norm(match.group(1))
            blocks[current] = line
        elif current and line.startswith((" ", "\t")):
            if not _CONSTRAINT_NOTE.match(line):  # "via -c /tmp/...": scripts/lock's temp file
                blocks[current] += line
        else:
            current = None
    return blocks


def pins(lock_text: str) -> dict[str, str]:
    """Name -> exact version of every requirement in a lock file."""
    found = {}
    for line in lock_text.splitlines():
        match = _PIN.match(line)
        if match:
            found[_norm(match.group(1))] = match.group(2)
    return found


def merge(runtime_text: str, all_text: str) -> str:
    runtime, everything = parse_blocks(runtime_text), parse_blocks(all_text)
    for name, block in runtime.items():
        if pins(block) != pins(everything.get(name, "")):
            raise SystemExit(f"lock: runtime and dev resolutions disagree on {name}")
    dev_only = {name: block for name, block in everything.items() if name not in runtime}
    return (
        HEADER
        + "".join(runtime[n] for n in sorted(runtime))
        + f"\n{DEV_MARKER}\n"
        + "".join(dev_only[n] for n in sorted(dev_only))
    )


def unmet(pyproject: dict[str, object], lock_text: str) -> list[str]:
    """The requirements of pyproject.toml (runtime and every extra) the lock does not satisfy."""
    from packaging.requirements import Requirement  # in the venv (pytest needs it)

    project = pyproject["project"]
    if not isinstance(project, dict):
        raise SystemExit("pyproject.toml has no [project] table")
    wanted = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        wanted += extra
    locked = pins(lock_text)
    problems = []
    for spec in wanted:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        version = locked.get(_norm(req.name))
        if version is None:
            problems.append(f"{req.name} is not in the lock")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}=={version} does not satisfy '{spec}'")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "merge":
        sys.stdout.write(merge(Path(argv[1]).read_text(), Path(argv[2]).read_text()))
        return 0
    if len(argv) == 3 and argv[0] == "check":
        pyproject = tomllib.loads(Path(argv[1]).read_text())
        problems = unmet(pyproject, Path(argv[2]).read_text())
        for problem in problems:
            print(f"requirements.lock: {problem}", file=sys.stderr)
        if problems:
            print("the lock no longer satisfies pyproject.toml: run scripts/lock", file=sys.stderr)
            return 1
        count = len(pins(Path(argv[2]).read_text()))
        print(f"requirements.lock ({count} pins) satisfies pyproject.toml")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
