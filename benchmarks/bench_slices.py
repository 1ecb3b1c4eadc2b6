"""`make bench-slices`: what committing in slices (`label --commit-every N`) costs a local run.

The whole `alexlabel label` process on the same ImageNet-sized JPEGs with the 1000-class torchvision-layout
AlexNet, in one run and in slices of --slice images, in turns for --rounds rounds; the ratio of their images/s
is the median of the rounds' ratios. Each slice pays a pipeline start and a checkpoint load: the target is under
5% at slices of two minutes, and --slice defaults to far smaller ones, so the figure is an upper bound.

Usage: python benchmarks/bench_slices.py [--images 2000] [--slice 500] [--rounds 3] [--workdir bench-out]
"""
import argparse
import json
import os
import statistics
import subprocess

from bench_label import ALEXLABEL, make_model, run_measured
from make_images import ensure_images


def label_once(images_dir: str, checkpoint: str, out: str, flags: list[str]) -> dict:
    subprocess.run(["rm", "-rf", out], check=True)
    text, wall, rss = run_measured([ALEXLABEL, "label", "--input", f"{images_dir}/*.jpg", "--checkpoint", checkpoint,
                                    "--output", out, *flags])
    return {"process_s": round(wall, 2), "peak_mib": round(rss), "summary": text.strip().splitlines()[-1]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--slice", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default="bench-out")
    args = ap.parse_args()
    images_dir = os.path.join(args.workdir, f"images-{args.images}")
    ensure_images(images_dir, args.images)
    _, checkpoint = make_model(args.workdir)
    out = os.path.join(args.workdir, "slices-out")
    variants = {"one run": ["--commit-every", str(args.images)], "slices": ["--commit-every", str(args.slice)]}
    runs = {name: [] for name in variants}
    for i in range(args.rounds):
        for name, flags in variants.items():
            runs[name].append(label_once(images_dir, checkpoint, out, flags))
            print(f"round {i + 1} {name}: {runs[name][-1]}", flush=True)
    ratio = statistics.median(one["process_s"] / sliced["process_s"]
                              for one, sliced in zip(runs["one run"], runs["slices"], strict=True))
    slices = -(-args.images // args.slice)
    one, sliced = (statistics.median(r["process_s"] for r in runs[name]) for name in variants)
    print(f"\n{args.images} images, {args.rounds} rounds in turns: one run {one:.1f} s, {slices} slices of "
          f"{args.slice} {sliced:.1f} s (medians); images/s in slices / in one run = {ratio:.3f}, so slicing costs "
          f"{1 - ratio:.1%} ({(1 - ratio) / max(slices - 1, 1):.2%} a slice boundary)")
    with open(os.path.join(args.workdir, "bench_slices.json"), "w") as f:
        json.dump({"images": args.images, "slice": args.slice, "rounds": args.rounds, "ratio": ratio, "runs": runs},
                  f, indent=2)


if __name__ == "__main__":
    main()
