"""SQL over an output folder or bucket, and the built-in analyses the `query` and `report` commands share, over
the views of schemas/views.py (labels, errors, runs, jobs, reviews, latest, analyzed, failed, reviewed).
"""
import csv
import io
import json
import posixpath
from contextlib import contextmanager
from datetime import date, datetime
from decimal import Decimal

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from common.errors import UserError, first_line
from common.storage import atomic_write_bytes, read_bytes, resolve_uri
from output_tools import informative
from schemas.views import NoOutput, connect, label_versions, literal  # noqa: F401 (the query API)

# informative: margin order, then its first rows reordered by output_tools/informative.py
REVIEW_ORDER = {"confidence": "confidence, margin, uri", "margin": "margin, confidence, uri",
                "informative": "margin, confidence, uri"}
# What `--to FILE` holds when no --format is given, by FILE's extension.
EXTENSION_FORMATS = {".csv": "csv", ".json": "json", ".parquet": "parquet", ".txt": "table"}


class QueryError(UserError):
    """A query the output cannot answer as asked: unknown versions, unmatched truth, bad SQL or format."""


@contextmanager
def sql_errors():
    """DuckDB's errors as one `Error: ...` line: the user's SQL is user input."""
    try:
        yield
    except duckdb.Error as e:
        raise QueryError(first_line(e)) from None


def run_sql(con: duckdb.DuckDBPyConnection, sql: str) -> dict[str, duckdb.DuckDBPyRelation]:
    with sql_errors():
        relation = con.sql(sql)
    return {"sql": relation} if relation is not None else {}


SUMMARY_STATS = """CREATE OR REPLACE TEMP TABLE label_stats AS
    SELECT model_version, label, grouping(label) AS total, count(*) AS images,
           count(*) FILTER (decision = 'accept') AS accepted, count(*) FILTER (decision = 'review') AS review,
           avg(confidence) AS mean, min(confidence)::DOUBLE AS lo, max(confidence)::DOUBLE AS hi,
           quantile_cont(confidence, [0.1, 0.25, 0.5, 0.75, 0.9])::DOUBLE[] AS q
    FROM analyzed GROUP BY GROUPING SETS ((model_version, label), (model_version))"""
SUMMARY_QUERIES = {
    # jobs, not runs: a job in slices is its own row (with how many slices), not that row and its slices again
    "runs": """SELECT run_id, model_version, slices, matched, labeled, errored, skipped,
                      round(wall_seconds, 1) AS seconds, round(images_per_second, 1) AS images_per_s,
                      job_id AS unfinished_job
               FROM jobs ORDER BY started_at, run_id""",
    "confidence": """SELECT model_version, images, accepted, review, round(accepted / images, 4) AS accept_rate,
                            round(lo, 3) AS min, round(q[1], 3) AS p10, round(q[2], 3) AS p25,
                            round(q[3], 3) AS median, round(q[4], 3) AS p75, round(q[5], 3) AS p90,
                            round(hi, 3) AS max, round(mean, 3) AS mean
                     FROM label_stats WHERE total = 1 ORDER BY model_version""",
    "labels": """SELECT model_version, label, images, accepted, review, round(mean, 3) AS mean_conf,
                        round(q[1], 3) AS p10, round(q[3], 3) AS median, round(q[5], 3) AS p90
                 FROM label_stats WHERE total = 0 ORDER BY model_version, images DESC, label""",
    "errors": """SELECT model_version, stage, error_type, count(*) AS files, any_value(uri) AS example
                 FROM failed GROUP BY ALL ORDER BY model_version, files DESC, stage, error_type""",
}


def summary(con: duckdb.DuckDBPyConnection | str, truth: str | None = None) -> dict[str, duckdb.DuckDBPyRelation]:
    """Runs, accept/review split and confidence quantiles per version and per label, errors by type, once
    people reviewed some rows their verdict on the model and, given truth, the truth tables. `con` may be an
    output URL; the label rows are scanned once."""
    con = connect(con) if isinstance(con, str) else con
    con.execute(SUMMARY_STATS)
    results = {name: con.sql(q) for name, q in SUMMARY_QUERIES.items()}
    if con.sql("SELECT count(*) FROM reviewed").fetchall()[0][0]:
        results |= human_checked(con)
    return {**results, **truth_tables(con, truth)} if truth else results


def wilson(k: str, n: str, z: float = 1.96) -> str:
    """SQL for the 95% Wilson score interval [low, high] of k successes in n trials (rounded)."""
    center = f"({k} + {z * z / 2}) / ({n} + {z * z})"
    half = f"{z} * sqrt({k} * ({n} - {k}) / {n} + {z * z / 4}) / ({n} + {z * z})"
    return f"round({center} - {half}, 4) AS low95, round({center} + {half}, 4) AS high95"


