"""`make bench`: end-to-end labeling speed, ours beside the references, measured in one run.

On the same ImageNet-sized JPEGs (about 500x375) and the same 1000-class torchvision-layout AlexNet at
224 px, it measures images/s of
  (a) `alexlabel label` on the DirectRunner (the pipeline's own wall time, from the runs table),
  (b) reference_beam_example.py: a pipeline written the way Beam's pytorch_image_classification example is,
  (c) reference_torch.py: a plain PyTorch DataLoader loop (2 workers, bf16 autocast, channels_last),
  (d) the model forward alone on in-memory tensors (bf16 autocast, channels_last, batch 64, all cores),
and prints a/b, a/c, a/d with each run's peak resident memory. The four take turns for --rounds rounds
(default 3): each images/s figure is the median of its rounds, and each ratio the median of the rounds'
ratios (a and its reference run a minute apart, so the machine's slow drift cancels).
Each round also times (e) the whole `alexlabel label` process on 10 of the images: its fixed start-up is that
time less what the 10 images cost at the marginal rate, (a)'s whole process less (e)'s over the images between
them; the lowest of the rounds is the figure (other work on the machine only ever adds to it).
--startup-only runs (a) and (e) alone (`make bench-startup`).
--scaling also labels 1,000, 10,000 and 20,000 images to show time grows linearly and memory stays flat
in the input size.

Usage: python benchmarks/bench_label.py [--images 2000] [--rounds 3] [--workdir bench-out] [--scaling]
                                        [--startup-only]
"""
import argparse
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import time

import pyarrow.parquet as pq
import torch
import torchvision
from make_images import ensure_images

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = sys.executable
ALEXLABEL = os.path.join(os.path.dirname(sys.executable), "alexlabel")
STARTUP_IMAGES = 10  # (e)'s run


def make_model(workdir: str) -> tuple[str, str]:
    """A seeded 1000-class torchvision AlexNet: the plain state dict, wrapped by `alexlabel import-weights`."""
    state_dict, classes, checkpoint = (os.path.join(workdir, f) for f in ("alexnet_sd.pt", "classes.txt",
                                                                         "alexnet.pt"))
    if not os.path.exists(checkpoint):
        torch.manual_seed(0)
        torch.save(torchvision.models.alexnet(num_classes=1000).state_dict(), state_dict)
        with open(classes, "w") as f:
            f.write("".join(f"class_{i:04d}\n" for i in range(1000)))
        subprocess.run([ALEXLABEL, "import-weights", state_dict, "--arch", "alexnet", "--classes", classes,
                        "--output", checkpoint], check=True)
    return state_dict, checkpoint


def run_measured(cmd: list[str]) -> tuple[str, float, float]:
    """Run a command; returns its output, wall seconds and peak RSS (MiB) of its largest process.

    GNU time measures the peak: os.wait4 from this process would report our own high-water mark
    (Linux carries a forking parent's into the child's ru_maxrss).
    """
    t0 = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-f", "PEAK_KB=%M", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    out, _, peak = (result.stdout + result.stderr).rpartition("PEAK_KB=")
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out[-3000:]}")
    return out, wall, int(peak.split()[0]) / 1024


def ours(images_dir: str, checkpoint: str, out: str, extra: list[str]) -> dict:
    subprocess.run(["rm", "-rf", out], check=True)
    text, wall, rss = run_measured([ALEXLABEL, "label", "--input", f"{images_dir}/*.jpg", "--checkpoint",
                                    checkpoint, "--output", out, *extra])
    (row,) = pq.read_table(glob.glob(f"{out}/runs/*/*.parquet"), partitioning=None).to_pylist()
    return {"images_per_s": row["images_per_second"], "wall_s": row["wall_seconds"], "process_s": wall,
            "peak_mib": rss, "labeled": row["labeled"]}


def reference_beam(images: list[str], state_dict: str, workdir: str) -> dict:
    paths = os.path.join(workdir, "paths.txt")
    with open(paths, "w") as f:
        f.write("\n".join(images) + "\n")
    text, wall, rss = run_measured([PYTHON, os.path.join(HERE, "reference_beam_example.py"), paths, state_dict,
                                    os.path.join(workdir, "peer-out")])
    return {"images_per_s": float(re.search(r"= ([\d.]+) images/s", text).group(1)), "peak_mib": rss}


def reference_torch(images_dir: str, state_dict: str) -> dict:
    text, wall, rss = run_measured([PYTHON, os.path.join(HERE, "reference_torch.py"), images_dir, state_dict,
                                    "2", "64", "bf16"])
    return {"images_per_s": float(re.search(r"= ([\d.]+) images/s", text).group(1)), "peak_mib": rss}


