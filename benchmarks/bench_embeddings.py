"""`make bench-embeddings` (part of `make bench`): what `label --embeddings` and `--probabilities` cost and store.

1. Labeling speed: the whole `alexlabel label` process on the same ImageNet-sized JPEGs with the 1000-class
   torchvision-layout AlexNet (its projection fitted by `import-weights --fit-pca` on those images), plain, with
   --embeddings, and with --embeddings --probabilities, in turns (the machine's speed drifts), --rounds rounds.
   Each rate is the median of its rounds, each ratio the median of the rounds' ratios. Target: --embeddings
   costs at most 10% of the images/s.
2. Size per million images: the tables the runs wrote, per row, scaled to a million (the float16 vectors
   dominate, and zstd's ratio on them does not depend on how many rows share a file).

Usage: python benchmarks/bench_embeddings.py [--images 2000] [--rounds 3] [--workdir bench-out]
"""
import argparse
import glob
import json
import os
import statistics
import subprocess

import pyarrow.parquet as pq
from bench_label import ALEXLABEL, make_model, run_measured
from make_images import ensure_images

VARIANTS = {"plain": [], "embeddings": ["--embeddings"], "both": ["--embeddings", "--probabilities"]}


def projected_model(workdir: str, images_dir: str) -> str:
    """The benchmark's AlexNet with an embedding projection fitted on the images it labels."""
    state_dict, _ = make_model(workdir)
    checkpoint = os.path.join(workdir, "alexnet-pca.pt")
    if not os.path.exists(checkpoint):
        subprocess.run([ALEXLABEL, "import-weights", state_dict, "--arch", "alexnet", "--classes",
                        os.path.join(workdir, "classes.txt"), "--output", checkpoint, "--fit-pca", images_dir],
                       check=True)
    return checkpoint


def label_once(images_dir: str, checkpoint: str, out: str, flags: list[str]) -> dict:
    subprocess.run(["rm", "-rf", out], check=True)
    _, wall, rss = run_measured([ALEXLABEL, "label", "--input", f"{images_dir}/*.jpg", "--checkpoint", checkpoint,
                                 "--output", out, *flags])
    (row,) = pq.read_table(glob.glob(f"{out}/runs/*/*.parquet"), partitioning=None).to_pylist()
    sizes = {table: sum(os.path.getsize(f) for f in glob.glob(f"{out}/{table}/*/*.parquet"))
             for table in ("labels", "embeddings", "probabilities")}
    return {"pipeline_images_per_s": row["images_per_second"], "process_images_per_s": row["labeled"] / wall,
            "process_s": round(wall, 2), "peak_mib": round(rss), "labeled": row["labeled"], "bytes": sizes}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default="bench-out")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    images_dir = os.path.join(args.workdir, f"images-{args.images}")
    ensure_images(images_dir, args.images)
    checkpoint = projected_model(args.workdir, images_dir)
    out = os.path.join(args.workdir, "embeddings-out")
    runs = {name: [] for name in VARIANTS}
    for i in range(args.rounds):
        for name, flags in VARIANTS.items():
            runs[name].append(label_once(images_dir, checkpoint, out, flags))
            print(f"round {i + 1} {name}: {runs[name][-1]}", flush=True)
    rates = {name: {key: statistics.median(r[key] for r in found) for key in ("pipeline_images_per_s",
                                                                                "process_images_per_s")}
             for name, found in runs.items()}
    ratios = {name: {key: round(statistics.median(a[key] / p[key] for a, p in zip(found, runs["plain"], strict=True)),
                                3) for key in ("pipeline_images_per_s", "process_images_per_s")}
              for name, found in runs.items() if name != "plain"}
    last = runs["both"][-1]
    per_million = {table: round(size / last["labeled"] * 1e6 / 2**20, 1) for table, size in last["bytes"].items()}
    print(f"\n{args.images} images, {args.rounds} rounds in turns, median images/s (pipeline / whole process):")
    for name in VARIANTS:
        ratio = ratios.get(name)
        print(f"  {name:>10}: {rates[name]['pipeline_images_per_s']:7.1f} / {rates[name]['process_images_per_s']:7.1f}"
              + (f"   x plain: {ratio['pipeline_images_per_s']:.3f} / {ratio['process_images_per_s']:.3f}"
                 if ratio else ""))
    print("MiB per million images (zstd): " + ", ".join(f"{t} {mib}" for t, mib in per_million.items()))
    cost = 1 - ratios["embeddings"]["process_images_per_s"]
    print(f"--embeddings costs {cost:.1%} of the whole process's images/s (target: at most 10%)")
    with open(os.path.join(args.workdir, "bench_embeddings.json"), "w") as f:
        json.dump({"images": args.images, "rounds": args.rounds, "rates": rates, "ratios": ratios,
                   "mib_per_million": per_million, "runs": runs}, f, indent=2)


if __name__ == "__main__":
    main()
