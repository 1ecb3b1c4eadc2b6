"""`alexlabel label`, `alexlabel query` and `alexlabel schema`."""
import json

import click

from beam_pipeline.heap import bound_heap
from beam_pipeline.options import DEFAULT_EXTENSIONS, RUNNERS, LabelOptions
from schemas.tables import TABLES, bigquery_schema


@click.command("label", context_settings={"ignore_unknown_options": True})
@click.option("--input", "inputs", multiple=True,
              help="Glob pattern of images (local, gs://, ...; '**' recurses). Repeat for more.")
@click.option("--input-list", "input_lists", multiple=True,
              help="File of URIs to label: text (one per line) or Parquet with a uri column. Repeatable.")
@click.option("--checkpoint", required=True, help="Inference checkpoint (model.pt) on any URL.")
@click.option("--output", required=True, help="Folder or bucket URL for the labels/, errors/, runs/ tables.")
@click.option("--runner", type=click.Choice(RUNNERS), default="DirectRunner", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="gpu fails loudly when no GPU works, never falls back to the CPU.")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto", show_default=True,
              help="auto: bf16 on GPUs and on CPUs with native bf16, else fp32.")
@click.option("--gpu-decode", is_flag=True,
              help="With --device gpu: decode JPEGs in batches on the GPU (nvJPEG) instead of on CPU cores; "
                   "other formats, and JPEGs that need rotating or draft mode, still decode on the CPU.")
@click.option("--top-k", type=int, default=5, show_default=True)
@click.option("--accept-threshold", type=float, default=0.5, show_default=True,
              help="decision is 'accept' at or above this confidence, else 'review'.")
@click.option("--min-batch-size", type=int, default=0,
              help="Below --max-batch-size, Beam sizes batches between the two by throughput. Default: "
                   "equal to it (fixed batches: each new batch size costs the model memory).")
@click.option("--max-batch-size", type=int, default=0, help="Default: 64 on CPUs, 256 on GPUs.")
@click.option("--workers", type=int, default=0,
              help="DirectRunner: bundles labeled in parallel (threads sharing one model, cores/N torch "
                   "threads each). Default: one per core.")
@click.option("--extensions", default=",".join(DEFAULT_EXTENSIONS), show_default=True,
              help="Comma-separated file extensions to label (case-insensitive).")
@click.option("--skip-existing", is_flag=True,
              help="Resume: label only inputs with no labels or errors row for this model version under --output.")
@click.option("--retry-errors", is_flag=True, help="With --skip-existing: try inputs that errored before again.")
@click.option("--run-id", default="", help="Defaults to a UTC timestamp plus a random suffix.")
@click.option("--project", default="", help="Dataflow: Google Cloud project.")
@click.option("--region", default="", help="Dataflow: region, e.g. us-central1.")
@click.option("--temp-location", default="", help="Dataflow: gs:// folder for temp and staging files.")
@click.option("--machine-type", default="", help="Dataflow: worker machine type (default fits --gpu-type).")
@click.option("--gpu-type", default="", help="Dataflow: GPU per worker, e.g. nvidia-l4 (needs --device gpu).")
@click.option("--gpu-count", type=int, default=1, show_default=True, help="Dataflow: GPUs per worker.")
@click.option("--container-image", default="", help="Dataflow: worker image built by `make image`.")
@click.option("--max-workers", type=int, default=0, help="Dataflow: autoscaling limit (0: Dataflow's default).")
@click.option("--streaming", is_flag=True, help="Unbounded Dataflow job: label new objects as they arrive.")
@click.option("--notifications", default="",
              help="Streaming: GCS Pub/Sub notifications subscription, projects/P/subscriptions/S.")
@click.option("--poll-seconds", type=float, default=60.0, show_default=True,
              help="Streaming: how often to poll --input patterns (without --notifications) and --watch-model.")
@click.option("--window-seconds", type=float, default=60.0, show_default=True,
              help="Streaming: rows are written once per window of this length.")
@click.option("--watch-model", default="", help="Streaming: checkpoint pattern; the newest match replaces the model.")
@click.option("--watch", "watch_seconds", type=float, default=0.0,
              help="Local: keep labeling new files, polling every SECONDS (resume-based; Ctrl-C stops).")
@click.option("--dry-run", is_flag=True,
              help="Print the resolved Beam options (and build + translate a Dataflow job) without running.")
@click.argument("beam_args", nargs=-1, type=click.UNPROCESSED)
def label_command(inputs, input_lists, extensions, beam_args, watch_seconds, **kw):
    """Label every image the --input patterns match; write Parquet tables under --output.

    Extra arguments after the options go to Beam as they are (e.g. --direct_num_workers=2).
    """
    bound_heap()  # before Beam and torch start threads: glibc never retires an arena once made
    from beam_pipeline.pipeline import dry_run, launch_streaming, run, watch  # loads Beam and torch

    opts = LabelOptions(inputs=list(inputs), input_lists=list(input_lists), beam_args=list(beam_args),
                        extensions=tuple(e.strip() for e in extensions.split(",") if e.strip()), **kw)
    if opts.dry_run:
        flags, transforms = dry_run(opts)
        click.echo(json.dumps({"run_id": opts.run_id, "runner": opts.runner, "beam_options": flags,
                               "translated_transforms": transforms}, indent=2))
        click.echo("dry run: nothing was submitted or written")
        return
    if opts.streaming:
        click.echo(f"streaming job {launch_streaming(opts)} submitted; it runs until drained or cancelled")
        return
    if watch_seconds:
        click.echo(f"watching {' '.join(opts.inputs)} every {watch_seconds:g}s; Ctrl-C stops")
        watch(opts, watch_seconds, on_round=lambda row: row and echo_run(row))
        return
    echo_run(run(opts))


