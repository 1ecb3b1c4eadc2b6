"""The labeling job as one straight chain of named transforms.

    MatchImages -> SkipDone -> UntilCtrlC -> PrepareImages -> Classify (RunInference) -> ToRows -> WriteLabels
                                                                                            +----> WriteErrors
                                                                                            +----> WriteEmbeddings
                                                                                            +----> WriteProbabilities

Every input reaches Classify: one PrepareImages could not read or decode goes on as its Failure, so the
model handler stamps each row, labels and errors alike, with the version of the model that was live.
With --skip-existing and earlier output, SkipDone drops inputs this model version already labeled or
recorded as errors (--retry-errors tries those again). After Ctrl-C in a local run, UntilCtrlC lets no more
inputs through (failures.py). The launcher (launch.py) runs it and accounts for it.
"""
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.transforms import window

from beam_pipeline.decode import PrepareImage
from beam_pipeline.failures import not_stopping
from beam_pipeline.inference import RunInference, WatchFilePattern
from beam_pipeline.model_handler import AlexNetModelHandler
from beam_pipeline.options import LabelOptions
from beam_pipeline.read import MatchImages, SkipDone, count_matched
from beam_pipeline.rows import Failure, error_row, label_row, vector_row
from beam_pipeline.streaming import NewObjects, WriteWindowedTable
from beam_pipeline.write import WriteTable
from schemas.checkpoint import Manifest

ERRORS_TAG = "errors"
# table -> its vector columns, Prediction fields of the same names; a row is written where the first is there.
VECTOR_TABLES = {"embeddings": ("embedding", "fingerprint"), "probabilities": ("probabilities",)}


def to_rows(result, run_id: str, accept_threshold: float):
    """A handled image -> its labels row (and, where asked for, its embeddings and probabilities rows, tagged), or
    its errors row (tagged), under the model version that ran."""
    image, outcome, version = result.example, result.inference, result.model_id
    if isinstance(outcome, Failure):
        yield beam.pvalue.TaggedOutput(ERRORS_TAG, error_row(image, outcome, version, run_id))
        return
    yield label_row(image, outcome, version, run_id, accept_threshold)
    for table, columns in VECTOR_TABLES.items():
        if getattr(outcome, columns[0]) is not None:
            vectors = {column: getattr(outcome, column) for column in columns}
            yield beam.pvalue.TaggedOutput(table, vector_row(image, vectors, version, run_id))


def failed_batch_rows(failure, model_version: str, run_id: str):
    """A batch RunInference itself failed outside the handler's own work (e.g. loading a swapped-in model):
    which model would have run is not known there, so these rows take the job's checkpoint version."""
    batch, exc = failure
    for image in batch:
        yield error_row(image, Failure.of("infer", exc), model_version, run_id)


def build(p: beam.Pipeline, opts: LabelOptions, manifest: Manifest, done_files: dict[str, list[str]],
          uris: list[str] | None = None) -> None:
    """The batch job: everything the inputs match now (or the `uris` of a slice the launcher matched), less what
    resume finds done."""
    uris = (p | "MatchImages" >> MatchImages(opts.inputs, opts.extensions, opts.input_lists) if uris is None else
            p | "SliceImages" >> beam.Create(uris) | "CountMatched" >> beam.Map(count_matched))
    if any(done_files.values()):  # a shuffle of every URI: only when resuming finds earlier output files
        uris = uris | "SkipDone" >> SkipDone(done_files)
    uris = uris | "UntilCtrlC" >> beam.Filter(not_stopping)
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
    """URIs -> prepared images -> RunInference -> label rows and error rows, each written by `write(table)`."""
    low, high = opts.batch_sizes()
    handler = AlexNetModelHandler(opts.checkpoint, device=opts.device, precision=opts.precision, top_k=opts.top_k,
                                  embeddings=opts.embeddings, probabilities=opts.probabilities,
                                  min_batch_size=low, max_batch_size=high,
                                  model_copies=opts.gpu_count if opts.device == "cuda" else None,
                                  preprocess=manifest.preprocess, threads=opts.torch_threads())
    handled, failed = (uris
                       | "PrepareImages" >> beam.ParDo(PrepareImage(manifest.preprocess, keep_jpegs=opts.gpu_decode))
                       | "Classify" >> RunInference(handler, model_metadata_pcoll=model_updates)
                       .with_exception_handling())
    rows = (handled
            | "ToRows" >> beam.FlatMap(to_rows, opts.run_id, opts.accept_threshold)
            .with_outputs(ERRORS_TAG, *VECTOR_TABLES, main="labels"))
    rows.labels | "WriteLabels" >> write("labels")
    for table in written_vector_tables(opts):
        rows[table] | f"Write{table.title()}" >> write(table)
    failed_batches = (failed.failed_inferences
                      | "FailedBatches" >> beam.FlatMap(failed_batch_rows, manifest.model_version, opts.run_id))
    ((rows[ERRORS_TAG], failed_batches)
     | "AllErrors" >> beam.Flatten()
     | "WriteErrors" >> write("errors"))


def written_vector_tables(opts: LabelOptions) -> list[str]:
    return [table for table in VECTOR_TABLES if getattr(opts, table)]


def make_pipeline(opts: LabelOptions) -> beam.Pipeline:
    options = PipelineOptions(opts.beam_flags())
    if opts.runner == "DirectRunner":
        # What DirectRunner runs batch jobs on, minus its first attempt to download the Prism runner.
        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)
