"""The `reconciler` console command: the no-op shortcut of `apply` first
(reconciler/noop.py, decision 0131), then the command line proper."""

from __future__ import annotations

import os
import sys


def main() -> None:
    from reconciler import noop

    if noop.shortcut(sys.argv[1:]):
        sys.stdout.flush()
        os._exit(0)  # as the full apply ends: nothing to tear down
    from reconciler.cli import main as command_line

    command_line()
