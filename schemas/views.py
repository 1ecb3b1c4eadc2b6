"""An output folder's tables as every reader agrees to read them: DuckDB views over the Parquet files.

    labels, errors, runs,  every row (with a model version given, only that version's partition)
    reviews
    jobs                   the runs rows that count each run once: whole runs (job_id null: a plain run, a
                           sliced job's own row) and the slices of a job that wrote no row of its own (killed),
                           with `slices`, how many slice rows a job's row sums
    latest                 the latest row per (uri, model_version): greatest labeled_at, ties to the greater run_id
    latest_errors          the same rule over errors (greatest `at`), less the files labeled after they failed
    analyzed, failed       what the analyses read: `latest` and `latest_errors`, or `labels` and `errors`
                           when asked for all rows
    reviewed               the latest human decision per (uri, model_version), undone ones left out
    vectors                the analyzed label rows with their embedding and fingerprint (and probabilities,
                           null where the run stored none): `label --embeddings` / `--probabilities`
    latest_audits          each model version's latest `alexlabel audit` (model_version, audit_id), also one
                           that found nothing: from the issues files' names, one file per audit
    latest_issues          the rows of those audits

and TRAINING_ROWS, what retraining learns from.

Why `latest`: labeling the same images again (a rerun without --skip-existing, --retry-errors) adds rows,
and counts, accuracy, review queues and error counts are about images, not attempts: a file that failed in
two runs is one failed file, and one a --retry-errors run then labeled has not failed. Another model
version's rows are kept: comparing versions is the point of keeping them.

The output tools (query, report, export, review) and the trainer (`--data-manifest OUT`) all read through
here, so a person's verdict means the same everywhere.
"""
import duckdb
import fsspec
import pyarrow as pa

from common.errors import UserError
from common.storage import glob_urls, is_local
from schemas.tables import ADDED_COLUMNS, TABLES

# The latest human decision per (uri, model_version). Within a review session the last row is its verdict (an
# undo row withdraws the one before it), so undone decisions drop out and an earlier session's verdict stands.
REVIEWED = """SELECT * FROM (SELECT * FROM reviews
                             QUALIFY row_number() OVER (PARTITION BY uri, model_version, session_id
                                                        ORDER BY reviewed_at DESC) = 1)
              WHERE action <> 'undo'
              QUALIFY row_number() OVER (PARTITION BY uri, model_version
                                         ORDER BY reviewed_at DESC, session_id DESC) = 1"""
LATEST = """SELECT * FROM labels
            QUALIFY row_number() OVER (PARTITION BY uri, model_version ORDER BY labeled_at DESC, run_id DESC) = 1"""
VECTORS = """SELECT a.*, e.embedding, e.fingerprint, p.probabilities
             FROM analyzed a JOIN embeddings e USING (uri, model_version, run_id)
                             LEFT JOIN probabilities p USING (uri, model_version, run_id)"""
# A sliced job has its slices' rows and its own (RUNS in schemas/tables.py): the slices go where their job's row is
# there, so each run is counted once, and stay where it is not (a killed job left only them).
JOBS = """SELECT *, (SELECT count(*) FROM runs s WHERE s.job_id = r.run_id AND s.model_version = r.model_version)
                   AS slices
          FROM runs r
          WHERE job_id IS NULL OR NOT EXISTS (SELECT 1 FROM runs j WHERE j.run_id = r.job_id
                                                                   AND j.model_version = r.model_version)"""
LATEST_ISSUES = "SELECT * FROM issues SEMI JOIN latest_audits USING (model_version, audit_id)"
LATEST_ERRORS = """SELECT * FROM errors e
                   WHERE NOT EXISTS (SELECT 1 FROM labels l WHERE l.uri = e.uri AND l.model_version = e.model_version
                                                              AND l.labeled_at > e."at")
                   QUALIFY row_number() OVER (PARTITION BY uri, model_version ORDER BY "at" DESC, run_id DESC) = 1"""


class NoOutput(UserError):
    """An output URL that holds no alexlabel tables, or not the model version asked for."""


