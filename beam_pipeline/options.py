"""What a labeling run is asked to do, validated before anything is read or written, and the Beam
pipeline options it maps to (DirectRunner locally; DataflowRunner with GPU workers at scale)."""
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common.devices import device_name, pick_device, usable_cores
from common.errors import UserError
from common.ids import new_id
from common.storage import IMAGE_EXTENSIONS, canonical_uri

RUNNERS = ("DirectRunner", "DataflowRunner")
PRECISIONS = ("auto", "bf16", "fp32", "int8")
# Dataflow machine types that can host each GPU: L4s come only on G2 machines, the others attach to N1.
GPU_MACHINES = {"nvidia-l4": "g2-standard-8", "nvidia-tesla-t4": "n1-standard-8",
                "nvidia-tesla-v100": "n1-standard-8", "nvidia-tesla-p100": "n1-standard-8",
                "nvidia-tesla-p4": "n1-standard-8", "nvidia-tesla-a100": "a2-highgpu-1g",
                "nvidia-a100-80gb": "a2-ultragpu-1g", "nvidia-h100-80gb": "a3-highgpu-1g"}
SETUP_PY = Path(__file__).resolve().parents[1] / "setup.py"  # present in a source checkout, absent in the image


class UsageError(UserError):
    """A bad option: the message is one line that names the fix."""