HUMAN_CHECKED = f"""SELECT {{keys}}, coalesce(decision, 'all') AS decision,
                           count(*) FILTER (action = 'confirm') AS confirmed,
                           count(*) FILTER (action = 'correct') AS corrected,
                           count(*) FILTER (action = 'unusable') AS unusable,
                           round(confirmed / nullif(confirmed + corrected, 0), 4) AS accuracy,
                           {wilson("confirmed", "nullif(confirmed + corrected, 0)")}
                    FROM checked GROUP BY GROUPING SETS (({{keys}}, decision), ({{keys}})) ORDER BY ALL"""


def human_checked(con: duckdb.DuckDBPyConnection) -> dict[str, duckdb.DuckDBPyRelation]:
    """How often people found the model right, with 95% Wilson intervals: per model version and decision
    (so the accept threshold is judged against people, not the model's own confidence) and per label, and
    how much of each version's rows and review queue people have checked. Unusable rows count apart. A verdict
    is on an image, so these read the latest row per image even with --all-rows."""
    con.execute("""CREATE OR REPLACE TEMP TABLE checked AS
                   SELECT a.model_version, a.label, a.decision, r.action
                   FROM latest a JOIN reviewed r USING (uri, model_version)""")
    return {
        "human_checked": con.sql(HUMAN_CHECKED.format(keys="model_version")),
        "human_checked_per_label": con.sql(HUMAN_CHECKED.format(keys="model_version, label")),
        "reviewed_share": con.sql("""SELECT a.model_version, count(*) AS rows, count(r.action) AS reviewed,
                                            count(*) FILTER (a.decision = 'review') AS review_queue,
                                            count(r.action) FILTER (a.decision = 'review') AS queue_reviewed,
                                            round(queue_reviewed / nullif(review_queue, 0), 4) AS queue_share
                                     FROM latest a LEFT JOIN reviewed r USING (uri, model_version)
                                     GROUP BY ALL ORDER BY ALL"""),
    }


def review(con: duckdb.DuckDBPyConnection, n: int, by: str = "confidence") -> dict[str, duckdb.DuckDBPyRelation]:
    """The n rows a person should look at first: least confident, closest to their runner-up, or the most
    informative (uncertain, and unlike each other: informative.py).

    The order is found on narrow columns and the wide ones fetched for those n rows only: carrying them
    through the latest-row window would double the time."""
    order, pool = REVIEW_ORDER[by], informative.pool_size(n) if by == "informative" else 0
    con.execute(f"""CREATE OR REPLACE TEMP TABLE review_queue AS
                    SELECT row_number() OVER (ORDER BY {order}) - 1 AS pos, uri, model_version, run_id, labeled_at,
                           margin
                    FROM (SELECT uri, model_version, run_id, labeled_at, margin, confidence FROM analyzed
                          ORDER BY {order} LIMIT {max(int(n), pool)})""")
    if by == "informative":
        informative.reorder(con, "review_queue", pool, n)
    return {"review": con.sql(f"""SELECT uri, label, confidence, l.margin, topk_labels[2] AS runner_up, decision,
                                         model_version, run_id
                                  FROM labels l JOIN review_queue USING (uri, model_version, run_id, labeled_at)
                                  WHERE pos < {int(n)} ORDER BY pos""")}


