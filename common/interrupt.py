"""Ctrl-C in the long commands (`train`, `label`): the first one asks the work to stop where it can stop whole,
which then raises Interrupted with one line that says how far it got, and the command exits 130 with that line."""
import contextlib
import os
import signal
import sys
import threading

import click


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped the work where it could stop whole; the message is the one line that says how far it got."""


@contextlib.contextmanager
def ctrl_c_sets(flag: threading.Event, exit_line: str = ""):
    """Within the block, Ctrl-C (SIGINT) sets `flag` instead of raising KeyboardInterrupt, for the work to poll
    and stop at a point of its choosing; `flag` is cleared on leaving, for the next block.

    A KeyboardInterrupt would unwind the main thread wherever it stands, while other threads (Beam's workers)
    or processes (DDP's replicas) go on. With `exit_line`, a second Ctrl-C writes that line and exits 130 at
    once: os._exit, as the interpreter's own exit aborts the process under threads still running torch.
    Without it, a second one only asks again (a DDP process may get the terminal's and the launcher's). Signals
    reach the main thread only: in any other, Ctrl-C is left as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def first(signum, frame):
        flag.set()
        if exit_line:
            signal.signal(signal.SIGINT, second)

    def second(signum, frame):
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # the handler may interrupt a write to the same stream
                stream.flush()
        os.write(2, f"{exit_line}\n".encode())
        os._exit(130)

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        flag.clear()


@contextlib.contextmanager
def exits_130(say: bool = True):
    """For the commands: Interrupted ends the command with its line on stderr (when `say`: one process of many
    speaks) and status 130, as a shell reports a command that Ctrl-C ended."""
    try:
        yield
    except Interrupted as e:
        if say:
            click.echo(str(e), err=True)
        raise SystemExit(130) from None
