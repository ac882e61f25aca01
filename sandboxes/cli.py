"""``dllm-bench sandbox ...``: check the code sandboxes, build the Docker image.

Mounted by :mod:`dllm_bench.cli` as the ``sandbox`` sub-command. Results go to stdout
(a table, or JSON with ``--json``); progress and logs go to stderr.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

app = typer.Typer(help="Check code-execution sandboxes and build the Docker sandbox image.",
                  no_args_is_help=True)

_PROBES: list[tuple[str, str, bool]] = [
    # (name, program, expected to pass with the success marker)
    ("hello", "print(sum(range(10)))", True),
    ("premature-exit", "import sys; sys.exit(0)", False),
    ("network", "import socket; socket.create_connection(('127.0.0.1', 9), timeout=1)", False),
]


def check_backend(name: str, *, unsafe_no_isolation: bool = False) -> dict[str, Any]:
    """Availability plus probe runs for one backend: ``{"backend", "available", "detail", "probes"}``."""
    from dllm_bench import registry

    from .base import Limits, new_marker

    cls = registry.load("sandboxes", name)
    row: dict[str, Any] = {"backend": name, "available": False, "detail": "", "probes": []}
    if unsafe_no_isolation:
        ok, why = True, "unsafe: no isolation"
    else:
        ok, why = cls.available()
    row["available"], row["detail"] = ok, why
    if not ok:
        return row
    cfg: dict[str, Any] = {"unsafe_no_isolation": True} if unsafe_no_isolation else {}
    sb = cls(cls.Config(**cfg))
    try:
        row["describe"] = sb.describe()
        for probe, program, expect in _PROBES:
            out = sb.run(program, limits=Limits(wall_time_s=20), success_marker=new_marker())
            row["probes"].append({"probe": probe, "status": out.status, "ok": out.passed == expect,
                                  "wall_ms": round(out.wall_s * 1000, 1)})
    finally:
        sb.close()
    row["ok"] = all(p["ok"] for p in row["probes"])
    return row


def try_open(name: str, *, build_missing_image: bool = False, **config: Any) -> tuple[Any | None, str]:
    """``(sandbox, "")`` for backend ``name`` with ``config``, or ``(None, why not)``.

    ``build_missing_image``: for docker, build the image first when it is missing
    (:func:`dllm_bench.sandboxes.docker.build_image`, cached root fs). Used by tests and
    benchmarks to skip with a reason instead of failing (it lives here, above both backends,
    so that the contract module :mod:`dllm_bench.sandboxes.base` imports no backend).
    """
    from dllm_bench import registry

    try:
        cls = registry.load("sandboxes", name)
        if build_missing_image and name == "docker":
            from .docker import build_image

            build_image()
        if not config.get("unsafe_no_isolation"):
            ok, why = cls.available()
            if not ok:
                return None, why
        return cls(cls.Config(**config)), ""
    except Exception as exc:  # noqa: BLE001 - SandboxUnavailable, engine errors, ...
        return None, f"{name} sandbox unavailable: {exc}"


@app.command("check")
def check(
    backend: Annotated[str | None, typer.Option(help="process | docker (default: all installed backends).")] = None,
    unsafe_no_isolation: Annotated[bool, typer.Option(
        "--unsafe-no-isolation", help="DANGEROUS: probe the process backend without bubblewrap.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON on stdout.")] = False,
) -> None:
    """Say which sandboxes are available here and run a probe in each.

    Exit code 0 when the named backend (or, without --backend, at least one) works; 1 otherwise;
    2 (one line, with did-you-mean) for an unknown ``--backend``.
    """
    from dllm_bench import registry

    known = registry.names("sandboxes")
    if backend and backend not in known:
        from dllm_bench.console import console

        console.print(f"error: --backend {backend!r}: unknown sandbox{registry.did_you_mean(backend, known)} "
                      f"available: {', '.join(known)}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    names = [backend] if backend else known
    rows = [check_backend(n, unsafe_no_isolation=unsafe_no_isolation and n == "process") for n in names]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        from rich.table import Table

        from dllm_bench.console import stdout_console

        table = Table("backend", "available", "probes", "detail")
        for r in rows:
            probes = ", ".join(f"{p['probe']}={p['status']}{'' if p['ok'] else ' (UNEXPECTED)'}"
                               for p in r["probes"])
            table.add_row(r["backend"], "yes" if r["available"] else "no", probes or "-", r["detail"])
        stdout_console.print(table)
    good = [r for r in rows if r["available"] and r.get("ok")]
    if not good:
        raise typer.Exit(1)


@app.command("build-image")
def build_image_cmd(
    rebuild: Annotated[bool, typer.Option(help="Rebuild even if the image (and cached root fs) exist.")] = False,
    suite: Annotated[str, typer.Option(help="Debian suite for debootstrap.")] = "bookworm",
    mirror: Annotated[str | None, typer.Option(help="Debian mirror (default $DLLM_BENCH_DEBIAN_MIRROR "
                                                       "or http://deb.debian.org/debian).")] = None,
) -> None:
    """Build dllm-bench-sandbox:bookworm without a registry (debootstrap + docker import).

    The root-fs tarball is cached in $DLLM_BENCH_CACHE/sandbox (default ~/.cache/dllm-bench/sandbox).
    Prints the image id on stdout.
    """
    from dllm_bench.console import console, print_line

    from .base import SandboxUnavailable
    from .docker import IMAGE, build_image

    try:
        image_id = build_image(IMAGE, suite=suite, mirror=mirror, rebuild=rebuild,
                               log=lambda m: console.print(m, style="dim", markup=False, highlight=False))
    except SandboxUnavailable as exc:
        print_line("cannot build the sandbox image:", str(exc), style="red")
        raise typer.Exit(1) from None
    sys.stdout.write(f"{IMAGE} {image_id}\n")
