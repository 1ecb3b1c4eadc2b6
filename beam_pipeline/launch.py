"""The launcher: checks a job before it starts, runs it, and accounts for every input afterwards.

While a local run goes, progress.py shows how far it is. After a batch run it reads back the Parquet row counts,
checks matched == labeled + errors + skipped, and writes the run's runs row (a job in slices: each slice's, then
the job's own). `watch` repeats batch runs for local streaming; `launch_streaming` submits the unbounded job to
Dataflow.
"""
import contextlib
import time
from dataclasses import replace
from datetime import UTC, datetime

from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline.failures import STOPPING, disk_full_is_a_user_error
from beam_pipeline.model_handler import check_checkpoint, drop_kept
from beam_pipeline.options import LabelOptions, UsageError
from beam_pipeline.pipeline import build, build_streaming, make_pipeline, written_vector_tables
from beam_pipeline.progress import Progress
from beam_pipeline.read import check_uri_list, count_matches, listed_uris, matched_uris
from beam_pipeline.rows import run_row
from beam_pipeline.write import check_writable, count_rows, make_table_folders, run_files, tidy_temp, write_run_row
from common.devices import usable_cores
from common.errors import UserError
from common.interrupt import Interrupted, ctrl_c_sets
from common.storage import glob_urls
from schemas.checkpoint import Manifest, checkpoint_file

SLICE_SECONDS = 120  # --commit-every's default: about this much work between commits
IMAGES_PER_CORE_SECOND = 100  # the 1000-class AlexNet at 224 px labels ~110 a core a second (BENCHMARKS.md)


class AccountingError(RuntimeError):
    """matched != labeled + errors: some input went missing, which must never happen silently."""


def check(opts: LabelOptions, keep: bool) -> Manifest:
    """The options, the checkpoint (loaded as a worker would; with `keep`, left for this process's workers),
    the storage options and the input lists; returns the manifest.

    A GPU is checked where the model runs: here for local runners, on the workers for Dataflow.
    """
    opts.validate()
    check_new_run_id(opts)
    opts.checkpoint = checkpoint_file(opts.checkpoint)
    local = opts.runner == "DirectRunner"
    manifest = check_checkpoint(opts.checkpoint, opts.device if local else "cpu", opts.precision, keep=keep,
                                embeddings=opts.embeddings)
    FileSystems.set_options(PipelineOptions(opts.beam_flags()))  # e.g. credentials for the launcher's own match
    for url in opts.input_lists:
        check_uri_list(url)
    return manifest


def check_new_run_id(opts: LabelOptions) -> None:
    """A run id names the run's files (and a sliced job's slices, <id>-0001, ...): one already in the output would
    have this run's files replace that run's, its labels lost while both accountings pass. Only a --run-id given
    is looked for: the search lists the whole output (on gs://, every object under it), and an id validate() made
    is new."""
    if opts.made_run_id:
        return
    found = (glob_urls(f"{opts.output}/*/model=*/{opts.run_id}-*.parquet")
             or glob_urls(f"{opts.output}/runs/model=*/{opts.run_id}.parquet"))
    if found:
        raise UsageError(f"--run-id {opts.run_id} is taken in {opts.output} (e.g. {found[0]}); choose another, or "
                         "leave --run-id out for a new one")


def prepare(opts: LabelOptions, matched: bool = True, manifest: Manifest | None = None
            ) -> tuple[Manifest, dict[str, list[str]]]:
    """Check everything a job needs before it starts (for a slice, whose job checked its `manifest` and `matched`
    inputs once, what is left); returns the manifest and, per table, the files of what resume skips (an input is
    done once it has a row in each table the run writes, or an errors row)."""
    manifest = manifest or check(opts, keep=opts.runner == "DirectRunner" and not opts.dry_run)
    if matched and opts.inputs and not opts.streaming and not count_matches(opts.inputs, opts.extensions):
        raise UsageError(f"no image files match {' '.join(opts.inputs)} (extensions: {', '.join(opts.extensions)}); "
                         "check the pattern, e.g. 'DIR/**' or 'gs://bucket/prefix/*.jpg'")
    if not opts.dry_run:
        check_writable(opts.output)
    tables = ["labels", *written_vector_tables(opts)] + ([] if opts.retry_errors else ["errors"])
    done = {t: run_files(opts.output, t, manifest.model_version, "*") for t in tables} if opts.skip_existing else {}
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


