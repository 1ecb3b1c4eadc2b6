"""`alexlabel query`, `report`, `export`, `review`, `import-reviews` and `schema`: the tools over the output
tables (no Beam, no torch to start: each command imports what it uses when it runs)."""
import json

import click

from schemas.tables import TABLES, bigquery_schema

SHARD_MB = 256  # schemas.shards.SHARD_BYTES in MB: that module imports torch (webdataset does), which --help must not


@click.command("query")
@click.argument("output")
@click.option("--sql", help="Any DuckDB SQL over the views labels, errors, runs, jobs (runs less the slices of "
                             "jobs that wrote their own row), reviews, embeddings, probabilities, issues, latest, "
                             "latest_errors, analyzed, failed, reviewed, vectors, latest_audits and latest_issues.")
@click.option("--summary", is_flag=True,
              help="Runs, accept/review split and confidence quantiles, rows per label, failed files by type "
                   "(the default when nothing else is asked).")
@click.option("--review", type=click.IntRange(min=1), metavar="N", help="The N rows to check by hand first.")
@click.option("--by", type=click.Choice(["confidence", "margin", "informative"]), default="confidence",
              show_default=True, help="--review order: least confident, smallest margin over the runner-up, or "
              "informative: uncertain and unlike each other, so N rows are not N near-duplicates (needs "
              "`label --embeddings`).")
@click.option("--truth", help="Ground truth: a uri,label CSV (relative uris resolve against its folder), an "
                              "ImageFolder tree DIR/<class>/<files> matched by file name, or `reviews`: what "
                              "people said in `alexlabel review`.")
@click.option("--compare", nargs=2, metavar="A B",
              help="Two run ids or model versions: agreement rate and the rows whose label changed.")
@click.option("--model", help="Only this model version's partition of every table.")
@click.option("--all-rows", is_flag=True,
              help="Analyze every label and error row, not only the latest per (uri, model_version).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]),
              help="Default: what --to's extension names (.csv, .json, .parquet; .txt: table), else table.")
@click.option("--to", help="Write the result to this file or URL instead of printing it (parquet needs it).")
def query_command(output, sql, summary, review, by, truth, compare, model, all_rows, fmt, to):
    """Query an output folder or bucket: DuckDB SQL or built-in analyses.

    The built-ins read the latest row per (uri, model_version): the greatest labeled_at (errors: at), ties
    broken by the greater run_id; a file labeled after it failed no longer counts as failed. --compare takes one
    row per uri of each side. Analyses asked together print together.
    """
    from common.storage import check_output_file
    from output_tools import query

    fmt = query.output_format(fmt, to)
    if fmt == "parquet" and not to:
        raise query.QueryError("--format parquet writes a file; add --to FILE")
    if sql and (summary or review or truth or compare):
        raise query.QueryError("--sql runs alone; drop --summary, --review, --truth and --compare")
    if to:
        check_output_file(to, "--to")
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
@click.option("--all-rows", is_flag=True, help="Count every label and error row, not only the latest per uri.")
@click.option("--review", "review_n", type=click.IntRange(0, 500), default=48, show_default=True,
              help="Rows in the review queue, each with a thumbnail.")
@click.option("--by", type=click.Choice(["confidence", "margin"]), default="confidence", show_default=True,
              help="Review queue order: least confident, or smallest margin over the runner-up.")
@click.option("--max-errors", type=click.IntRange(min=0), default=200, show_default=True,
              help="Error rows listed (all are counted).")
def report_command(output, html_path, model, all_rows, review_n, by, max_errors):
    """Write one self-contained HTML page: label counts, confidence histograms, review queue, errors."""
    from output_tools.report import write_report

    shown = write_report(output, html_path, model, all_rows, review_n, by, max_errors)
    click.echo(f"wrote {html_path}: model version {shown['model_version']}, {shown['labels']} labels, "
               f"{shown['review']} rows to review, {shown['errors']} errors")


@click.command("export")
@click.argument("output")
@click.option("--to", "target", nargs=2, required=True,
              type=(click.Choice(["imagefolder", "manifest", "shards", "label-studio"]), str),
              metavar="imagefolder DIR | manifest FILE | shards DIR | label-studio TASKS.json",
              help="Copy the images into DIR/<label>/, write a uri,label manifest (.csv or .parquet), write "
                   "shuffled WebDataset tar shards of the images and their index.json into DIR (as `alexlabel "
                   "shards` does), or write Label Studio tasks with the model's label as a prediction, and their "
                   "labeling config beside them (TASKS.xml).")
