"""What a labeling run is asked to do, validated before anything is read or written."""
import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from beam_pipeline.read import DEFAULT_EXTENSIONS
from schemas.errors import UserError

RUNNERS = ("DirectRunner", "DataflowRunner")


class UsageError(UserError):
    """A bad option: the message is one line that names the fix."""


@dataclass
class LabelOptions:
    inputs: list[str]
    checkpoint: str
    output: str
    runner: str = "DirectRunner"
    device: str = "cpu"               # cpu or gpu (gpu fails loudly when none works)
    precision: str = "auto"           # auto (bf16 where native), bf16, fp32
    top_k: int = 5
    accept_threshold: float = 0.5     # decision = accept when confidence >= this, else review
    min_batch_size: int = 1
    max_batch_size: int = 64
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    skip_existing: bool = False       # resume: leave out inputs this model version already labeled or errored
    retry_errors: bool = False        # with skip_existing: try inputs that only have an errors row again
    run_id: str = ""
    beam_args: list[str] = field(default_factory=list)

    def validate(self) -> "LabelOptions":
        if not self.inputs:
            raise UsageError("no --input given; pass a pattern such as 'gs://bucket/images/**'")
        if self.runner not in RUNNERS:
            raise UsageError(f"unknown --runner {self.runner!r}; use one of {', '.join(RUNNERS)}")
        if self.device not in ("cpu", "gpu"):
            raise UsageError(f"unknown --device {self.device!r}; use cpu or gpu")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise UsageError(f"unknown --precision {self.precision!r}; use auto, bf16 or fp32")
        if self.top_k < 1:
            raise UsageError(f"--top-k must be at least 1, got {self.top_k}")
        if not 0.0 <= self.accept_threshold <= 1.0:
            raise UsageError(f"--accept-threshold must be between 0 and 1, got {self.accept_threshold}")
        if not 1 <= self.min_batch_size <= self.max_batch_size:
            raise UsageError(f"batch sizes need 1 <= min <= max, got min={self.min_batch_size} "
                             f"max={self.max_batch_size}")
        self.inputs = [_absolute(p) for p in self.inputs]
        self.output, self.checkpoint = _absolute(self.output), _absolute(self.checkpoint)
        self.run_id = self.run_id or new_run_id()
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _absolute(url: str) -> str:
    """Local paths become absolute, so every uri in the tables names its file unambiguously."""
    return url if "://" in url else os.path.abspath(url)


def new_run_id() -> str:
    """Sortable by start time, unique across concurrent launches."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