def load_truth(con: duckdb.DuckDBPyConnection, truth: str) -> None:
    """Table `judged` (model_version, uri, key, truth, predicted): analyzed rows joined to the ground truth.

    A file is a uri,label CSV or Parquet table matched by uri (relative uris resolve against the file's folder; an
    `alexlabel export --to manifest` file is one); a folder is an
    ImageFolder tree DIR/<class>/<files> matched by file name, which must then be unique in the tree;
    `reviews` is what people said (the reviewed view: the latest confirmed or corrected label per uri, of any
    model version they reviewed).
    """
    fs, path = fsspec.core.url_to_fs(truth)
    if truth == "reviews":
        con.execute("""CREATE OR REPLACE TEMP TABLE truth AS
                       SELECT uri AS key, reviewed_label AS label FROM reviewed WHERE action IN ('confirm', 'correct')
                       QUALIFY row_number() OVER (PARTITION BY uri ORDER BY reviewed_at DESC) = 1""")
        key, how = "l.uri", "uri (people reviewed none of these rows)"
    elif fs.isdir(path):
        con.register("truth", folder_truth(fs, path, truth))
        key, how = "parse_filename(l.uri)", "file name"
    elif fs.isfile(path):
        con.register("truth", file_truth(truth))
        key, how = "l.uri", "uri"
    else:
        raise QueryError(f"truth {truth} does not exist; pass a uri,label CSV or an ImageFolder tree DIR/<class>/")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE judged AS
                    SELECT l.model_version, l.uri, t.key, t.label AS truth, l.label AS predicted
                    FROM analyzed l JOIN truth t ON {key} = t.key""")
    if not con.sql("SELECT count(*) FROM judged").fetchall()[0][0]:
        raise QueryError(f"no labeled image matches truth {truth} by {how}; check that it describes this output")


def file_truth(truth: str) -> pa.Table:
    if truth.lower().endswith(".parquet"):
        table = pq.read_table(io.BytesIO(read_bytes(truth)))
        if not {"uri", "label"} <= set(table.column_names):
            raise QueryError(f"truth file {truth} needs the columns uri and label")
        rows = table.select(["uri", "label"]).to_pylist()
    else:
        rows = list(csv.DictReader(io.StringIO(read_bytes(truth).decode())))
        if not rows or not {"uri", "label"} <= rows[0].keys():
            raise QueryError(f"truth file {truth} needs a header line with the columns uri,label")
    return pa.table({"key": [resolve_uri(r["uri"], truth) for r in rows], "label": [r["label"] for r in rows]})


def folder_truth(fs: fsspec.AbstractFileSystem, path: str, truth: str) -> pa.Table:
    classes: dict[str, str] = {}
    for p in sorted(fs.find(path)):
        parts = p[len(path.rstrip("/")) + 1:].split("/")
        if len(parts) != 2 or parts[1].startswith("."):
            continue
        label, name = parts
        if classes.setdefault(name, label) != label:
            raise QueryError(f"truth folder {truth} holds {name} under both {classes[name]}/ and {label}/; "
                             "matching is by file name, so names must be unique")
    if not classes:
        raise QueryError(f"truth folder {truth} has no files in class folders; expect {truth}/<class>/<files>")
    return pa.table({"key": list(classes), "label": list(classes.values())})


TRUTH_QUERIES = {
    "accuracy": """SELECT count(*) AS compared, count(*) FILTER (predicted = truth) AS correct,
                          round(avg((predicted = truth)::INT), 4) AS accuracy,
                          (SELECT count(*) FROM truth) - count(DISTINCT key) AS truth_unlabeled, model_version
                   FROM judged GROUP BY model_version ORDER BY model_version""",
    "per_class": """SELECT model_version, label, sum(is_truth) AS support, sum(is_predicted) AS predicted,
                           sum(is_truth * is_predicted) AS correct,
                           round(sum(is_truth * is_predicted) / nullif(sum(is_predicted), 0), 4) AS precision,
                           round(sum(is_truth * is_predicted) / nullif(sum(is_truth), 0), 4) AS recall
                    FROM (SELECT model_version, truth AS label, 1 AS is_truth, (predicted = truth)::INT AS is_predicted
                          FROM judged
                          UNION ALL
                          SELECT model_version, predicted, 0, 1 FROM judged WHERE predicted <> truth)
                    GROUP BY ALL ORDER BY model_version, label""",
    "confusion": """PIVOT (SELECT model_version, truth AS "truth / predicted", predicted FROM judged)
                    ON predicted USING count(*) GROUP BY model_version, "truth / predicted"
                    ORDER BY 1, 2""",
}


def truth_tables(con: duckdb.DuckDBPyConnection, truth: str) -> dict[str, duckdb.DuckDBPyRelation]:
    """Accuracy, per-class precision and recall, and the confusion matrix (rows: truth), per model version."""
    load_truth(con, truth)
    return {name: con.sql(q) for name, q in TRUTH_QUERIES.items()}


def compare(con: duckdb.DuckDBPyConnection, a: str, b: str) -> dict[str, duckdb.DuckDBPyRelation]:
    """Agreement of two runs or model versions on the uris both labeled, and the rows whose label changed."""
    for name, side in (("side_a", a), ("side_b", b)):
        con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {side_rows(con, side)}")
    return {
        "agreement": con.sql(f"""SELECT {literal(a)} AS a, {literal(b)} AS b,
                                        count(a.uri) FILTER (b.uri IS NOT NULL) AS compared,
                                        count(*) FILTER (a.label = b.label) AS agreed,
                                        round(agreed / nullif(compared, 0), 4) AS agreement,
                                        count(*) FILTER (b.uri IS NULL) AS only_in_a,
                                        count(*) FILTER (a.uri IS NULL) AS only_in_b
                                 FROM side_a a FULL JOIN side_b b USING (uri)"""),
        "changed": con.sql("""SELECT uri, a.label AS label_a, a.confidence AS confidence_a,
                                     b.label AS label_b, b.confidence AS confidence_b
                              FROM side_a a JOIN side_b b USING (uri) WHERE a.label <> b.label ORDER BY uri"""),
    }


def side_rows(con: duckdb.DuckDBPyConnection, side: str) -> str:
    """SQL for one row per uri of a run id (a run labels each input once; a job in slices, through its slices' run
    ids) or a model version (its latest rows)."""
    run_ids = f"(SELECT {literal(side)} UNION SELECT run_id FROM runs WHERE job_id = {literal(side)})"
    runs, models = con.execute(f"SELECT count(*) FILTER (run_id IN {run_ids}), count(*) FILTER (model_version = $1) "
                               "FROM labels", [side]).fetchall()[0]
    if runs:
        return f"SELECT uri, label, confidence FROM labels WHERE run_id IN {run_ids}"
    if models:
        return f"SELECT uri, label, confidence FROM latest WHERE model_version = {literal(side)}"
    raise QueryError(f"--compare: {side} is neither a run id nor a model version with label rows here")


def render(results: dict[str, duckdb.DuckDBPyRelation], fmt: str) -> str | bytes:
    """Results as an aligned text table, CSV, JSON (one table: a list of rows; several: an object of them)
    or Parquet bytes. CSV and Parquet hold one table each."""
    if fmt in ("csv", "parquet") and len(results) > 1:
        raise QueryError(f"--format {fmt} holds one table, but this query gives {len(results)} "
                         f"({', '.join(results)}); use --format json or table, or ask for one table")
    with sql_errors():
        if fmt == "parquet":
            buf = io.BytesIO()
            for relation in results.values():
                pq.write_table(relation.to_arrow_table(), buf)
            return buf.getvalue()
        tables = {name: (rel.columns, rel.fetchall()) for name, rel in results.items()}
    if fmt == "csv":
        return "".join(csv_text(*t) for t in tables.values())
    if fmt == "json":
        rows = {name: [dict(zip(cols, row, strict=True)) for row in data] for name, (cols, data) in tables.items()}
        return json.dumps(rows if len(rows) > 1 else next(iter(rows.values()), []), default=json_value, indent=1) + "\n"
    if len(tables) == 1:
        return aligned(*next(iter(tables.values())))
    return "\n".join(f"{name}:\n{aligned(*t)}" for name, t in tables.items())


def aligned(columns: list[str], rows: list[tuple]) -> str:
    """A plain text table: numbers right-aligned, every row shown (DuckDB's own display elides rows)."""
    cells = [list(columns)] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    numeric = [bool(rows) and all(isinstance(r[i], int | float | Decimal) or r[i] is None for r in rows)
               for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(r, widths, numeric, strict=True)).rstrip()
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + f"\n({len(rows)} row{'s' * (len(rows) != 1)})\n"


def cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, ".6g")
    if isinstance(value, list):
        return "[" + ", ".join(cell(v) for v in value) + "]"
    return str(value)


def csv_text(columns: list[str], rows: list[tuple]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([csv_value(v) for v in row] for row in rows)
    return buf.getvalue()


def csv_value(value):
    """Lists and structs as JSON text in one cell; timestamps as ISO 8601."""
    if isinstance(value, list | dict):
        return json.dumps(value, default=json_value)
    return json_value(value) if isinstance(value, datetime | date | Decimal) else value


def json_value(value):
    """JSON for what DuckDB returns beyond JSON's types: timestamps as ISO 8601, decimals as numbers."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)


def output_format(fmt: str | None, to: str | None) -> str:
    """--format, else the format --to's extension names, else an aligned table. A --format the extension
    contradicts is refused: an aligned table in a .csv file only fails later, in whatever reads it."""
    named = EXTENSION_FORMATS.get(posixpath.splitext(to)[1].lower()) if to else None
    if fmt and named and fmt != named:
        raise QueryError(f"--format {fmt} does not match --to {to}, which names --format {named}; "
                         "drop --format or change the file name")
    return fmt or named or "table"


def write_result(data: str | bytes, to: str) -> None:
    """Whole-file write on any fsspec URL; readers never see half a result."""
    atomic_write_bytes(to, data.encode() if isinstance(data, str) else data)
