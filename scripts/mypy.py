"""Type-check dllm_bench with mypy, configured in pyproject.toml ([tool.mypy]).

mypy cannot follow setuptools' editable install (an import hook, which static checkers do
not run), and the package is laid out with ``package-dir`` (``harness/`` is ``dllm_bench``,
``samplers/`` is ``dllm_bench.samplers``, ...). This script therefore links the installed
layout under ``build/mypy/`` (symlinks to the source files, rebuilt on every run from
``[tool.setuptools.package-dir]``), which ``[tool.mypy] mypy_path`` names, runs
``python -m mypy`` with the given arguments (default: the configured ``packages``), and
prints the messages with the source paths (``harness/evaluate.py``) instead of the links.

Usage: .venv/bin/python scripts/mypy.py [MYPY ARGS...]; exit status: mypy's (0 clean, 1 type
errors, 2 bad usage). Once the link tree exists, plain ``python -m mypy`` works as well (new
top-level files in ``harness/`` need a rerun of this script).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: mypy depends on tomli there
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parent.parent
LINKS = REPO / "build" / "mypy"


def link_tree(repo: Path = REPO, links: Path = LINKS) -> dict[str, str]:
    """Rebuild ``links`` as the installed package layout of ``[tool.setuptools.package-dir]``:
    one directory per package, holding a relative symlink per source entry and per
    sub-package folder. Returns {link prefix: source prefix}, both relative to ``repo``
    with a trailing slash, longest first (to map mypy's paths back)."""
    config = tomllib.loads((repo / "pyproject.toml").read_text())
    package_dir: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(links, ignore_errors=True)
    prefixes = {}
    for package, folder in sorted(package_dir.items()):
        target = links.joinpath(*package.split("."))
        if target.is_symlink() or target.exists():
            raise SystemExit(f"scripts/mypy.py: {package} is nested in a linked folder; link it per file")
        target.mkdir(parents=True)
        for entry in sorted((repo / folder).iterdir()):
            if entry.name != "__pycache__":
                (target / entry.name).symlink_to(os.path.relpath(entry, target))
        prefixes[f"{target.relative_to(repo).as_posix()}/"] = f"{folder}/"
    return dict(sorted(prefixes.items(), key=lambda kv: -len(kv[0])))


def source_path(line: str, prefixes: dict[str, str]) -> str:
    """``line`` with a leading link-tree path replaced by the source file's path."""
    for link, source in prefixes.items():
        if line.startswith(link):
            return source + line[len(link):]
    return line


def main(argv: list[str]) -> int:
    prefixes = link_tree()
    p = subprocess.run([sys.executable, "-m", "mypy", *argv], cwd=REPO, capture_output=True, text=True)
    for line in p.stdout.splitlines():
        print(source_path(line, prefixes))
    sys.stderr.write(p.stderr)
    return p.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
