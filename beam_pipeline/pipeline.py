"""The labeling job as one straight chain of named transforms, and the launcher that accounts for it.

    MatchImages -> SkipDone -> PrepareImages -> Classify (RunInference) -> ToLabelRows -> WriteLabels
                                  |  errors          |  failed batches       |  undecoded (--gpu-decode)
                                  +------------------+-----------------------+--> ToErrorRows -> WriteErrors

With --skip-existing and earlier output, SkipDone drops inputs this model version already labeled or
recorded as errors (--retry-errors tries those again). After the run, the launcher reads back the Parquet
row counts, checks matched == labeled + errors + skipped, and writes the one-row runs table.
"""
import time
from dataclasses import replace
from datetime import UTC, datetime

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import RunInference
from apache_beam.ml.inference.utils import WatchFilePattern
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.transforms import window

from beam_pipeline.model_handler import AlexNetModelHandler, check_checkpoint, drop_kept
from beam_pipeline.options import LabelOptions, UsageError
from beam_pipeline.preprocess import ERRORS_TAG, PrepareImage, error_record
from beam_pipeline.read import MatchImages, SkipDone, count_matches, matched_uris
from beam_pipeline.streaming import NewObjects, WriteWindowedTable
from beam_pipeline.write import (
    WriteTable,
    check_writable,
    count_rows,
    error_row,
    label_row,
    make_table_folders,
    run_files,
    write_run_row,
)
from schemas.checkpoint import Manifest
from schemas.redact import redact


class AccountingError(RuntimeError):
    """matched != labeled + errors: some input went missing, which must never happen silently."""


def failed_batch_errors(failure):
    batch, exc = failure
    for meta, _ in batch:
        yield error_record(meta["uri"], "infer", exc, meta["size_bytes"])


def to_label_row(result, run_id: str, accept_threshold: float):
    """A prediction -> its labels row; a JPEG the handler could not decode (--gpu-decode) -> its error."""
    if "error" in result.inference:
        yield beam.pvalue.TaggedOutput(ERRORS_TAG, result.inference["error"])
    else:
        yield label_row(result, run_id, accept_threshold)


def build(p: beam.Pipeline, opts: LabelOptions, manifest: Manifest, done_files: list[str]) -> None:
    """The batch job: everything the inputs match now, less what resume finds done."""
    uris = p | "MatchImages" >> MatchImages(opts.inputs, opts.extensions, opts.input_lists)
    if done_files:  # a shuffle of every URI: only when resuming finds earlier output files
        uris = uris | "SkipDone" >> SkipDone(done_files)
    label_uris(uris, opts, manifest, lambda table: WriteTable(opts.output, table, manifest.model_version, opts.run_id))


def build_streaming(p: beam.Pipeline, opts: LabelOptions, manifest: Manifest) -> None:
    """The unbounded job: new objects as they arrive, rows written per fixed window; --watch-model swaps
    the model in place through RunInference's model side input."""
    uris = (p
            | "NewObjects" >> NewObjects(opts.inputs, opts.extensions, opts.notifications, opts.poll_seconds)
            | "Window" >> beam.WindowInto(window.FixedWindows(opts.window_seconds)))
    model_updates = (p | "WatchModel" >> WatchFilePattern(opts.watch_model, interval=opts.poll_seconds)
                     if opts.watch_model else None)
    label_uris(uris, opts, manifest, lambda table: WriteWindowedTable(opts.output, table, opts.run_id),
               model_updates)


def label_uris(uris, opts: LabelOptions, manifest: Manifest, write, model_updates=None) -> None:
    """URIs -> decoded images -> RunInference -> label rows and error rows, each written by `write(table)`."""
    low, high = opts.batch_sizes()
    handler = AlexNetModelHandler(opts.checkpoint, device=opts.device, precision=opts.precision, top_k=opts.top_k,
                                  min_batch_size=low, max_batch_size=high,
                                  model_copies=opts.gpu_count if opts.device == "gpu" else None,
                                  preprocess=manifest.preprocess, threads=opts.torch_threads())
    images, bad_images = uris | "PrepareImages" >> beam.ParDo(
        PrepareImage(manifest.preprocess, keep_jpegs=opts.gpu_decode)).with_outputs(ERRORS_TAG, main="images")
    predictions, failed = (images
                           | "Classify" >> RunInference(handler, model_metadata_pcoll=model_updates)
                           .with_exception_handling())
    rows, undecoded = (predictions
                       | "ToLabelRows" >> beam.FlatMap(to_label_row, opts.run_id, opts.accept_threshold)
                       .with_outputs(ERRORS_TAG, main="labels"))
    rows | "WriteLabels" >> write("labels")
    failed_inference = failed.failed_inferences | "FailedBatches" >> beam.FlatMap(failed_batch_errors)
    ((bad_images, undecoded, failed_inference)
     | "AllErrors" >> beam.Flatten()
     | "ToErrorRows" >> beam.Map(error_row, manifest.model_version, opts.run_id)
     | "WriteErrors" >> write("errors"))


def make_pipeline(opts: LabelOptions) -> beam.Pipeline:
    options = PipelineOptions(opts.beam_flags())
    if opts.runner == "DirectRunner":
        # What DirectRunner runs batch jobs on, minus its first attempt to download the Prism runner.
        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)


