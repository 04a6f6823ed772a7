"""The ``vosrr`` command's entry point, kept apart from ``vosrr.cli`` so that it runs before torch is imported.

- A Ctrl-C or a SIGTERM while the command starts (torch takes seconds to import) is one line, not a traceback.
- A SIGTERM (``kill``, ``timeout``, a container stopping) is handled like a Ctrl-C: the frames done are kept
  complete, the overlay stays playable; the exit code is 143 (128 + SIGTERM), a Ctrl-C's 130.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

__all__ = ["main"]

#: exit codes: interrupted by Ctrl-C, stopped by SIGTERM
INTERRUPTED, TERMINATED = 130, 143


def main() -> None:
    terminated: list[int] = []

    def terminate(signum: int, frame: FrameType | None) -> None:
        terminated.append(signum)
        raise KeyboardInterrupt  # the CLI's one path for stopping early

    signal.signal(signal.SIGTERM, terminate)
    try:
        from vosrr.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted while starting; nothing was written\n")
        sys.stderr.flush()
        # at once: a half-imported torch's exit handlers are not to run (nothing of ours is open yet)
        os._exit(TERMINATED if terminated else INTERRUPTED)
    try:
        run()
    except SystemExit as done:
        if terminated and done.code == INTERRUPTED:
            sys.exit(TERMINATED)
        raise


if __name__ == "__main__":
    main()