def echo_run(row: dict) -> None:
    click.echo(f"run {row['run_id']}: matched {row['matched']}, labeled {row['labeled']}, errors {row['errored']}, "
               f"skipped {row['skipped']} in {row['wall_seconds']:.1f}s ({row['images_per_second']:.1f} images/s)"
               f" -> {row['output']}")


@click.command("query")
@click.argument("output")
@click.option("--sql", help="Any DuckDB SQL over the views labels, errors, runs, latest and analyzed.")
@click.option("--summary", is_flag=True,
              help="Runs, accept/review split and confidence quantiles, rows per label, errors by type "
                   "(the default when nothing else is asked).")
@click.option("--review", type=click.IntRange(min=1), metavar="N", help="The N rows to check by hand first.")
@click.option("--by", type=click.Choice(["confidence", "margin"]), default="confidence", show_default=True,
              help="--review order: least confident, or smallest margin over the runner-up.")
@click.option("--truth", help="Ground truth: a uri,label CSV (relative uris resolve against its folder) or an "
                              "ImageFolder tree DIR/<class>/<files> matched by file name.")
@click.option("--compare", nargs=2, metavar="A B",
              help="Two run ids or model versions: agreement rate and the rows whose label changed.")
@click.option("--model", help="Only this model version's partition of every table.")
@click.option("--all-rows", is_flag=True,
              help="Analyze every label row, not only the latest per (uri, model_version).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table",
              show_default=True)
@click.option("--to", help="Write the result to this file or URL instead of printing it (parquet needs it).")
def query_command(output, sql, summary, review, by, truth, compare, model, all_rows, fmt, to):
    """Query an output folder or bucket: DuckDB SQL or built-in analyses.

    The built-ins read the latest row per (uri, model_version): the greatest labeled_at, ties broken by the
    greater run_id. --compare takes one row per uri of each side. Analyses asked together print together.
    """
    from beam_pipeline import query

    if fmt == "parquet" and not to:
        raise query.QueryError("--format parquet writes a file; add --to FILE")
    if sql and (summary or review or truth or compare):
        raise query.QueryError("--sql runs alone; drop --summary, --review, --truth and --compare")
    con = query.connect(output, model, all_rows)
    if sql:
        results = query.run_sql(con, sql)
    else:
        results = query.summary(con) if summary or not (review or truth or compare) else {}
        results |= query.truth_tables(con, truth) if truth else {}
        results |= query.review(con, review, by) if review else {}
        results |= query.compare(con, *compare) if compare else {}
    data = query.render(results, fmt)
    if to:
        query.write_result(data, to)
        click.echo(f"wrote {to}")
    else:
        click.echo(data, nl=False)


@click.command("report")
@click.argument("output")
@click.option("--html", "html_path", required=True, help="The page to write (a file or any fsspec URL).")
@click.option("--model", help="Model version to show (default: the most recently labeled one).")
@click.option("--all-rows", is_flag=True, help="Count every label row, not only the latest per uri.")
@click.option("--review", "review_n", type=click.IntRange(0, 500), default=48, show_default=True,
              help="Rows in the review queue, each with a thumbnail.")
@click.option("--by", type=click.Choice(["confidence", "margin"]), default="confidence", show_default=True,
              help="Review queue order: least confident, or smallest margin over the runner-up.")
@click.option("--max-errors", type=click.IntRange(min=0), default=200, show_default=True,
              help="Error rows listed (all are counted).")
def report_command(output, html_path, model, all_rows, review_n, by, max_errors):
    """Write one self-contained HTML page: label counts, confidence histograms, review queue, errors."""
    from beam_pipeline.report import write_report

    shown = write_report(output, html_path, model, all_rows, review_n, by, max_errors)
    click.echo(f"wrote {html_path}: model version {shown['model_version']}, {shown['labels']} labels, "
               f"{shown['review']} rows to review, {shown['errors']} errors")


@click.command("export")
@click.argument("output")
@click.option("--to", "target", nargs=2, required=True, type=(click.Choice(["imagefolder", "manifest"]), str),
              metavar="imagefolder DIR | manifest FILE",
              help="Copy the images into DIR/<label>/, or write a uri,label manifest (.csv or .parquet).")
@click.option("--model", help="Model version to export (required when the output holds several).")
@click.option("--decision", type=click.Choice(["accept", "review"]), help="Only rows with this decision.")
@click.option("--min-confidence", type=click.FloatRange(0, 1), help="Only rows at least this confident.")
def export_command(output, target, model, decision, min_confidence):
    """Export labeled images as training data: an ImageFolder tree or a manifest the trainer reads."""
    from beam_pipeline.export import ExportError, export

    kind, dest = target
    written, failures = export(output, kind, dest, model, decision, min_confidence)
    click.echo(f"exported {written} images to {dest}" if kind == "imagefolder" else f"wrote {written} rows to {dest}")
    if failures:
        uri, why = failures[0]
        raise ExportError(f"{len(failures)} images could not be copied, e.g. {uri} ({why})")


@click.command("schema")
@click.option("--bigquery", is_flag=True, help="Print BigQuery JSON schemas instead of Arrow schemas.")
@click.argument("table", required=False, type=click.Choice(sorted(TABLES)))
def schema_command(bigquery, table):
    """Print the output table schemas (all tables, or one)."""
    for name in [table] if table else TABLES:
        if bigquery:
            click.echo(json.dumps({name: bigquery_schema(TABLES[name])}, indent=2))
        else:
            click.echo(f"{name}:\n{TABLES[name]}\n")