@click.option("--image-root", metavar="DIR",
              help="label-studio: Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT; local images become "
                   "/data/local-files/?d=<path under DIR> (gs:// and http(s) URIs stay as they are).")
@click.option("--model", help="Model version to export (required when the output holds several).")
@click.option("--decision", type=click.Choice(["accept", "review"]), help="Only rows with this decision.")
@click.option("--min-confidence", type=click.FloatRange(0, 1), help="Only rows at least this confident.")
@click.option("--reviewed-only", is_flag=True, help="Only rows a person checked (`alexlabel review`).")
@click.option("--shard-size", type=click.FloatRange(min=0, min_open=True), metavar="MB",
              help=f"shards: each shard's target size in MB  [default: {SHARD_MB}]")
@click.option("--overwrite", is_flag=True, help="shards: replace the shards DIR holds.")
def export_command(output, target, model, decision, min_confidence, reviewed_only, image_root, shard_size, overwrite):
    """Export labeled images as training data the trainer reads: an ImageFolder tree, a manifest or shards.

    A person's label (`alexlabel review`) wins over the model's, and rows marked unusable are left out;
    --decision and --min-confidence filter the rows nobody checked.

    --to label-studio writes one Label Studio task per row instead, the model's label as its prediction;
    `alexlabel import-reviews` brings the annotations back."""
    from output_tools.export import ExportError, export

    kind, dest = target
    if kind != "shards" and (shard_size or overwrite):
        raise ExportError("--shard-size and --overwrite are for --to shards")
    if kind == "label-studio":
        from output_tools.label_studio import LabelStudioError, export_tasks

        if reviewed_only:
            raise LabelStudioError("--reviewed-only is for imagefolder, manifest and shards; Label Studio tasks carry "
                                   "the model's labels, for people to review")
        written, config, classes = export_tasks(output, dest, model, decision, min_confidence, image_root)
        click.echo(f"wrote {written} tasks to {dest} and their labeling config to {config} ({classes})")
        return
    if image_root:
        raise ExportError("--image-root is for --to label-studio")
    if kind == "shards":
        from output_tools.export import select_rows, shard_samples
        from schemas.shards import check_destination, summary, write_shards

        check_destination(dest, overwrite)  # before any row is read
        rows = select_rows(output, model, decision, min_confidence, reviewed_only)
        classes, samples = shard_samples(rows)
        line, left_out, error = summary(*write_shards(samples, classes, dest,
                                                      round((shard_size or SHARD_MB) * 2**20), 0, output), dest)
        click.echo(line)
        if left_out:
            click.echo(left_out, err=True)
        if error:
            raise ExportError(error)
        return
    written, failures = export(output, kind, dest, model, decision, min_confidence, reviewed_only)
    click.echo(f"exported {written} images to {dest}" if kind == "imagefolder" else f"wrote {written} rows to {dest}")
    if failures:
        uri, why = failures[0]
        raise ExportError(f"{len(failures)} images could not be copied, e.g. {uri} ({why})")


@click.command("import-reviews")
@click.argument("output")
@click.option("--from", "source", nargs=2, required=True, type=(click.Choice(["label-studio"]), str),
              metavar="label-studio EXPORT.json",
              help="Label Studio's JSON export of a project made from `alexlabel export --to label-studio`.")
def import_reviews_command(output, source):
    """Bring people's decisions made in Label Studio into the reviews table.

    One reviews row per annotation, all in one session: confirm where the annotator chose the model's label
    (OUT's latest row for that uri and model version), correct otherwise; the reviewer is the annotator
    (email, else id) and the time the annotation's. Cancelled annotations and ones with no choice are skipped,
    tasks of images OUT has not labeled counted."""
    from output_tools.label_studio import import_reviews

    _, path = source
    done = import_reviews(output, path)
    unknown = f" (e.g. {done['example_unknown']})" if done["unknown"] else ""
    click.echo(f"wrote {done['written']} reviews (session {done['session_id']}) to {output.rstrip('/')}/reviews/; "
               f"skipped {done['skipped']} annotations (cancelled or no choice); {done['unknown']} "
               f"task{'s' * (done['unknown'] != 1)} of images {output} has not labeled{unknown}")


