"""The ``vosrr`` command's entry point, kept apart from ``vosrr.cli`` so that it runs before torch is imported.

- A Ctrl-C or a SIGTERM while the command starts (torch takes seconds to import) is noted, and once the import is
  done the command stops with one line, not a traceback (an exception inside torch's C++ start-up would abort).
- A SIGTERM (``kill``, ``timeout``, a container stopping) is handled like a Ctrl-C: the frames done are kept
  complete, the overlay stays playable; the exit code is 143 (128 + SIGTERM), a Ctrl-C's 130. So is a SIGHUP (the
  terminal or SSH session closed; exit 129), unless it is ignored (``nohup``), which stays so.
- An empty argument (``vosrr segment "$VIDEO"`` with the variable unset) is refused at once (exit 2): an empty path
  would otherwise mean the current folder.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

__all__ = ["main"]

#: exit codes: a usage error, interrupted by Ctrl-C, stopped by SIGTERM, by SIGHUP
USAGE, INTERRUPTED, TERMINATED, HUNG_UP = 2, 130, 143, 129


def empty_argument(args: list[str]) -> str | None:
    """The message for the first empty argument (``""``, ``"  "``, ``--out=``) of ``args``, or ``None``."""
    for i, arg in enumerate(args):
        option, equals, value = arg.partition("=")
        if arg.strip() and not (arg.startswith("--") and equals and not value.strip()):
            continue
        if equals:
            what = f"the value of {option}"
        elif i and args[i - 1].startswith("-") and args[i - 1] != "--":
            what = f"the value of {args[i - 1]}"
        else:
            what = f"argument {i + 1}"
        return f"{what} is empty (an unset shell variable?); give a path or a value, or leave the option out"
    return None


def _stops() -> list[signal.Signals]:
    """The signals other than Ctrl-C's that stop a run like it: SIGTERM, and SIGHUP unless ignored (nohup)."""
    hangup = getattr(signal, "SIGHUP", None)  # none on Windows
    keep_ignored = hangup is None or signal.getsignal(hangup) is signal.SIG_IGN
    return [signal.SIGTERM] if keep_ignored else [signal.SIGTERM, hangup]


def _code(stopped: list[int]) -> int:
    """The exit code of a run stopped by the first of ``stopped``: 128 + its number (Ctrl-C: 130)."""
    return 128 + int(stopped[0]) if stopped else INTERRUPTED


def main() -> None:
    empty = empty_argument(sys.argv[1:])
    if empty is not None:  # before the slow import: nothing to load for a typo
        sys.stderr.write(f"error: {empty}\n")
        sys.exit(USAGE)
    stopped: list[int] = []
    stops = _stops()

    def note(signum: int, frame: FrameType | None) -> None:
        stopped.append(signum)  # while torch imports: an exception raised inside its C++ start-up would abort

    for stop in (signal.SIGINT, *stops):
        signal.signal(stop, note)
    from vosrr.cli import main as run

    if stopped:  # the import is done; nothing was opened or written yet
        sys.stderr.write("error: interrupted while starting; nothing was written\n")
        sys.exit(_code(stopped))

    def terminate(signum: int, frame: FrameType | None) -> None:
        stopped.append(signum)
        raise KeyboardInterrupt  # the CLI's one path for stopping early

    signal.signal(signal.SIGINT, signal.default_int_handler)
    for stop in stops:
        signal.signal(stop, terminate)
    try:
        run()
    except SystemExit as done:
        if stopped and done.code == INTERRUPTED:
            sys.exit(_code(stopped))
        raise


if __name__ == "__main__":
    main()
