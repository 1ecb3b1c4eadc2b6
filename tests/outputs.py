"""Real output folders in milliseconds: rows with the schemas of schemas/tables.py, written as Parquet in the
pipeline's layout (OUT/<table>/model=<version>/<run_id>-00000-of-00001.parquet, runs/.../<run_id>.parquet)."""
import glob
import io
from datetime import UTC, datetime, timedelta

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from alexlabel.sample_data import jpeg_bytes, sample_image
from schemas.tables import TABLES

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def label(uri: str, label: str, confidence: float, *, model: str = "m1", run: str = "r1", minute: int = 0,
          runner_up: str = "other", margin: float | None = None, threshold: float = 0.5) -> dict:
    """One labels row; the runner-up holds confidence - margin (default: what is left of 1)."""
    margin = confidence - min(1 - confidence, confidence) if margin is None else margin
    return {"uri": uri, "content_sha256": "0" * 64, "size_bytes": 1000, "width": 64, "height": 48, "label": label,
            "label_index": 0, "confidence": confidence, "topk_labels": [label, runner_up], "topk_indices": [0, 1],
            "topk_confidences": [confidence, confidence - margin], "margin": margin,
            "decision": "accept" if confidence >= threshold else "review", "model_version": model, "run_id": run,
            "labeled_at": T0 + timedelta(minutes=minute)}


def error(uri: str, error_type: str = "UnidentifiedImageError", message: str = "cannot identify image file", *,
          stage: str = "decode", model: str = "m1", run: str = "r1") -> dict:
    return {"uri": uri, "stage": stage, "error_type": error_type, "message": message, "size_bytes": 10,
            "model_version": model, "run_id": run, "at": T0}


def vector(row: dict, values, column: str = "embedding") -> dict:
    """The embeddings (or, with column="probabilities", probabilities) row of a labels row."""
    return {"uri": row["uri"], "content_sha256": row["content_sha256"], column: np.asarray(values, np.float16),
            "model_version": row["model_version"], "run_id": row["run_id"]}


def write_output(out: str, labels: list[dict], errors: list[dict] = (), embeddings: list[dict] = (),
                 probabilities: list[dict] = ()) -> str:
    """Write the rows, one file per (table, model, run), plus a runs row for every run they name."""
    out = out.rstrip("/")
    runs = {}
    for table, rows, count in (("labels", labels, "labeled"), ("errors", errors, "errored"),
                               ("embeddings", embeddings, None), ("probabilities", probabilities, None)):
        for (model, run), part in group(rows).items():
            write(f"{out}/{table}/model={model}/{run}-00000-of-00001.parquet", part, table)
            if count:
                runs.setdefault((model, run), {"labeled": 0, "errored": 0})[count] = len(part)
    for (model, run), n in runs.items():
        write(f"{out}/runs/model={model}/{run}.parquet", [{
            "run_id": run, "model_version": model, "checkpoint": "model.pt", "inputs": ["in/*"], "output": out,
            "runner": "DirectRunner", "matched": n["labeled"] + n["errored"], **n, "skipped": 0,
            "wall_seconds": 2.0, "images_per_second": 5.0, "started_at": T0, "finished_at": T0,
            "options_json": "{}"}], "runs")
    return out


def drop_column(out: str, table: str, column: str, run: str = "*") -> None:
    """Rewrite a local output's `table` files of `run` without `column`: an output written before it was added."""
    for path in glob.glob(f"{out}/{table}/*/{run}.parquet") + glob.glob(f"{out}/{table}/*/{run}-*.parquet"):
        pq.write_table(pq.read_table(path, partitioning=None).drop_columns([column]), path)


def group(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    out = {}
    for row in rows:
        out.setdefault((row["model_version"], row["run_id"]), []).append(row)
    return out


def write(url: str, rows: list[dict], table: str) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=TABLES[table]), buf)
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(buf.getvalue())


def write_images(directory, names: list[str], seed: int = 0) -> list[str]:
    """Real photo-like JPEGs (the sample set's generator) at directory/<name>; returns their paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for name in names:
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg_bytes(sample_image(rng, "circle")))
        paths.append(str(path))
    return paths
