"""int8 end to end: the labeling job with --precision int8 beside --precision auto (bf16 or fp32, this CPU's).

`alexlabel label`'s job runs in this process (DirectRunner, one worker per core, as the command runs it) on 500 and
2,500 ImageNet-sized JPEGs with the 1000-class torchvision-layout AlexNet (bench_label.py's, its int8 ranges fitted
by import-weights). The two precisions take turns for --rounds rounds; each one's rate is the marginal one between
the two sizes (its fixed costs cancel), the median of the rounds, and the ratio the median of the rounds' ratios.

Usage: python benchmarks/bench_int8_job.py [--images 500 2500] [--rounds 3] [--workdir bench-out]
"""
import argparse
import json
import os
import shutil
import statistics
import time

from bench_label import make_model
from make_images import ensure_images

from beam_pipeline import launch
from beam_pipeline.options import LabelOptions


def job_seconds(images_dir: str, checkpoint: str, out: str, precision: str) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    row = launch.run(LabelOptions(inputs=[f"{images_dir}/*.jpg"], checkpoint=checkpoint, output=out,
                                  precision=precision))
    assert row["labeled"] == row["matched"], row
    return time.perf_counter() - t0


FLOWS = ("auto", "int8")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, nargs=2, default=[500, 2500], metavar=("SMALL", "LARGE"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default="bench-out")
    args = ap.parse_args()
    dirs = [os.path.join(args.workdir, f"images-{n}") for n in args.images]
    for directory, n in zip(dirs, args.images, strict=True):
        ensure_images(directory, n)
    _, checkpoint = make_model(args.workdir)
    out = os.path.join(args.workdir, "int8-job-out")
    rates = {flow: [] for flow in FLOWS}
    for i in range(args.rounds + 1):  # round 0 warms the files and the kernels, untimed
        for flow in FLOWS:
            small, large = (job_seconds(d, checkpoint, out, flow) for d in dirs)
            if i:
                rates[flow].append((args.images[1] - args.images[0]) / (large - small))
                print(f"round {i} {flow}: {rates[flow][-1]:.1f} images/s (marginal)", flush=True)
    ratios = [a / b for a, b in zip(rates["int8"], rates["auto"], strict=True)]
    report = {flow: {"median": round(statistics.median(r), 1), "range": [round(min(r), 1), round(max(r), 1)]}
              for flow, r in rates.items()}
    report["int8/auto"] = {"median": round(statistics.median(ratios), 2),
                           "range": [round(min(ratios), 2), round(max(ratios), 2)]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