@click.command("audit")
@click.argument("output")
@click.option("--labels", metavar="MANIFEST_OR_TRUTH",
              help="Labels to check for likely errors against the model's probabilities: a uri,label CSV or Parquet "
                   "manifest, an ImageFolder tree DIR/<class>/<files>, or `reviews` (what people said).")
@click.option("--model", help="The model version whose embeddings to audit (required when the output holds several).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Cosine similarity of embeddings at or above which two images are near-duplicates.  "
                   "[default: the measured one, see README]")
@click.option("--fingerprint-threshold", type=click.FloatRange(0, 1), default=None,
              help="The same for the pixel fingerprints, which find mirrored and cropped copies that a model's "
                   "features may not.  [default: the measured one, see README]")
@click.option("--max-margin", type=click.FloatRange(0, 1), default=None,
              help="low_confidence: the top label at most this far above the runner-up.  [default: 0.1]")
def audit_command(output, labels, model, threshold, fingerprint_threshold, max_margin):
    """Find duplicates, near-duplicates, outliers, likely label errors and low confidence; write the issues table.

    Reads the embeddings that `alexlabel label --embeddings` wrote (one model version), and writes
    OUTPUT/issues/model=<version>/<audit_id>.parquet; `alexlabel report` shows the latest audit."""
    from output_tools.audit import LOW_MARGIN, run_audit, summary
    from output_tools.neighbors import DEFAULT_THRESHOLD, FINGERPRINT_THRESHOLD

    audit = run_audit(output, labels, model, DEFAULT_THRESHOLD if threshold is None else threshold,
                      LOW_MARGIN if max_margin is None else max_margin,
                      FINGERPRINT_THRESHOLD if fingerprint_threshold is None else fingerprint_threshold)
    click.echo(summary(audit))


@click.command("schema")
@click.option("--bigquery", is_flag=True,
              help="Print BigQuery JSON schemas instead of Arrow schemas: one table's field array (for "
                   "`bq mk --schema`), or an object of every table's.")
@click.argument("table", required=False, type=click.Choice(sorted(TABLES)))
def schema_command(bigquery, table):
    """Print the output table schemas (all tables, or one)."""
    if bigquery:  # one table's is the bare field array that `bq mk --schema` and `bq load --schema` take
        click.echo(json.dumps(bigquery_schema(TABLES[table]) if table else
                              {name: bigquery_schema(schema) for name, schema in TABLES.items()}, indent=2))
        return
    for name in [table] if table else TABLES:
        click.echo(f"{name}:\n{TABLES[name]}\n")


@click.command("review")
@click.argument("output")
@click.option("--model", help="Model version to review (required when the output holds several).")
@click.option("--queue", "kind", type=click.Choice(["review", "all", "disagreements"]), default="review",
              show_default=True, help="review: rows the model sent to review; all: every row not yet reviewed; "
              "disagreements: rows people did not confirm, for a second look.")
@click.option("--order", type=click.Choice(["confidence", "margin", "informative"]), default="confidence",
              show_default=True, help="Least confident first, smallest margin over the runner-up first, or "
              "informative: uncertain and unlike the rows before, so near-duplicates do not come in a row "
              "(needs `label --embeddings`).")
@click.option("--reviewer", help="Name recorded with each decision [default: the OS user].")
@click.option("--checkpoint", help="Where the class list comes from [default: the checkpoint the runs table names].")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="0: any free port.")
def review_command(output, model, kind, order, reviewer, checkpoint, host, port):
    """Review labels in a local web app: confirm, correct or reject each, into the reviews table."""
    from common.ids import new_id
    from output_tools.review_app import bind, open_app, serve, url
    from output_tools.reviews import default_reviewer

    sock = bind(host, port)  # first: a taken port is refused before anything starts
    try:
        app = open_app(output, model, kind, order, reviewer or default_reviewer(), checkpoint, new_id())
    except BaseException:
        sock.close()
        raise
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: listening on {host}: the token travels over plain HTTP; others on that network can "
                   "reach the app", err=True)
    click.echo(f"reviewing {app.queue.size} rows of model version {app.queue.model_version} ({kind} queue, by "
               f"{order}) as {app.reviewer}; decisions go to {output.rstrip('/')}/reviews/")
    click.echo(f"open {url(sock, app.token)}   (Ctrl-C stops; decisions are saved every few seconds)")
    serve(app, sock)
    click.echo(f"saved {len(app.positions)} decisions of session {app.log.session_id}")