@dataclass
class LabelOptions:
    inputs: list[str]                 # glob patterns
    checkpoint: str
    output: str
    input_lists: list[str] = field(default_factory=list)  # text (one URI a line) or Parquet (`uri` column)
    runner: str = "DirectRunner"
    device: str = "auto"              # auto, cpu or cuda (gpu: cuda); validate() leaves cpu or cuda
    precision: str = "auto"           # auto (bf16 where native), bf16, fp32, int8 (CPUs)
    gpu_decode: bool = False          # with device cuda: JPEGs decode in batches on the GPU (nvJPEG)
    top_k: int = 5
    embeddings: bool = False          # also write the embeddings table (the checkpoint's PCA of its penultimate layer)
    probabilities: bool = False       # also write the probabilities table (the whole softmax, float16)
    accept_threshold: float = 0.5     # decision = accept when confidence >= this, else review
    min_batch_size: int = 0           # 0: the max: fixed batches (each new batch size costs memory, BENCHMARKS.md)
    max_batch_size: int = 0            # 0: 64 on CPUs, 256 on GPUs (large batches keep a GPU busy)
    workers: int = 0                  # DirectRunner: parallel bundles (threads sharing one model); 0: one per core
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    skip_existing: bool = False       # resume: leave out inputs this model version already labeled or errored
    commit_every: int = 0             # local runs: label in slices of this many inputs, each committed; 0: ~2 min
    retry_errors: bool = False        # with skip_existing: try inputs that only have an errors row again
    run_id: str = ""
    made_run_id: bool = False         # validate() made run_id (a new id: no earlier run can have it)
    # Dataflow
    project: str = ""
    region: str = ""
    temp_location: str = ""           # gs:// folder for Beam's temp and staging files
    machine_type: str = ""            # default: one that hosts --gpu-type, else Dataflow's default
    gpu_type: str = ""                # e.g. nvidia-l4; labels on it unless --device cpu
    gpu_count: int = 1
    container_image: str = ""         # built from Dockerfile.gpu (make image)
    max_workers: int = 0
    # Streaming
    streaming: bool = False           # unbounded job (Dataflow): new objects as they arrive
    notifications: str = ""           # projects/P/subscriptions/S of GCS Pub/Sub notifications; else poll inputs
    poll_seconds: float = 60.0        # how often to poll the input patterns and --watch-model
    window_seconds: float = 60.0      # streaming rows are written once per fixed window
    watch_model: str = ""             # checkpoint pattern; the newest match replaces the model in place
    watch: float | None = None        # local streaming: label what is new under --input every this many seconds
    dry_run: bool = False             # print the resolved options (and translate a Dataflow job), submit nothing
    beam_args: list[str] = field(default_factory=list)

    def validate(self) -> "LabelOptions":
        if not self.inputs and not self.input_lists:
            raise UsageError("no --input given; pass a pattern such as 'gs://bucket/images/**' or --input-list FILE")
        if self.runner not in RUNNERS:
            raise UsageError(f"unknown --runner {self.runner!r}; use one of {', '.join(RUNNERS)}")
        self.device = self._resolve_device()
        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown --precision {self.precision!r}; use {', '.join(PRECISIONS)}")
        if self.precision == "int8" and self.device == "cuda":
            raise UsageError("--precision int8 runs on CPUs (oneDNN's int8 kernels); on a GPU use --precision bf16")
        if self.gpu_decode and self.device != "cuda":
            raise UsageError("--gpu-decode decodes JPEGs on the GPU the model runs on; add --device cuda")
        if self.top_k < 1:
            raise UsageError(f"--top-k must be at least 1, got {self.top_k}")
        if not 0.0 <= self.accept_threshold <= 1.0:
            raise UsageError(f"--accept-threshold must be between 0 and 1, got {self.accept_threshold}")
        if self.commit_every < 0:
            raise UsageError(f"--commit-every must be at least 1 (or 0: about two minutes of work), got "
                             f"{self.commit_every}")
        if self.workers < 0:
            raise UsageError(f"--workers must be at least 1 (or 0: one per core), got {self.workers}")
        self.workers = self.workers or usable_cores()
        low, high = self.batch_sizes()
        if not 1 <= low <= high:
            raise UsageError(f"batch sizes need 1 <= min <= max, got min={low} max={high}")
        if self.watch is not None:
            self._validate_watch()
        if (self.notifications or self.watch_model) and not self.streaming:
            raise UsageError("--notifications and --watch-model belong to streaming jobs; add --streaming "
                             "(or use --watch SECONDS to poll locally)")
        if self.streaming and self.runner == "DirectRunner" and not self.dry_run:
            raise UsageError("--streaming runs on Dataflow (local runners cannot watch buckets); "
                             "use --watch SECONDS to keep labeling new files locally")
        if self.streaming and (self.skip_existing or self.input_lists):
            raise UsageError("--skip-existing and --input-list are for batch runs; a streaming job labels "
                             "each new object once by itself")
        if self.streaming and not (self.inputs or self.notifications):
            raise UsageError("--streaming needs --input patterns to poll or --notifications to listen to")
        if self.window_seconds <= 0 or self.poll_seconds <= 0:
            raise UsageError("--window-seconds and --poll-seconds must be positive")
        if self.runner == "DataflowRunner":
            self._validate_dataflow()
        elif self.gpu_type or self.container_image or self.project:
            raise UsageError("--project, --gpu-type and --container-image are Dataflow options; "
                             "add --runner DataflowRunner")
        self.inputs = [canonical_uri(p) for p in self.inputs]
        self.input_lists = [canonical_uri(p) for p in self.input_lists]
        self.output, self.checkpoint = canonical_uri(self.output), canonical_uri(self.checkpoint)
        if not self.run_id:
            self.run_id, self.made_run_id = new_id(), True
        return self

    def _validate_watch(self) -> None:
        """A watch polls the --input patterns: a list is never polled (the watch would wait forever, labeling
        nothing); nor is a streaming job, which runs on Dataflow; and a negative wait fails after the first round."""
        if self.watch <= 0:
            raise UsageError(f"--watch SECONDS must be positive, got {self.watch:g}")
        if self.input_lists:
            raise UsageError("--watch polls the --input patterns for new files; label an --input-list without --watch")
        if self.streaming:
            raise UsageError("--watch labels new files locally and --streaming on Dataflow; give one")

    def _resolve_device(self) -> str:
        """cpu or cuda. auto means where the model will run: this machine's GPU for local runners; on
        Dataflow, the workers' GPUs when --gpu-type attaches some."""
        name = device_name(self.device)
        if name != "auto":
            return name
        if self.runner == "DataflowRunner":
            return "cuda" if self.gpu_type else "cpu"
        return pick_device(name).type

    def _validate_dataflow(self) -> None:
        missing = [flag for flag, value in (("--project", self.project), ("--region", self.region),
                                            ("--temp-location", self.temp_location)) if not value]
        if missing:
            raise UsageError(f"--runner DataflowRunner needs {', '.join(missing)} (e.g. --project my-project "
                             "--region us-central1 --temp-location gs://my-bucket/tmp)")
        for flag, url in (("--temp-location", self.temp_location), ("--checkpoint", self.checkpoint),
                          ("--output", self.output), *(("--input", p) for p in self.inputs),
                          *(("--input-list", p) for p in self.input_lists)):
            if not url.startswith("gs://"):
                raise UsageError(f"{flag} {url} is not on gs://; Dataflow workers cannot read local files")
        if self.gpu_type and self.device != "cuda":
            raise UsageError("--gpu-type attaches GPUs to the workers; drop --device cpu to label on them")
        if self.device == "cuda" and not self.gpu_type:
            raise UsageError("--device cuda on Dataflow needs --gpu-type (e.g. nvidia-l4)")
        if self.gpu_type and not (self.machine_type or self.gpu_type in GPU_MACHINES):
            raise UsageError(f"no default machine for --gpu-type {self.gpu_type}; pass --machine-type")
        if self.gpu_count < 1:
            raise UsageError(f"--gpu-count must be at least 1, got {self.gpu_count}")

    def beam_flags(self) -> list[str]:
        """The Beam pipeline options this run maps to; user's extra Beam args come last and win."""
        flags = [f"--runner={self.runner}"]
        if self.runner == "DirectRunner" and self.workers > 1:
            # Threads, not processes: one model copy, no data shipped between processes, and PIL's decode
            # and torch's kernels release the GIL, so one bundle decodes while another runs the model.
            flags += [f"--direct_num_workers={self.workers}", "--direct_running_mode=multi_threading"]
        if self.runner == "DataflowRunner":
            temp = self.temp_location.rstrip("/")
            flags += [f"--project={self.project}", f"--region={self.region}", f"--temp_location={temp}",
                      f"--staging_location={temp}/staging", f"--job_name=alexlabel-{self.run_id.lower()}",
                      "--experiments=use_runner_v2"]
            if SETUP_PY.exists():  # ship this exact code to the workers
                flags.append(f"--setup_file={SETUP_PY}")
            if self.container_image:
                flags += [f"--sdk_container_image={self.container_image}", "--sdk_location=container"]
            if self.gpu_type:
                flags += [f"--machine_type={self.machine_type or GPU_MACHINES[self.gpu_type]}",
                          "--dataflow_service_options=worker_accelerator="
                          f"type:{self.gpu_type};count:{self.gpu_count};install-nvidia-driver"]
            elif self.machine_type:
                flags.append(f"--machine_type={self.machine_type}")
            if self.max_workers:
                flags.append(f"--max_num_workers={self.max_workers}")
        if self.streaming:
            flags.append("--streaming")
        if self.dry_run and self.runner == "DataflowRunner":
            flags.append("--dry_run=True")
        return flags + list(self.beam_args)

    def batch_sizes(self) -> tuple[int, int]:
        """(min, max) for RunInference's batching: max defaults to 64 on CPUs, 256 on GPUs, min to max.

        Fixed batches, because every batch size the model meets makes oneDNN build and keep another set of
        kernels: Beam's adaptive sizes between 32 and 64 kept adding memory as the images went by (BENCHMARKS.md).
        """
        high = self.max_batch_size or (256 if device_name(self.device) == "cuda" else 64)
        return self.min_batch_size or high, high

    def torch_threads(self) -> int:
        """workers x torch threads = cores, so the machine is busy without oversubscription."""
        cores = usable_cores()
        return max(1, cores // (self.workers or cores)) if self.runner == "DirectRunner" else 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)
