"""int8 end to end: the real labeling job with bench_int8.py's int8 model beside today's bf16 one.

`alexlabel label`'s job runs in this process (DirectRunner, one worker per core, as the command runs it) on 500 and
2,500 ImageNet-sized JPEGs with the 1000-class torchvision-layout AlexNet (bench_label.py's), once with the model
as the labeling path loads it (bf16) and once with the model handler handed the int8 network instead (oneDNN's
int8 ops, calibrated on random pixels: speed does not depend on the ranges). The two take turns for --rounds
rounds; each flow's rate is the marginal one between the two sizes (its fixed costs cancel), the median of the
rounds, and the ratio the median of the rounds' ratios. This measures whether `--precision int8` would pay end to
end, where decoding shares the cores; the flag itself is not shipped (BENCHMARKS.md).

Usage: python benchmarks/bench_int8_job.py [--images 500 2500] [--rounds 3] [--workdir bench-out]
"""
import argparse
import json
import os
import shutil
import statistics
import time
from dataclasses import replace

import torch
from bench_int8 import build, random_batches, speed_module
from bench_label import make_model
from make_images import ensure_images

from beam_pipeline import launch, model_handler
from beam_pipeline.options import LabelOptions


def int8_loader(checkpoint: str):
    """load_classifier's stand-in: the checkpoint's manifest, with the int8 network taking uint8 batches."""
    real = model_handler.load_classifier
    source, pre = speed_module(checkpoint)
    network = build("int8", source, random_batches(200, 64, pre.crop, seed=1))

    def load(*args, **kwargs):
        return replace(real(*args, **kwargs), module=network, dtype=torch.uint8)
    return load


def job_seconds(images_dir: str, checkpoint: str, out: str) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    row = launch.run(LabelOptions(inputs=[f"{images_dir}/*.jpg"], checkpoint=checkpoint, output=out))
    assert row["labeled"] == row["matched"], row
    return time.perf_counter() - t0


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
    loaders = {"bf16": model_handler.load_classifier, "int8": int8_loader(checkpoint)}
    out = os.path.join(args.workdir, "int8-job-out")
    rates = {flow: [] for flow in loaders}
    for i in range(args.rounds + 1):  # round 0 warms the files and the kernels, untimed
        for flow, loader in loaders.items():
            model_handler.load_classifier = loader
            small, large = (job_seconds(d, checkpoint, out) for d in dirs)
            if i:
                rates[flow].append((args.images[1] - args.images[0]) / (large - small))
                print(f"round {i} {flow}: {rates[flow][-1]:.1f} images/s (marginal)", flush=True)
    ratios = [a / b for a, b in zip(rates["int8"], rates["bf16"], strict=True)]
    report = {flow: {"median": round(statistics.median(r), 1), "range": [round(min(r), 1), round(max(r), 1)]}
              for flow, r in rates.items()}
    report["int8/bf16"] = {"median": round(statistics.median(ratios), 2),
                           "range": [round(min(ratios), 2), round(max(ratios), 2)]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
