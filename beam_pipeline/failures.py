"""How a labeling run that fails for a reason the user can fix ends: one line that names it and the fix,
this run's partial temp files removed, and Beam's tracebacks of it shown with --verbose only. And how Ctrl-C
stops a local run: the workers finish what they hold, and it ends as a run does."""
import contextlib
import errno
import logging
import sys
import threading

import fsspec

from beam_pipeline.options import LabelOptions
from beam_pipeline.write import TEMP_FOLDER
from common.errors import UserError

DISK_FULL_TEXTS = ("No space left on device", f"[Errno {errno.ENOSPC}]")


def tells_of_a_full_disk(text: str) -> bool:
    return any(t in text for t in DISK_FULL_TEXTS)


def is_disk_full(e: BaseException | None) -> bool:
    """ENOSPC anywhere in the exception chain, or Beam's RuntimeError that quotes one in its text (a worker's
    exception reaches the launcher as a new RuntimeError carrying only the original's message)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        if isinstance(e, RuntimeError) and tells_of_a_full_disk(str(e)):
            return True
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return False


class HideDiskFullLogs(logging.Filter):
    """Beam logs a failed bundle's tracebacks before the launcher sees the failure; drops those of a full disk."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("apache_beam") and (
            tells_of_a_full_disk(record.getMessage()) or is_disk_full(record.exc_info and record.exc_info[1])))


class HideDiskFullPrints:
    """Beam's SDK worker also prints each failed bundle's traceback straight to stderr; this stderr drops
    those of a full disk (and the newline print() ends them with), and passes everything else through."""

    def __init__(self, stream):
        self.stream, self.dropped = stream, False

    def write(self, text: str) -> int:
        dropped, self.dropped = self.dropped, text.startswith("Traceback") and tells_of_a_full_disk(text)
        return len(text) if self.dropped or (dropped and text == "\n") else self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def disk_full_is_a_user_error(opts: LabelOptions):
    """A full disk under --output is one line that names it and the fix; Beam's tracebacks of it are shown
    with --verbose only. Beam renames shards into the tables only once they are complete, so the tables
    hold no partial file; this run's partial temp files (under OUT/.beam-temp) are removed, to give back
    the space they took. Any other failure passes through untouched."""
    quiet = not logging.getLogger().isEnabledFor(logging.INFO)  # no --verbose
    hide, handlers = HideDiskFullLogs(), list(logging.getLogger().handlers) if quiet else []
    for handler in handlers:
        handler.addFilter(hide)
    try:
        with contextlib.redirect_stderr(HideDiskFullPrints(sys.stderr)) if quiet else contextlib.nullcontext():
            yield
    except Exception as e:
        if not is_disk_full(e):
            raise
        with contextlib.suppress(Exception):
            fs, path = fsspec.core.url_to_fs(f"{opts.output.rstrip('/')}/{TEMP_FOLDER}/{opts.run_id}-*")
            for folder in fs.glob(path):
                fs.rm(folder, recursive=True)
        raise UserError(f"--output {opts.output} ran out of space (No space left on device): run {opts.run_id} "
                        "stopped and left no partial file in the tables; free space there or choose another --output, "
                        "then run again") from None
    finally:
        for handler in handlers:
            handler.removeFilter(hide)


STOPPING = threading.Event()  # set by Ctrl-C during a local run (launch.run): its workers take no new image


def not_stopping(_) -> bool:
    """The job's filter in front of PrepareImages: after Ctrl-C, every input not yet taken is left for a rerun."""
    return not STOPPING.is_set()
