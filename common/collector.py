"""Python's cyclic garbage collector, kept out of the import of torch and Beam.

Importing them makes about half a million objects that live as long as the process. The collector walks all of
them again and again while they are made (each full collection visits every object so far), and once more as the
interpreter exits: seconds of every `alexlabel label` (BENCHMARKS.md, "Start-up"). So a command imports with the
collector paused, then freezes what exists (gc.freeze: moved where the collector never looks) and resumes it;
objects made afterwards are collected as ever.
"""
import contextlib
import gc


@contextlib.contextmanager
def paused_while_importing():
    """The collector off inside; on the way out, every object there is frozen and the collector back as it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
