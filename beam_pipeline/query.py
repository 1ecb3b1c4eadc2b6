"""SQL over an output folder or bucket: DuckDB views `labels`, `errors`, `runs` over the Parquet tables."""
import csv
import io
import os
import posixpath

import duckdb
import fsspec
import pyarrow as pa

from schemas.errors import UserError
from schemas.storage import as_url, glob_urls, is_local, read_bytes
from schemas.tables import TABLES


class NoOutput(UserError):
    """An output URL that holds no alexlabel tables."""


def connect(output: str) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one view per table; fsspec serves gs:// and other remote URLs."""
    con = duckdb.connect()
    fs, root = fsspec.core.url_to_fs(output.rstrip("/"))
    if not is_local(fs):
        con.register_filesystem(fs)
    if not fs.exists(f"{root}/runs"):
        raise NoOutput(f"{output} holds no alexlabel runs; run `alexlabel label --output {output}` first")
    for table, schema in TABLES.items():
        files = glob_urls(f"{output.rstrip('/')}/{table}/*/*.parquet")
        if files:
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet({files!r}, hive_partitioning=false, "
                        "union_by_name=true)")
        else:
            con.register(table, schema.empty_table())
    return con


def load_truth(con: duckdb.DuckDBPyConnection, truth: str) -> None:
    """Register `truth(uri, label)` from a CSV; relative uris are resolved against the CSV's folder."""
    rows = list(csv.DictReader(io.StringIO(read_bytes(truth).decode())))
    if not rows or not {"uri", "label"} <= rows[0].keys():
        raise UserError(f"truth file {truth} needs a header line with the columns uri,label")
    fs, path = fsspec.core.url_to_fs(truth)
    base = posixpath.dirname(os.path.abspath(path) if is_local(fs) else path)
    uris = [r["uri"] if "://" in r["uri"] else as_url(fs, posixpath.normpath(posixpath.join(base, r["uri"])))
            for r in rows]
    con.register("truth", pa.table({"uri": uris, "label": [r["label"] for r in rows]}))


SUMMARY_QUERIES = {
    "runs": """SELECT run_id, model_version, matched, labeled, errored, skipped,
                      round(wall_seconds, 1) AS seconds, round(images_per_second, 1) AS images_per_s
               FROM runs ORDER BY started_at""",
    "labels": """SELECT label, count(*) AS images, count(*) FILTER (decision = 'accept') AS accepted,
                        count(*) FILTER (decision = 'review') AS review, round(avg(confidence), 3) AS mean_conf
                 FROM labels GROUP BY label ORDER BY images DESC, label""",
    "errors": """SELECT stage, error_type, count(*) AS files, any_value(uri) AS example
                 FROM errors GROUP BY ALL ORDER BY files DESC""",
}
TRUTH_QUERY = """SELECT count(*) AS compared, count(*) FILTER (l.label = t.label) AS correct,
                        round(avg((l.label = t.label)::INT), 4) AS accuracy,
                        (SELECT count(*) FROM truth WHERE uri NOT IN (SELECT uri FROM labels)) AS truth_unlabeled
                 FROM labels l JOIN truth t USING (uri)"""


def summary(output: str, truth: str | None = None) -> dict[str, duckdb.DuckDBPyRelation]:
    """Named result tables: runs, rows per label, errors by type and, given truth, accuracy."""
    con = connect(output)
    results = {name: con.sql(q) for name, q in SUMMARY_QUERIES.items()}
    if truth:
        load_truth(con, truth)
        results["accuracy"] = con.sql(TRUTH_QUERY)
    return results
