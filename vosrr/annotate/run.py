"""``vosrr annotate``'s job: open the video and the output folder, load the segmenter, serve the page until Ctrl-C."""

from __future__ import annotations

import os
import sys
import threading
import webbrowser
from collections.abc import Callable, Iterable
from pathlib import Path

from vosrr.annotate.frames import FrameSource
from vosrr.annotate.server import make_server
from vosrr.annotate.session import Session
from vosrr.pipeline import MAX_FULL_SIDE
from vosrr.segmenter import Segmenter
from vosrr.video import VideoError

__all__ = ["PortError", "annotate"]


class PortError(ValueError):
    """The port asked for cannot be had; the message says what to do."""


def has_display() -> bool:
    """Whether a browser opened here could be seen (not over SSH, and a display on Linux)."""
    if os.environ.get("SSH_CONNECTION") or os.environ.get("SSH_TTY"):
        return False
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def annotate(
    video: Path,
    out: Path,
    load: Callable[[], Segmenter],
    *,
    port: int = 0,
    open_page: bool = True,
    force: bool = False,
    segment_options: Iterable[str] = (),
    say: Callable[[str], None] = print,
) -> Session:
    """Serve the annotation page for ``video`` (results under ``out``) until Ctrl-C; returns the closed session.

    Bad input fails before anything is served: the video (``VideoError``), the output folder (``OutputError``),
    the weights (``load``), the port (``PortError``).
    """
    source = FrameSource(video)
    try:
        segmenter = load()
        side = max(source.info.width, source.info.height)
        if segmenter.config.max_side is None and side > MAX_FULL_SIDE:
            raise VideoError(
                f"{video} is {source.info.width}x{source.info.height}, too large to process at full size (over "
                f"{MAX_FULL_SIDE} pixels on the longer side); pass --max-side 1280 (masks are still written at "
                "full size)"
            )
        session = Session(segmenter, source, out, force=force, segment_options=segment_options)
    except BaseException:
        source.close()
        raise
    try:
        try:
            server, sock, url = make_server(session, port)
        except OSError as error:
            raise PortError(
                f"cannot listen on 127.0.0.1:{port} ({error.strerror}); choose another --port, or 0"
            ) from error
        say(f"vosrr annotate: {video} -> {out}/")
        say(f"open {url}")
        say("(Ctrl-C stops the server; what is written is complete)")
        if open_page and has_display():
            threading.Timer(0.5, webbrowser.open, [url]).start()
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled: the normal way to stop
            pass
        finally:
            sock.close()
    finally:
        session.close()
    status = session.status()
    say(f"stopped: {status['done']} frame(s) with masks, strokes on {len(status['annotated'])} frame(s) in {out}/")
    return session
