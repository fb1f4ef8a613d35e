"""`python -m cli status --watch`: the status table, refreshed in place for a terminal beside the writer.

Each frame is exactly what `python -m cli status` prints. On a terminal a frame is drawn from
the top-left corner over the previous one (cursor home, each line cleared to its end, the rest
of the screen cleared), which does not flicker the way a full clear does; piped, frames are
simply printed one after another. Plain ANSI, so no dependency is added.
"""

from __future__ import annotations

import contextlib
import io
import signal
import sys
import time
from datetime import datetime, timezone

HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


def frame(args, status_command) -> str:
    """One frame: a title line, then the status table (or the error that stopped it this time)."""
    from cli.deadline import set_deadline
    from cli.outcome import error_line

    out = io.StringIO()
    set_deadline(args.timeout)  # each frame is bounded like one `status`
    try:
        with contextlib.redirect_stdout(out):
            status_command(args)
    except Exception as err:  # noqa: BLE001 - storage down mid-run: show the one line, keep watching
        out.write(error_line(err)[1] + "\n")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"python -m cli status --watch  every {args.interval:g}s  {stamp}  (Ctrl-C to stop)\n\n" + out.getvalue()


def watch(args, status_command) -> int:
    """Render `status_command(args)` every `args.interval` seconds until Ctrl-C; returns 0."""
    if args.interval <= 0:
        raise SystemExit("error: --interval must be a positive number of seconds")
    # Inherited as ignored when started in the background without job control; Ctrl-C must stop it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    tty = sys.stdout.isatty()
    if tty:
        sys.stdout.write("\x1b[2J")  # once: later frames overwrite in place
    try:
        while True:
            text = frame(args, status_command)
            if tty:
                body = "".join(line + CLEAR_LINE + "\n" for line in text.rstrip("\n").split("\n"))
                sys.stdout.write(HOME + body + CLEAR_BELOW)
            else:
                sys.stdout.write(text + "\n")
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        if tty:
            sys.stdout.write("\n")
        return 0