@torch.inference_mode()
def forward_only(seconds: float = 8.0) -> dict:
    model = torchvision.models.alexnet(num_classes=1000).eval().to(memory_format=torch.channels_last)
    x = torch.randn(64, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            model(x).float().softmax(1).topk(5)
            n += 64
    return {"images_per_s": n / (time.perf_counter() - t0), "threads": torch.get_num_threads()}


def startup_by_round(rounds: dict[str, list[dict]], images: int) -> list[float]:
    """Per round: (e)'s whole process less its images at the marginal rate, which (a), run on more of the same
    images in the same round, gives as (a's process time - e's) / (the images between them)."""
    return [small["process_s"] - STARTUP_IMAGES * (big["process_s"] - small["process_s"]) / (images - STARTUP_IMAGES)
            for big, small in zip(rounds["a_ours"], rounds["e_startup"], strict=True)]


def take_turns(runs: dict, rounds: int) -> dict[str, list[dict]]:
    """Each measure once per round, in turns: this shared machine's speed drifts by 20% within minutes, and
    a ratio of two runs a minute apart sees little of it."""
    results = {name: [] for name in runs}
    for i in range(rounds):
        for name, measure in runs.items():
            results[name].append(measure())
            print(f"round {i + 1}", name, results[name][-1], flush=True)
    return results


def summarize(runs: list[dict]) -> dict:
    """The median images/s, the range, the highest peak memory, and every run as measured."""
    speeds = sorted(run["images_per_s"] for run in runs)
    summary = {"images_per_s": statistics.median(speeds), "range": [speeds[0], speeds[-1]], "runs": runs}
    peaks = [run["peak_mib"] for run in runs if "peak_mib" in run]
    return summary | ({"peak_mib": max(peaks)} if peaks else {})


def ratios_by_round(rounds: dict[str, list[dict]]) -> dict[str, list[float]]:
    pairs = (("a/b", "b_beam_example"), ("a/c", "c_torch_loop"), ("a/d", "d_forward_only"))
    return {name: [ours_run["images_per_s"] / ref["images_per_s"]
                   for ours_run, ref in zip(rounds["a_ours"], rounds[reference], strict=True)]
            for name, reference in pairs}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--workdir", default="bench-out")
    ap.add_argument("--rounds", type=int, default=3, help="times each of (a)-(d) runs, in turns (default 3)")
    ap.add_argument("--scaling", type=int, nargs="*", metavar="N",
                    help="also label N images for each N given (default 1000 10000 20000): time should grow "
                         "linearly, memory stay flat")
    ap.add_argument("--startup-only", action="store_true", help="measure only (a) and (e), for the start-up")
    ap.add_argument("label_args", nargs="*", help="extra `alexlabel label` arguments for (a) and (e)")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if args.images <= STARTUP_IMAGES:
        ap.error(f"--images must be more than the start-up run's {STARTUP_IMAGES}")
    os.makedirs(args.workdir, exist_ok=True)
    images_dir = os.path.join(args.workdir, f"images-{args.images}")
    images = ensure_images(images_dir, args.images)
    startup_dir = os.path.join(args.workdir, f"images-{STARTUP_IMAGES}")
    ensure_images(startup_dir, STARTUP_IMAGES)
    state_dict, checkpoint = make_model(args.workdir)

    references = {} if args.startup_only else {
        "b_beam_example": lambda: reference_beam(images, state_dict, args.workdir),
        "c_torch_loop": lambda: reference_torch(images_dir, state_dict),
        "d_forward_only": forward_only}
    rounds = take_turns({
        "a_ours": lambda: ours(images_dir, checkpoint, os.path.join(args.workdir, "ours-out"), args.label_args),
        **references,
        "e_startup": lambda: ours(startup_dir, checkpoint, os.path.join(args.workdir, "startup-out"),
                                  args.label_args)}, args.rounds)
    results = {"images": len(images), "cores": os.cpu_count(), "rounds": args.rounds}
    results.update({name: summarize(runs) for name, runs in rounds.items()})
    startups = startup_by_round(rounds, len(images))
    results["startup_s"] = {"lowest": round(min(startups), 2), "by_round": [round(s, 2) for s in startups]}
    if references:
        by_round = ratios_by_round(rounds)
        results["ratios"] = {name: round(statistics.median(values), 2) for name, values in by_round.items()}
        results["ratios_by_round"] = {name: [round(v, 2) for v in values] for name, values in by_round.items()}
    if args.scaling is not None:
        results["scaling"] = {}
        for n in args.scaling or (1000, 10000, 20000):
            directory = os.path.join(args.workdir, f"images-{n}")
            ensure_images(directory, n)
            results["scaling"][n] = ours(directory, checkpoint, os.path.join(args.workdir, f"scale-{n}"),
                                         args.label_args)
            print("scaling", n, results["scaling"][n], flush=True)
    print(json.dumps(results, indent=2))
    targets = {"a/b": 4.0, "a/c": 1.2, "a/d": 0.75}
    for name, ratio in results.get("ratios", {}).items():
        print(f"{name} = {ratio:5.2f}  (target >= {targets[name]}) {'ok' if ratio >= targets[name] else 'MISSED'}")
    lowest = results["startup_s"]["lowest"]
    print(f"start-up = {lowest:5.2f} s  (target <= 3) {'ok' if lowest <= 3 else 'MISSED'}")
    name = "bench_startup.json" if args.startup_only else "bench_label.json"
    with open(os.path.join(args.workdir, name), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
