"""How far a local labeling run is, while it runs: a bar on a terminal, a line every so often elsewhere.

The DirectRunner's workers are threads of this process, so what they do counts itself here (TALLY, beside the
Beam counters the launcher's accounting reads at the end), and a thread of the launcher draws it: images done of
those matched, images/s, errors so far and the time left. Dataflow's workers are elsewhere, and its console shows
their progress.
"""
import sys
import threading
import time

from tqdm import tqdm

LINE_SECONDS = 30.0  # without a terminal (a log, CI), one line this often
REFRESH_SECONDS = 0.5


class Tally:
    """Counts that worker threads add to and the bar reads: matched, labeled, errored, skipped."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(("matched", "labeled", "errored", "skipped"), 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def read(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


TALLY = Tally()


class Progress:
    """`with Progress():` around a local run draws TALLY from a thread until the run ends."""

    def __init__(self, stream=None, line_seconds: float = LINE_SECONDS, total: int = 0):
        self.stream, self.total = stream or sys.stderr, total  # total: the inputs the launcher matched (0: unknown)
        self.terminal = self.stream.isatty()
        self.line_seconds, self._stop = line_seconds, threading.Event()
        self._thread = threading.Thread(target=self._draw, name="alexlabel-progress", daemon=True)

    def __enter__(self) -> "Progress":
        TALLY.reset()
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _draw(self) -> None:
        bar = tqdm(total=0, unit="img", desc="labeling", file=self.stream, dynamic_ncols=True) if self.terminal \
            else None
        last_line = time.monotonic()
        while not self._stop.wait(REFRESH_SECONDS):
            counts = self.counts()
            if bar is not None:
                update(bar, counts)
            elif time.monotonic() - last_line >= self.line_seconds:
                print(line(counts, time.monotonic() - self._started), file=self.stream, flush=True)
                last_line = time.monotonic()
        if bar is not None:
            update(bar, self.counts())
            bar.close()

    def counts(self) -> dict[str, int]:
        counts = TALLY.read()
        return {**counts, "matched": self.total or counts["matched"]}


def done(counts: dict[str, int]) -> int:
    return counts["labeled"] + counts["errored"] + counts["skipped"]


def update(bar: tqdm, counts: dict[str, int]) -> None:
    bar.total = max(counts["matched"], done(counts))
    bar.set_postfix_str(f"errors {counts['errored']}, skipped {counts['skipped']}", refresh=False)
    bar.update(done(counts) - bar.n)


def line(counts: dict[str, int], seconds: float) -> str:
    """One line of progress for a log: done of matched, the rate so far and the time left at that rate."""
    finished, matched = done(counts), counts["matched"]
    rate = (counts["labeled"] + counts["errored"]) / seconds if seconds > 0 else 0.0
    left = f", {tqdm.format_interval((matched - finished) / rate)} left" if rate and matched > finished else ""
    return (f"labeling: {finished} of {matched} matched done ({counts['labeled']} labeled, {counts['errored']} errors, "
            f"{counts['skipped']} skipped), {rate:.1f} images/s{left}")
