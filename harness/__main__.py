"""``python -m dllm_bench`` and the ``dllm-bench`` console script (also ``accelerate launch
-m dllm_bench train ...``).

SIGINT / SIGTERM are turned into one ``interrupted`` line and exit code 130 / 143 from the
first statement on, before the CLI's imports (typer, rich, click) run: Ctrl-C during
imports or argument parsing then never prints a ``KeyboardInterrupt`` traceback or Click's
``Aborted!``. :func:`dllm_bench.cli.main` replaces these handlers with its own, which let a
running command report what it saved.
"""

import signal

from .errors import exit_on_signal


def main() -> None:
    """Install the early signal handlers, then run :func:`dllm_bench.cli.main`."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # keep an inherited SIG_IGN
        signal.signal(signal.SIGINT, exit_on_signal)
    signal.signal(signal.SIGTERM, exit_on_signal)
    from .cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