def check_watch(opts: LabelOptions) -> None:
    """What a --watch needs, checked once before its first round: an idle watch starts no run, so a bad option,
    checkpoint or --output would otherwise go unnoticed until the first new file arrives."""
    check(opts, keep=False)
    check_writable(opts.output)


def watch(opts: LabelOptions, rounds: int | None = None, on_round=None) -> list[dict]:
    """Local streaming: label what is new, wait opts.watch seconds, repeat; built on resume, so each input is
    labeled once. Check it first (check_watch).

    A labeling run starts only when the inputs hold URIs not seen before, so an idle watch writes
    nothing. `rounds` bounds the loop (forever when None); `on_round(row or None)` follows each round.
    Ctrl-C ends it: as Interrupted from a round's run (see run), else as KeyboardInterrupt.
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
            time.sleep(opts.watch or 0)
    return rows


def run(opts: LabelOptions) -> dict:
    """Label everything `opts.inputs` and `opts.input_lists` name; returns the runs row (also written under
    OUT/runs/), for a run in slices the job's own row (see run_in_slices).

    A local run of more inputs than --commit-every labels them in consecutive slices, each a whole run of its
    own (its files committed, its accounting checked, its runs row written, run id <job>-0001, -0002, ...), so a
    SIGKILL loses at most the slice in progress and --skip-existing goes on from there. The launcher matches the
    inputs once and hands each slice its URIs; the bar covers the whole job. Other runners run in one piece:
    Dataflow retries failed bundles itself.
    """
    opts.validate()
    if opts.runner != "DirectRunner" or opts.dry_run:
        return run_slice(opts)
    uris = job_uris(opts)
    size = opts.commit_every or default_slice()
    if uris is None or len(uris) <= size:  # one run, as ever: the pipeline matches the inputs itself
        return run_slice(opts, total=len(uris or ()))
    return run_in_slices(opts, uris, size)


def run_in_slices(opts: LabelOptions, uris: list[str], size: int) -> dict:
    """Label `uris` in slices of `size`; returns the job's runs row, written after the slices' own.

    Each slice's row names the job (job_id); the job's row, with the slices' sums over its own wall time, is
    written only once every slice finished and the job's accounting holds, so the runs table says which rows make
    up a whole job and a reader counts each run once (schemas/tables.py, RUNS). A killed job leaves only its
    finished slices' rows.
    """
    rows, started, t0 = [], datetime.now(UTC), time.perf_counter()
    manifest = check(opts, keep=True)  # once: every slice's workers take this model, none loads its own
    try:
        with Progress(total=len(uris)):
            for k, start in enumerate(range(0, len(uris), size), 1):
                part = replace(opts, run_id=f"{opts.run_id}-{k:04d}")
                rows.append(run_slice(part, uris[start:start + size], progress=False, manifest=manifest,
                                      job_id=opts.run_id))
    except Interrupted as e:
        raise Interrupted(stopped_line(opts, sum(finished(r) for r in rows) + e.done, len(uris))) from None
    finally:
        drop_kept()
    counts = {key: sum(r[key] for r in rows) for key in ("matched", "labeled", "errored", "skipped")}
    if counts["matched"] != len(uris):
        raise AccountingError(f"run {opts.run_id}: its slices matched {counts['matched']} of {len(uris)} inputs; "
                              "report this as a bug with the runs rows")
    row = run_row(opts, manifest.model_version, counts, started, time.perf_counter() - t0)
    with disk_full_is_a_user_error(opts):
        write_run_row(opts.output, row)
    return row


def check_accounting(run_id: str, counts: dict) -> None:
    """matched == labeled + errors + skipped for a run (a job in slices then holds it too, as their sum)."""
    if counts["matched"] != finished(counts):
        raise AccountingError(f"run {run_id}: matched {counts['matched']} != labeled {counts['labeled']} + "
                              f"errors {counts['errored']} + skipped {counts['skipped']}; report this as a bug with "
                              "the runs row")


def job_uris(opts: LabelOptions) -> list[str] | None:
    """What MatchImages would match, matched once on the launcher: the patterns' images and every URI the lists
    name, each once, sorted. None where some input is not there (a pattern matching nothing, a missing list): the
    run then fails as it always does, its checkpoint checked first."""
    try:
        for url in opts.input_lists:
            check_uri_list(url)
    except UserError:
        return None
    matched = matched_uris(opts.inputs, opts.extensions)
    if opts.inputs and not matched:
        return None
    return sorted(matched | {uri for url in opts.input_lists for uri in listed_uris(url)})


def default_slice() -> int:
    """About SLICE_SECONDS of labeling on this machine, at IMAGES_PER_CORE_SECOND."""
    return SLICE_SECONDS * IMAGES_PER_CORE_SECOND * usable_cores()


def finished(counts: dict) -> int:
    return counts["labeled"] + counts["errored"] + counts["skipped"]


def stopped_line(opts: LabelOptions, done: int, matched: int) -> str:
    return f"stopped: {done} of {matched} matched inputs are done under {opts.output}; rerun with --skip-existing " \
           "to continue"


def run_slice(opts: LabelOptions, uris: list[str] | None = None, progress: bool = True,
              manifest: Manifest | None = None, total: int = 0, job_id: str | None = None) -> dict:
    """One run: everything the inputs match, or the `uris` given (a slice of job `job_id` the launcher matched,
    whose `manifest` it checked and whose model it keeps); returns its runs row (also written under OUT/runs/).
    `total`: how many inputs the launcher matched (so they need no second check, and the bar knows its end), 0 where
    it did not match them.

    Ctrl-C stops a local run early: what its workers finished is committed, no runs row is written, and
    Interrupted says how many inputs are done. The first Ctrl-C sets STOPPING: the workers let no new input
    through (failures.not_stopping) and finish the images they hold, so the job ends as any job does (Beam
    renames the finished shards into the tables and removes its temp files). A KeyboardInterrupt instead
    would unwind this thread while Beam's worker threads go on running torch, and the interpreter's exit under
    them aborts the process (SIGABRT) with their temp files left behind. The second Ctrl-C exits at once and
    leaves its temp files to a later run's tidy_temp. Only local runs have their workers in this process:
    elsewhere Ctrl-C keeps its default.
    """
    stop_line = "stopped at once; rerun with --skip-existing to continue"
    with ctrl_c_sets(STOPPING, stop_line) if opts.runner == "DirectRunner" else contextlib.nullcontext():
        try:
            manifest, done = prepare(opts, matched=uris is None and not total, manifest=manifest)
            tidy_temp(opts.output)
            make_table_folders(opts.output, manifest.model_version, written_vector_tables(opts))
            started, t0 = datetime.now(UTC), time.perf_counter()
            shown = Progress(total=total) if opts.runner == "DirectRunner" and progress else contextlib.nullcontext()
            with disk_full_is_a_user_error(opts), shown, make_pipeline(opts) as p:
                build(p, opts, manifest, done, uris)
        finally:
            if uris is None:
                drop_kept()  # the workers took it, or never will; a sliced job's launcher drops it at the end
        tidy_temp(opts.output)
        wall = time.perf_counter() - t0
        counts = {"matched": counter(p.result, "matched"),
                  "labeled": count_rows(run_files(opts.output, "labels", manifest.model_version, opts.run_id)),
                  "errored": count_rows(run_files(opts.output, "errors", manifest.model_version, opts.run_id)),
                  "skipped": counter(p.result, "skipped")}
        if STOPPING.is_set():
            stop = Interrupted(stopped_line(opts, finished(counts), counts["matched"]))
            stop.done = finished(counts)
            raise stop
    row = run_row(opts, manifest.model_version, counts, started, wall, job_id)
    with disk_full_is_a_user_error(opts):
        write_run_row(opts.output, row)  # before the check: the row is what a bug report needs
    check_accounting(opts.run_id, counts)
    for table in written_vector_tables(opts):
        if (n := count_rows(run_files(opts.output, table, manifest.model_version, opts.run_id))) != counts["labeled"]:
            raise AccountingError(f"run {opts.run_id}: {n} {table} rows for {counts['labeled']} labeled images; "
                                  "report this as a bug with the runs row")
    return row
