"""The ``vosrr`` command's entry point, kept apart from ``vosrr.cli`` so that it runs before torch is imported.

- A Ctrl-C or a SIGTERM while the command starts (torch takes seconds to import) is noted, and once the import is
  done the command stops with one line, not a traceback (an exception inside torch's C++ start-up would abort).
- A SIGTERM (``kill``, ``timeout``, a container stopping) is handled like a Ctrl-C: the frames done are kept
  complete, the overlay stays playable; the exit code is 143 (128 + SIGTERM), a Ctrl-C's 130.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

__all__ = ["main"]

#: exit codes: interrupted by Ctrl-C, stopped by SIGTERM
INTERRUPTED, TERMINATED = 130, 143


def main() -> None:
    stopped: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        stopped.append(signum)  # while torch imports: an exception raised inside its C++ start-up would abort

    signal.signal(signal.SIGINT, note)
    signal.signal(signal.SIGTERM, note)
    from vosrr.cli import main as run

    if stopped:  # the import is done; nothing was opened or written yet
        sys.stderr.write("error: interrupted while starting; nothing was written\n")
        sys.exit(TERMINATED if signal.SIGTERM in stopped else INTERRUPTED)

    def terminate(signum: int, frame: FrameType | None) -> None:
        stopped.append(signum)
        raise KeyboardInterrupt  # the CLI's one path for stopping early

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, terminate)
    try:
        run()
    except SystemExit as done:
        if signal.SIGTERM in stopped and done.code == INTERRUPTED:
            sys.exit(TERMINATED)
        raise


if __name__ == "__main__":
    main()
