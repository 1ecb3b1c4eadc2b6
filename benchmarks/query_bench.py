"""Times `alexlabel query --summary` and `--review 100` over 1 million label rows against a 2 s target.

The rows are synthetic but real: the labels/errors/runs schemas from schemas/tables.py, written in the
pipeline's output layout, then read through the same functions the CLI calls (query.py), each timed from a
fresh connection to the rendered text, as a user's command would be. A second run relabels some of the
images, so the latest-row-per-(uri, model_version) rule has real work to do.

    python benchmarks/query_bench.py [--rows 1000000] [--relabeled 100000] [--files 8] [--out DIR]
"""
import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from output_tools import query  # noqa: E402
from schemas.tables import TABLES  # noqa: E402

CLASSES = [f"class_{i:03d}" for i in range(100)]
MODEL, RUNS = "0123456789ab", ("20250101T000000-bench", "20250102T000000-again")
TARGET_S = 2.0


def label_table(start: int, n: int, run: str, day: int, rng: np.random.Generator) -> pa.Table:
    """n label rows with top-3 predictions; confidences are sorted so margin = top1 - top2 holds."""
    conf = np.sort(rng.dirichlet(np.ones(3) * 0.5, n).astype(np.float32), axis=1)[:, ::-1]
    idx = rng.integers(0, len(CLASSES), (n, 3)).astype(np.int32)
    names = np.array(CLASSES, dtype=object)
    uri = np.char.add(f"gs://bench-bucket/images/{start:08d}/img_", np.arange(start, start + n).astype(str))
    offsets = pa.array(np.arange(0, 3 * n + 1, 3, dtype=np.int32))
    at = pa.array(np.full(n, int(datetime(2025, 1, day, tzinfo=UTC).timestamp() * 1e6)), pa.int64())
    return pa.table({
        "uri": uri.astype(object), "content_sha256": np.full(n, "0" * 64, dtype=object),
        "size_bytes": rng.integers(10_000, 500_000, n), "width": np.full(n, 500, np.int32),
        "height": np.full(n, 375, np.int32), "label": names[idx[:, 0]], "label_index": idx[:, 0],
        "confidence": conf[:, 0],
        "topk_labels": pa.ListArray.from_arrays(offsets, pa.array(names[idx.ravel()], pa.string())),
        "topk_indices": pa.ListArray.from_arrays(offsets, pa.array(idx.ravel())),
        "topk_confidences": pa.ListArray.from_arrays(offsets, pa.array(conf.ravel())),
        "margin": conf[:, 0] - conf[:, 1], "decision": np.where(conf[:, 0] >= 0.5, "accept", "review").astype(object),
        "model_version": np.full(n, MODEL, dtype=object), "run_id": np.full(n, run, dtype=object),
        "labeled_at": at.cast(pa.timestamp("us", tz="UTC")),
    }).cast(TABLES["labels"])


def write_output(out: str, rows: int, relabeled: int, files: int) -> None:
    """Run 1 labels rows - relabeled images in `files` shards, run 2 relabels the first `relabeled` a day
    later; a few errors and the run rows, laid out as beam_pipeline/write.py does."""
    rng = np.random.default_rng(0)
    prefix = f"{out}/labels/model={MODEL}"
    for table in TABLES:
        os.makedirs(f"{out}/{table}/model={MODEL}", exist_ok=True)
    bounds = np.linspace(0, rows - relabeled, files + 1, dtype=int)
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        pq.write_table(label_table(int(lo), int(hi - lo), RUNS[0], 1, rng),
                       f"{prefix}/{RUNS[0]}-{i:05d}-of-{files:05d}.parquet")
    if relabeled:
        pq.write_table(label_table(0, relabeled, RUNS[1], 2, rng), f"{prefix}/{RUNS[1]}-00000-of-00001.parquet")
    now = datetime.now(UTC)
    errors = [{"uri": f"gs://bench-bucket/broken/{i}.jpg", "stage": "decode", "error_type": "UnidentifiedImageError",
               "message": "cannot identify image file", "size_bytes": 10, "model_version": MODEL, "run_id": RUNS[0],
               "at": now} for i in range(100)]
    pq.write_table(pa.Table.from_pylist(errors, schema=TABLES["errors"]),
                   f"{out}/errors/model={MODEL}/{RUNS[0]}-00000-of-00001.parquet")
    for run, labeled in zip(RUNS, (rows - relabeled, relabeled), strict=True):
        row = {"run_id": run, "model_version": MODEL, "checkpoint": "gs://bench-bucket/model.pt", "inputs": ["gs://x/**"],
               "output": out, "runner": "DataflowRunner", "matched": labeled, "labeled": labeled, "errored": 0,
               "skipped": 0, "wall_seconds": 1000.0, "images_per_second": labeled / 1000, "started_at": now,
               "finished_at": now, "options_json": "{}"}
        pq.write_table(pa.Table.from_pylist([row], schema=TABLES["runs"]), f"{out}/runs/model={MODEL}/{run}.parquet")


def timed(name: str, make) -> bool:
    """Three runs of one built-in, each from a new connection to the rendered text; the slowest must pass."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        text = query.render(make(), "table")
        times.append(time.perf_counter() - t0)
    ok = max(times) <= TARGET_S
    print(f"{name:<13} {max(times):6.3f} s slowest of 3 ({', '.join(f'{t:.3f}' for t in times)})  "
          f"{'PASS' if ok else 'FAIL'} (target {TARGET_S:g} s; {len(text.splitlines())} lines printed)")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="label rows in all")
    parser.add_argument("--relabeled", type=int, default=100_000, help="of them, rows of a second run")
    parser.add_argument("--files", type=int, default=8, help="label files of the first run, as a sink's shards")
    parser.add_argument("--out", help="output folder to reuse (default: a fresh temp folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        if not os.path.isdir(f"{out}/labels"):
            t0 = time.perf_counter()
            write_output(out, args.rows, args.relabeled, args.files)
            print(f"wrote {args.rows:,} label rows ({args.relabeled:,} relabeled by a second run) under {out} "
                  f"in {time.perf_counter() - t0:.1f} s")
        print(f"DuckDB {duckdb.__version__}, {os.cpu_count()} cores")
        results = [timed("--summary", lambda: query.summary(query.connect(out))),
                   timed("--review 100", lambda: query.review(query.connect(out), 100))]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