def prepare(opts: LabelOptions) -> tuple[Manifest, list[str]]:
    """Check everything a job needs before it starts; returns the manifest and the files resume skips.

    A GPU is checked where the model runs: here for local runners, on the workers for Dataflow.
    """
    opts.validate()
    local = opts.runner == "DirectRunner"
    manifest = check_checkpoint(opts.checkpoint, opts.device if local else "cpu", opts.precision,
                                keep=local and not opts.dry_run)
    FileSystems.set_options(PipelineOptions(opts.beam_flags()))  # e.g. credentials for the launcher's own match
    missing = [url for url in opts.input_lists if not FileSystems.exists(url)]
    if missing:
        raise UsageError(f"--input-list {missing[0]} does not exist; pass a text file of URIs or a Parquet file "
                         "with a uri column")
    if opts.inputs and not opts.streaming and not count_matches(opts.inputs, opts.extensions):
        raise UsageError(f"no image files match {' '.join(opts.inputs)} (extensions: {', '.join(opts.extensions)}); "
                         "check the pattern, e.g. 'DIR/**' or 'gs://bucket/prefix/*.jpg'")
    if not opts.dry_run:
        check_writable(opts.output)
    tables = ("labels",) + (() if opts.retry_errors else ("errors",))
    done = [f for t in tables for f in run_files(opts.output, t, manifest.model_version, "*")] if opts.skip_existing \
        else []
    return manifest, done


def dry_run(opts: LabelOptions) -> tuple[list[str], list[str]]:
    """Validate; return the resolved Beam options and, for Dataflow, the names of the transforms in the
    job that Beam built, pickled and translated (its own --dry_run). Nothing runs, nothing is written."""
    opts.dry_run = True
    manifest, done = prepare(opts)
    if opts.runner != "DataflowRunner":
        return opts.beam_flags(), []
    with make_pipeline(opts) as p:
        if opts.streaming:
            build_streaming(p, opts, manifest)
        else:
            build(p, opts, manifest, done)
    transforms = p.result.job.proto_pipeline.components.transforms.values()
    return opts.beam_flags(), sorted(t.unique_name for t in transforms if "/" not in t.unique_name)


def counter(result, name: str) -> int:
    found = result.metrics().query(MetricsFilter().with_namespace("alexlabel").with_name(name))["counters"]
    return sum(c.committed or 0 for c in found)


def launch_streaming(opts: LabelOptions) -> str:
    """Submit the unbounded job and return its id; it runs until drained or cancelled."""
    manifest, _ = prepare(opts)  # streaming never runs on the DirectRunner, so no model is kept
    p = make_pipeline(opts)
    build_streaming(p, opts, manifest)
    result = p.run()
    return getattr(result, "job_id", lambda: opts.run_id)()


def watch(opts: LabelOptions, every_seconds: float, rounds: int | None = None, on_round=None) -> list[dict]:
    """Local streaming: label what is new, wait, repeat; built on resume, so each input is labeled once.

    A labeling run starts only when the inputs hold URIs not seen before, so an idle watch writes
    nothing. `rounds` bounds the loop (forever when None); `on_round(row or None)` follows each round.
    """
    rows, seen, done_rounds = [], set(), 0
    while rounds is None or done_rounds < rounds:
        current = matched_uris(opts.inputs, opts.extensions)
        row = run(replace(opts, skip_existing=True, run_id="")) if current - seen else None
        seen |= current
        rows += [row] if row else []
        if on_round:
            on_round(row)
        done_rounds += 1
        if rounds is None or done_rounds < rounds:
            time.sleep(every_seconds)
    return rows


def run(opts: LabelOptions) -> dict:
    """Label everything `opts.inputs` match; returns the runs row (also written under OUT/runs/)."""
    try:
        manifest, done = prepare(opts)
        make_table_folders(opts.output, manifest.model_version)
        started, t0 = datetime.now(UTC), time.perf_counter()
        with make_pipeline(opts) as p:
            build(p, opts, manifest, done)
    finally:
        drop_kept()  # the workers took it, or never will
    result = p.result
    wall = time.perf_counter() - t0
    labeled = count_rows(run_files(opts.output, "labels", manifest.model_version, opts.run_id))
    errored = count_rows(run_files(opts.output, "errors", manifest.model_version, opts.run_id))
    matched, skipped = counter(result, "matched"), counter(result, "skipped")
    row = {"run_id": opts.run_id, "model_version": manifest.model_version, "checkpoint": opts.checkpoint,
           "inputs": list(opts.inputs), "output": opts.output, "runner": opts.runner, "matched": matched,
           "labeled": labeled, "errored": errored, "skipped": skipped, "wall_seconds": wall,
           "images_per_second": (labeled + errored) / wall, "started_at": started,
           "finished_at": datetime.now(UTC), "options_json": redact(opts.to_json())}
    write_run_row(opts.output, row)
    if matched != labeled + errored + skipped:
        raise AccountingError(f"run {opts.run_id}: matched {matched} != labeled {labeled} + errors {errored} + "
                              f"skipped {skipped}; report this as a bug with the runs row")
    return row
