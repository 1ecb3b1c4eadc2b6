"""The output tables: one pyarrow schema each, and their BigQuery JSON form.

Every writer and reader of labels/, errors/, runs/, reviews/, embeddings/, probabilities/ and issues/ takes
its columns from here.
"""
import pyarrow as pa

UTC_TS = pa.timestamp("us", tz="UTC")

LABELS = pa.schema([
    pa.field("uri", pa.string(), nullable=False),
    pa.field("content_sha256", pa.string(), nullable=False),
    pa.field("size_bytes", pa.int64(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("label", pa.string(), nullable=False),
    pa.field("label_index", pa.int32(), nullable=False),
    pa.field("confidence", pa.float32(), nullable=False),
    pa.field("topk_labels", pa.list_(pa.string()), nullable=False),
    pa.field("topk_indices", pa.list_(pa.int32()), nullable=False),
    pa.field("topk_confidences", pa.list_(pa.float32()), nullable=False),
    pa.field("margin", pa.float32(), nullable=False),
    pa.field("decision", pa.string(), nullable=False),
    pa.field("model_version", pa.string(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("labeled_at", UTC_TS, nullable=False),
])

ERRORS = pa.schema([
    pa.field("uri", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),  # read / decode (incl. resize) / infer
    pa.field("error_type", pa.string(), nullable=False),
    pa.field("message", pa.string(), nullable=False),
    pa.field("size_bytes", pa.int64()),
    pa.field("model_version", pa.string(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("at", UTC_TS, nullable=False),
])

# One row per run. A local job of more inputs than --commit-every runs in slices (run ids <job>-0001, -0002, ...),
# each a whole run with its own row, whose job_id is the job's run_id. Once every slice finished and the job's
# accounting held (matched == labeled + errored + skipped, and every input it matched in some slice), the job writes
# one more row: its own run_id, the slices' summed counts, its own wall time, start and finish, job_id null. A plain
# run's row has job_id null too. So a sliced job is counted twice in the table, once in its slices and once whole:
# to count each run once, read the view `jobs` (schemas/views.py), the rows with job_id null plus the slices of a
# job that never wrote its row (killed or failed partway: the finished slices' rows are all it leaves).
RUNS = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("model_version", pa.string(), nullable=False),
    pa.field("checkpoint", pa.string(), nullable=False),
    pa.field("inputs", pa.list_(pa.string()), nullable=False),
    pa.field("output", pa.string(), nullable=False),
    pa.field("runner", pa.string(), nullable=False),
    pa.field("matched", pa.int64(), nullable=False),
    pa.field("labeled", pa.int64(), nullable=False),
    pa.field("errored", pa.int64(), nullable=False),
    pa.field("skipped", pa.int64(), nullable=False),
    pa.field("wall_seconds", pa.float64(), nullable=False),
    pa.field("images_per_second", pa.float64(), nullable=False),
    pa.field("started_at", UTC_TS, nullable=False),
    pa.field("finished_at", UTC_TS, nullable=False),
    pa.field("options_json", pa.string(), nullable=False),
    pa.field("job_id", pa.string()),  # a slice's job; null on a whole run (a plain run, a sliced job's own row)
])

# One row per human decision (`alexlabel review`, `import-reviews`), append-only. `action`: confirm (the model's
# label is right), correct (reviewed_label is), unusable (none of the classes fits, or the image is broken:
# reviewed_label is null), or undo (withdraws this session's last decision on the uri; reviewed_label null).
REVIEWS = pa.schema([
    pa.field("uri", pa.string(), nullable=False),
    pa.field("content_sha256", pa.string(), nullable=False),
    pa.field("model_version", pa.string(), nullable=False),
    pa.field("predicted_label", pa.string(), nullable=False),
    pa.field("reviewed_label", pa.string()),
    pa.field("action", pa.string(), nullable=False),
    pa.field("reviewer", pa.string(), nullable=False),
    pa.field("reviewed_at", UTC_TS, nullable=False),
    pa.field("session_id", pa.string(), nullable=False),
])

# `label --embeddings` and `--probabilities`: one row per labels row, joined to it on (uri, model_version, run_id).
# float16: half the bytes of float32 on disk and in the audit's memory, and its ~1e-3 relative error is far below
# any similarity threshold or probability that matters. The embedding's length is the checkpoint's manifest
# `embedding.dim`; the probabilities follow the manifest's class order.
EMBEDDINGS = pa.schema([
    pa.field("uri", pa.string(), nullable=False),
    pa.field("content_sha256", pa.string(), nullable=False),
    pa.field("embedding", pa.list_(pa.float16()), nullable=False),
    pa.field("model_version", pa.string(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("fingerprint", pa.list_(pa.float16())),  # beam_pipeline/fingerprint.py; null in older outputs
])

PROBABILITIES = pa.schema([
    pa.field("uri", pa.string(), nullable=False),
    pa.field("content_sha256", pa.string(), nullable=False),
    pa.field("probabilities", pa.list_(pa.float16()), nullable=False),
    pa.field("model_version", pa.string(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
])

# `alexlabel audit`: one row per issue found, a file per audit. `issue`: exact_duplicate, near_duplicate, outlier,
# label_error, low_confidence. `score` 0-1, higher is surer or worse; `group_id` ties a duplicate set together
# within one audit; `suggested_label` is the model's label where it disagrees with the given one; `details` JSON.
ISSUES = pa.schema([
    pa.field("uri", pa.string(), nullable=False),
    pa.field("issue", pa.string(), nullable=False),
    pa.field("score", pa.float32(), nullable=False),
    pa.field("group_id", pa.int64()),
    pa.field("suggested_label", pa.string()),
    pa.field("details", pa.string(), nullable=False),
    pa.field("model_version", pa.string(), nullable=False),
    pa.field("audit_id", pa.string(), nullable=False),
    pa.field("audited_at", UTC_TS, nullable=False),
])

# Columns a table gained after outputs had been written without them, last in its schema: readers take them as
# null from older files (schemas/views.py), so an output written before them still reads.
ADDED_COLUMNS = {"runs": ["job_id"], "embeddings": ["fingerprint"]}

TABLES = {"labels": LABELS, "errors": ERRORS, "runs": RUNS, "reviews": REVIEWS, "embeddings": EMBEDDINGS,
          "probabilities": PROBABILITIES, "issues": ISSUES}

_BQ_TYPES = {pa.string(): "STRING", pa.int32(): "INT64", pa.int64(): "INT64", pa.float32(): "FLOAT64",
             pa.float64(): "FLOAT64", pa.float16(): "FLOAT64", UTC_TS: "TIMESTAMP", pa.bool_(): "BOOL"}


def bigquery_schema(schema: pa.Schema) -> list[dict]:
    """BigQuery JSON schema: the bare field array `bq mk --schema` and `bq load --schema` take; lists become
    REPEATED fields."""
    out = []
    for f in schema:
        if pa.types.is_list(f.type):
            out.append({"name": f.name, "type": _BQ_TYPES[f.type.value_type], "mode": "REPEATED"})
        else:
            out.append({"name": f.name, "type": _BQ_TYPES[f.type], "mode": "NULLABLE" if f.nullable else "REQUIRED"})
    return out
