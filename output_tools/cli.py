"""`alexlabel query`, `report`, `export` and `schema`: the tools over the output tables (no Beam, no torch
to start: each command imports what it uses when it runs)."""
import json

import click

from schemas.tables import TABLES, bigquery_schema


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
    from output_tools import query

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
    from output_tools.report import write_report

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
    from output_tools.export import ExportError, export

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