def connect(output: str, model: str | None = None, all_rows: bool = False) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views above; fsspec serves gs:// and other remote URLs. The views name
    the files there now: rows written later are not in them."""
    con = duckdb.connect()
    output = output.rstrip("/")
    fs, root = fsspec.core.url_to_fs(output)
    if not is_local(fs):
        con.register_filesystem(fs)
    if not fs.exists(root):
        raise NoOutput(f"{output} does not exist; give the folder or URL that `alexlabel label --output` wrote")
    if not fs.exists(f"{root}/runs"):
        raise NoOutput(f"{output} holds no alexlabel runs; run `alexlabel label --output {output}` first")
    if model and model not in (found := partition_versions(output)):
        raise NoOutput(f"{output} has no rows of model version {model} (it has: {', '.join(found) or 'none'})")
    for table, schema in TABLES.items():
        files = glob_urls(f"{output}/{table}/model={model}/*.parquet" if model else f"{output}/{table}/*/*.parquet")
        if files:
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet([{', '.join(map(literal, files))}], "
                        f"hive_partitioning=false, union_by_name=true){added_columns(con, table)}")
        else:
            con.register(table, duckdb_empty(schema))
    con.execute(f"CREATE VIEW jobs AS {JOBS}")
    con.execute(f"CREATE VIEW latest AS {LATEST}")
    con.execute(f"CREATE VIEW reviewed AS {REVIEWED}")
    con.execute(f"CREATE VIEW latest_errors AS {LATEST_ERRORS}")
    con.execute(f"CREATE VIEW analyzed AS SELECT * FROM {'labels' if all_rows else 'latest'}")
    con.execute(f"CREATE VIEW failed AS SELECT * FROM {'errors' if all_rows else 'latest_errors'}")
    con.execute(f"CREATE VIEW vectors AS {VECTORS}")
    con.register("latest_audits", latest_audits(glob_urls(f"{output}/issues/model={model or '*'}/*.parquet")))
    con.execute(f"CREATE VIEW latest_issues AS {LATEST_ISSUES}")
    return con


def added_columns(con: duckdb.DuckDBPyConnection, table: str) -> str:
    """SQL to append to a scan of `table`'s files: its ADDED_COLUMNS as typed nulls where the files predate them
    (UNION ALL BY NAME with no rows), so the view has them whatever the files' age; "" for a table without any.
    Only tables that gained columns pay for it."""
    if not (names := ADDED_COLUMNS.get(table)):
        return ""
    empty = con.from_arrow(duckdb_empty(pa.schema([TABLES[table].field(n) for n in names])))
    nulls = ", ".join(f"NULL::{t} AS \"{n}\"" for n, t in zip(empty.columns, empty.types, strict=True))
    return f" UNION ALL BY NAME SELECT {nulls} WHERE false"


def latest_audits(files: list[str]) -> pa.Table:
    """(model_version, audit_id) of the newest issues file per version: OUT/issues/model=<v>/<audit_id>.parquet,
    audit ids sorting by time (common.ids)."""
    latest: dict[str, str] = {}
    for url in files:
        folder, _, name = url.rpartition("/")
        version, audit = folder.rsplit("model=", 1)[1], name.removesuffix(".parquet")
        latest[version] = max(latest.get(version, audit), audit)
    return pa.table({"model_version": pa.array(list(latest), pa.string()),
                     "audit_id": pa.array(list(latest.values()), pa.string())})


def duckdb_empty(schema: pa.Schema) -> pa.Table:
    """An empty table of `schema` for a table with no files yet, float16 as float32: DuckDB reads Parquet's
    float16 (as FLOAT) but not Arrow's."""
    def wider(t: pa.DataType) -> pa.DataType:
        if pa.types.is_list(t):
            return pa.list_(wider(t.value_type))
        return pa.float32() if pa.types.is_float16(t) else t
    return pa.schema([f.with_type(wider(f.type)) for f in schema]).empty_table()


def partition_versions(output: str) -> list[str]:
    """Model versions with a partition in any table, from the folder names alone."""
    fs, root = fsspec.core.url_to_fs(output.rstrip("/"))
    return sorted({p.rsplit("model=", 1)[1] for p in fs.glob(f"{root}/*/model=*")})


def label_versions(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Model versions of the analyzed label rows, most recently labeled first."""
    rows = con.sql("SELECT model_version FROM analyzed GROUP BY 1 ORDER BY max(labeled_at) DESC, 1").fetchall()
    return [v for (v,) in rows]


def literal(value: str) -> str:
    """A SQL string literal (for views, which take no parameters)."""
    return "'" + value.replace("'", "''") + "'"


# The rows to retrain on: the model's label, or a person's where one decided; those people marked unusable
# left out. Checked rows pass whatever the filters; $1 (a decision), $2 (a minimum confidence) and $3 (checked
# rows only) choose among the rest.
TRAINING_ROWS = """SELECT uri, coalesce(r.reviewed_label, a.label) AS label, confidence, decision, model_version,
                          r.action IS NOT NULL AS reviewed
                   FROM analyzed a LEFT JOIN reviewed r USING (uri, model_version)
                   WHERE coalesce(r.action, '') <> 'unusable'
                     AND (r.action IS NOT NULL OR (NOT $3 AND ($1 IS NULL OR decision = $1)
                                                   AND confidence >= coalesce($2, 0)))
                   ORDER BY uri"""


def one_version(con: duckdb.DuckDBPyConnection, output: str) -> str | None:
    """The model version of the analyzed label rows (None without any), refusing to mix several silently."""
    versions = label_versions(con)
    if len(versions) > 1:
        raise NoOutput(f"{output} holds labels of {len(versions)} model versions ({', '.join(versions)}); "
                       "pick one with --model")
    return versions[0] if versions else None


def latest_checkpoint(con: duckdb.DuckDBPyConnection, model_version: str) -> str | None:
    """The checkpoint the latest run of a model version labeled with (where its whole class list is)."""
    row = con.execute("SELECT checkpoint FROM jobs WHERE model_version = $1 ORDER BY started_at DESC LIMIT 1",
                      [model_version]).fetchone()
    return row[0] if row else None


def training_rows(output: str, model: str | None = None, decision: str | None = None,
                  min_confidence: float | None = None, reviewed_only: bool = False) -> list[tuple]:
    """(uri, label, confidence, decision, model_version, reviewed) of one model version's rows to retrain on."""
    con = connect(output, model)
    one_version(con, output)
    return con.execute(TRAINING_ROWS, [decision, min_confidence, reviewed_only]).fetchall()
