"""`make bench-parquet` (part of `make bench`): what the tables' compression costs and saves.

1. Size per million label rows: a million realistic rows (top-5 of 1,000 classes, ImageNet-style gs:// uris,
   real sha256 digests) through the pipeline's own WriteTable (Beam's Parquet sink with our record batches
   and row groups) in a Beam pipeline, once per codec: uncompressed (Beam's default), snappy, zstd.
2. Labeling speed with each: the whole `alexlabel label` process on the same JPEGs, uncompressed and zstd in
   turns (the machine's speed drifts), the codec swapped in the process before the job is built.

Usage: python benchmarks/bench_parquet.py [--rows 1000000] [--images 2000] [--rounds 3] [--workdir bench-out]
"""
import argparse
import glob
import hashlib
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from bench_label import make_model, run_measured
from make_images import ensure_images

import beam_pipeline.write as write

CODECS = ("none", "snappy", "zstd")
CLASSES = [f"n{i:08d}" for i in range(1000)]  # ImageNet's synset ids look like this


def label_rows(start: int, n: int):
    """n label rows as the pipeline builds them (dicts), with values shaped like a real ImageNet run's."""
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        conf = sorted(rng.dirichlet(np.full(5, 0.3)).astype(np.float32).tolist(), reverse=True)
        idx = rng.choice(1000, 5, replace=False).tolist()
        synset = CLASSES[int(rng.integers(1000))]
        yield {"uri": f"gs://my-bucket/imagenet/train/{synset}/{synset}_{i}.JPEG",
               "content_sha256": hashlib.sha256(i.to_bytes(8, "little")).hexdigest(),
               "size_bytes": int(rng.integers(20_000, 300_000)), "width": 500, "height": 375,
               "label": CLASSES[idx[0]], "label_index": idx[0], "confidence": conf[0],
               "topk_labels": [CLASSES[c] for c in idx], "topk_indices": idx, "topk_confidences": conf,
               "margin": conf[0] - conf[1], "decision": "accept" if conf[0] >= 0.5 else "review",
               "model_version": "0123456789ab", "run_id": "20261201T000000Z-bench",
               "labeled_at": datetime(2026, 12, 1, tzinfo=UTC)}


def sink_size(rows: int, codec: str, folder: str) -> dict:
    """Bytes and seconds of writing `rows` label rows through the pipeline's WriteTable with `codec`."""
    out = os.path.abspath(os.path.join(folder, codec))  # as the label command makes --output
    os.system(f"rm -rf {out}")
    write.CODEC = codec  # read when WriteTable expands
    write.make_table_folders(out, "0123456789ab")
    t0 = time.perf_counter()
    with beam.Pipeline(runner=FnApiRunner()) as p:
        (p
         | beam.Create(range(0, rows, 10_000))
         | beam.FlatMap(lambda start: label_rows(start, min(10_000, rows - start)))
         | write.WriteTable(out, "labels", "0123456789ab", "bench"))
    files = glob.glob(f"{out}/labels/*/*.parquet")
    return {"bytes": sum(os.path.getsize(f) for f in files), "write_s": round(time.perf_counter() - t0, 2),
            "files": len(files), "row_groups": sum(pq.ParquetFile(f).metadata.num_row_groups for f in files)}


def label_once(images_dir: str, checkpoint: str, out: str, codec: str) -> dict:
    """The whole `alexlabel label` process with the tables written in `codec`."""
    code = (f"import beam_pipeline.write as w; w.CODEC = {codec!r}\n"
            "from alexlabel.cli import main; main()")
    os.system(f"rm -rf {out}")
    _, wall, rss = run_measured([sys.executable, "-c", code, "label", "--input", f"{images_dir}/*.jpg",
                                 "--checkpoint", checkpoint, "--output", out])
    (runs,) = glob.glob(f"{out}/runs/*/*.parquet")
    row = pq.read_table(runs, partitioning=None).to_pylist()[0]
    tables = sum(os.path.getsize(f) for f in glob.glob(f"{out}/labels/*/*.parquet"))
    return {"pipeline_images_per_s": row["images_per_second"], "process_images_per_s": row["labeled"] / wall,
            "process_s": wall, "peak_mib": rss, "labels_bytes": tables}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default="bench-out")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    folder = os.path.join(args.workdir, "parquet")
    os.makedirs(folder, exist_ok=True)
    per_million = 1_000_000 / args.rows
    sizes = {codec: sink_size(args.rows, codec, folder) for codec in CODECS}
    for codec, size in sizes.items():
        size["mib_per_million_rows"] = round(size["bytes"] * per_million / 2**20, 1)
        print(f"{codec:>6}: {size['mib_per_million_rows']:7.1f} MiB per million label rows, written in "
              f"{size['write_s']} s", flush=True)

    images_dir = os.path.join(args.workdir, f"images-{args.images}")
    ensure_images(images_dir, args.images)
    _, checkpoint = make_model(args.workdir)
    speed = {codec: [] for codec in ("none", "zstd")}
    for i in range(args.rounds):
        for codec in speed:
            speed[codec].append(label_once(images_dir, checkpoint, os.path.join(args.workdir, "parquet-out"), codec))
            print(f"round {i + 1} {codec}: {speed[codec][-1]}", flush=True)
    medians = {codec: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
               for codec, runs in speed.items()}
    ratio = statistics.median(z["pipeline_images_per_s"] / n["pipeline_images_per_s"]
                              for z, n in zip(speed["zstd"], speed["none"], strict=True))
    results = {"rows": args.rows, "sizes": sizes, "images": args.images, "rounds": args.rounds,
               "labeling": medians, "zstd_over_none_pipeline_rate": round(ratio, 3), "runs": speed}
    print(json.dumps(results, indent=2))
    print(f"zstd: {sizes['zstd']['mib_per_million_rows']} MiB per million label rows "
          f"({sizes['none']['mib_per_million_rows'] / sizes['zstd']['mib_per_million_rows']:.1f}x smaller than "
          f"uncompressed); labeling rate zstd/none = {ratio:.3f} (median of {args.rounds} rounds)")
    with open(os.path.join(args.workdir, "bench_parquet.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
