"""`make bench`: end-to-end labeling speed, ours beside the references and this machine's bound, in one run.

On the same ImageNet-sized JPEGs (about 500x375) and the same 1000-class torchvision-layout AlexNet at 224 px,
every labeler runs as a whole process, timed from outside as a user waits for it, on --small and --images
images:
  (a) `alexlabel label` on the DirectRunner, and (a8) the same with --precision int8,
  (b) reference_beam_example.py: a pipeline written the way Beam's pytorch_image_classification example is,
  (c) reference_torch.py: a plain PyTorch DataLoader loop (2 workers, bf16 autocast, channels_last).
For each it reports the whole-process rate at --images, and the marginal rate (--images - --small) / (t(--images)
- t(--small)), where every fixed cost (imports, model load, job start) cancels; for (a) also the pipeline's own
rate (its runs row: the job alone, start-up left out). Beside them, this machine's bound:
  (d) our labeling model's forward on in-memory batches (its precision and layout, batch 64, all cores),
  decode: the decode-and-resize rate of the same JPEGs (in memory) on all cores, our path, one process per core,
  (e) the bound 1 / (1/forward + 1/decode): forward and decode done one after the other on the same cores.
Each round also times the whole `alexlabel label` process on 10 images: its fixed start-up is that time less
what 10 images cost at (a)'s marginal rate; the lowest round is the figure (other work only ever adds to it).

Everything takes turns for --rounds rounds (default 5), since this shared machine's speed drifts by 20% within
minutes: each rate is the median of its rounds with their range, each ratio the median of the rounds' ratios.
--startup-only runs (a) and the 10-image run alone (`make bench-startup`). --scaling also labels 1,000, 10,000
and 20,000 images to show time grows linearly and memory stays flat in the input size.

Usage: python benchmarks/bench_label.py [--images 2500] [--small 500] [--rounds 5] [--workdir bench-out]
                                        [--scaling [N ...]] [--startup-only] [-- LABEL_ARGS]
"""
import argparse
import glob
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

import pyarrow.parquet as pq
import torch
import torchvision
from make_images import ensure_images

from common.devices import usable_cores

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = sys.executable
ALEXLABEL = os.path.join(os.path.dirname(sys.executable), "alexlabel")
STARTUP_IMAGES = 10  # (e)'s run


def make_model(workdir: str) -> tuple[str, str]:
    """A seeded 1000-class torchvision AlexNet: the plain state dict, wrapped by `alexlabel import-weights`, its
    projection and int8 ranges fitted on the 500 generated images (for --embeddings and --precision int8)."""
    state_dict, classes, checkpoint = (os.path.join(workdir, f) for f in ("alexnet_sd.pt", "classes.txt",
                                                                         "alexnet.pt"))
    if not os.path.exists(checkpoint):
        torch.manual_seed(0)
        torch.save(torchvision.models.alexnet(num_classes=1000).state_dict(), state_dict)
        with open(classes, "w") as f:
            f.write("".join(f"class_{i:04d}\n" for i in range(1000)))
        fit_on = os.path.join(workdir, "images-500")
        ensure_images(fit_on, 500)
        subprocess.run([ALEXLABEL, "import-weights", state_dict, "--arch", "alexnet", "--classes", classes,
                        "--output", checkpoint, "--fit-on", fit_on], check=True)
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
    _, wall, rss = run_measured([ALEXLABEL, "label", "--input", f"{images_dir}/*.jpg", "--checkpoint",
                                    checkpoint, "--output", out, *extra])
    rows = pq.read_table(glob.glob(f"{out}/runs/*/*.parquet"), partitioning=None).to_pylist()
    (row,) = [r for r in rows if r["job_id"] is None]  # a job in slices: its own row, not theirs
    return {"images_per_s": row["images_per_second"], "wall_s": row["wall_seconds"], "process_s": wall,
            "peak_mib": rss, "labeled": row["labeled"]}


def reference_beam(images: list[str], state_dict: str, workdir: str) -> dict:
    paths = os.path.join(workdir, f"paths-{len(images)}.txt")
    with open(paths, "w") as f:
        f.write("\n".join(images) + "\n")
    _, wall, rss = run_measured([PYTHON, os.path.join(HERE, "reference_beam_example.py"), paths, state_dict,
                                    os.path.join(workdir, "peer-out")])
    return {"process_s": wall, "peak_mib": rss}


def reference_torch(images_dir: str, state_dict: str) -> dict:
    _, wall, rss = run_measured([PYTHON, os.path.join(HERE, "reference_torch.py"), images_dir, state_dict,
                                    "2", "64", "bf16"])
    return {"process_s": wall, "peak_mib": rss}


@torch.inference_mode()
def forward_only(checkpoint: str, seconds: float = 8.0) -> dict:
    """(d): the labeling model as the pipeline loads it (bf16 or fp32 weights, channels_last, the normalization
    folded in), on a batch of 64 already in its layout, then the softmax and top 5 the handler takes."""
    from beam_pipeline.model_handler import load_classifier

    model = load_classifier(checkpoint)
    crop = model.manifest.preprocess.crop
    x = torch.randint(0, 256, (64, 3, crop, crop), dtype=torch.uint8).to(
        model.dtype, memory_format=torch.channels_last)
    model.module(x)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        model.module(x).float().softmax(1).topk(5)
        n += len(x)
    return {"images_per_s": n / (time.perf_counter() - t0), "threads": torch.get_num_threads()}


def _decode_share(args: tuple[list[bytes], dict]) -> int:
    from schemas.transform import Preprocess, eval_tensor_from_bytes

    torch.set_num_threads(1)
    pre = Preprocess.from_dict(args[1])
    for data in args[0]:
        eval_tensor_from_bytes(data, pre)
    return len(args[0])


def decode_only(images: list[str], checkpoint: str, pool, processes: int) -> dict:
    """Decode and resize of the JPEGs, read into memory first, as PrepareImages does it: one process per core."""
    from schemas.checkpoint import load_checkpoint

    pre = load_checkpoint(checkpoint)[1].preprocess.to_dict()
    datas = [open(path, "rb").read() for path in images]
    shares = [(datas[i::processes], pre) for i in range(processes)]
    pool.map(_decode_share, [(share[:5], pre) for share, _ in shares])  # the workers' imports, not timed
    t0 = time.perf_counter()
    n = sum(pool.map(_decode_share, shares))
    return {"images_per_s": n / (time.perf_counter() - t0)}


def rates(small: dict, large: dict, small_n: int, large_n: int) -> dict:
    """A labeler's whole-process rate at large_n and its marginal rate between small_n and large_n."""
    return {"whole": large_n / large["process_s"],
            "marginal": (large_n - small_n) / (large["process_s"] - small["process_s"]),
            "peak_mib": max(small["peak_mib"], large["peak_mib"])}


def one_round(measures: dict, sizes: tuple[int, int]) -> dict:
    """Every measure once, in turns; the labelers at both sizes, one after the other."""
    got = {}
    for name, measure in measures.items():
        if name in LABELERS:
            small, large = measure(sizes[0]), measure(sizes[1])
            got[name] = rates(small, large, *sizes) | (
                {"pipeline": large["images_per_s"]} if name == "a_ours" else {})
        else:
            got[name] = measure()
        print(f"  {name}: {short(got[name])}", flush=True)
    if "d_forward" in got:
        got["e_bound"] = {"images_per_s": 1 / (1 / got["d_forward"]["images_per_s"]
                                               + 1 / got["decode"]["images_per_s"])}
    return got


def short(d: dict) -> dict:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in d.items()}


LABELERS = ("a_ours", "a8_ours_int8", "b_beam_example", "c_torch_loop")
RATIOS = {  # name: (numerator labeler, its rate), (denominator, its rate)
    "whole a/b": (("a_ours", "whole"), ("b_beam_example", "whole")),
    "whole a/c": (("a_ours", "whole"), ("c_torch_loop", "whole")),
    "marginal a/b": (("a_ours", "marginal"), ("b_beam_example", "marginal")),
    "marginal a/c": (("a_ours", "marginal"), ("c_torch_loop", "marginal")),
    "pipeline a/e": (("a_ours", "pipeline"), ("e_bound", "images_per_s")),
    "marginal a/e": (("a_ours", "marginal"), ("e_bound", "images_per_s")),
    "marginal a8/a": (("a8_ours_int8", "marginal"), ("a_ours", "marginal")),
}
TARGETS = {"marginal a/e": 0.95}


def median_range(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "range": [round(min(values), 3), round(max(values), 3)]}


def summarize(rounds: list[dict], startups: list[float]) -> dict:
    """Medians and ranges of every rate and ratio over the rounds, and the lowest start-up."""
    results = {name: {rate: median_range([r[name][rate] for r in rounds]) for rate in rounds[0][name]}
               for name in rounds[0] if name != "e_startup"}
    results["ratios"] = {name: median_range([r[a][ra] / r[b][rb] for r in rounds])
                         for name, ((a, ra), (b, rb)) in RATIOS.items() if a in rounds[0] and b in rounds[0]}
    results["startup_s"] = {"lowest": round(min(startups), 2), "by_round": [round(s, 2) for s in startups]}
    return results


def print_table(results: dict, sizes: tuple[int, int]) -> None:
    print(f"\n{'':24}{'whole @' + str(sizes[1]):>14}{'marginal':>12}{'pipeline':>12}{'peak MiB':>10}")
    for name in LABELERS:
        if name in results:
            r = results[name]
            cells = [f"{r[k]['median']:.1f}" if k in r else "" for k in ("whole", "marginal", "pipeline")]
            print(f"{name:24}{cells[0]:>14}{cells[1]:>12}{cells[2]:>12}{r['peak_mib']['median']:>10.0f}")
    for name in ("d_forward", "decode", "e_bound"):
        if name in results:
            print(f"{name:24}{results[name]['images_per_s']['median']:>14.1f}")
    for name, ratio in results["ratios"].items():
        target = TARGETS.get(name)
        verdict = "" if target is None else f"  (target >= {target}) {'ok' if ratio['median'] >= target else 'MISSED'}"
        print(f"{name:14} = {ratio['median']:.2f}  [{ratio['range'][0]:.2f}-{ratio['range'][1]:.2f}]{verdict}")
    lowest = results["startup_s"]["lowest"]
    print(f"start-up = {lowest:5.2f} s  (target <= 3) {'ok' if lowest <= 3 else 'MISSED'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2500)
    ap.add_argument("--small", type=int, default=500, help="the smaller run of each labeler (default 500)")
    ap.add_argument("--workdir", default="bench-out")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of every measure, in turns (default 5)")
    ap.add_argument("--scaling", type=int, nargs="*", metavar="N",
                    help="also label N images for each N given (default 1000 10000 20000): time should grow "
                         "linearly, memory stay flat")
    ap.add_argument("--startup-only", action="store_true", help="measure only (a) and the 10-image run")
    ap.add_argument("label_args", nargs="*", help="extra `alexlabel label` arguments for (a) and the 10-image run")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if not STARTUP_IMAGES < args.small < args.images:
        ap.error(f"need {STARTUP_IMAGES} < --small < --images")
    os.makedirs(args.workdir, exist_ok=True)
    dirs = {n: os.path.join(args.workdir, f"images-{n}") for n in (STARTUP_IMAGES, args.small, args.images)}
    images = {n: ensure_images(directory, n) for n, directory in dirs.items()}
    state_dict, checkpoint = make_model(args.workdir)
    out = os.path.join(args.workdir, "ours-out")
    measures = {"a_ours": lambda n: ours(dirs[n], checkpoint, out, args.label_args)}
    cores = usable_cores()
    pool = None if args.startup_only else multiprocessing.get_context("spawn").Pool(cores)
    if pool:
        measures |= {"a8_ours_int8": lambda n: ours(dirs[n], checkpoint, out, [*args.label_args, "--precision",
                                                                              "int8"]),
                     "b_beam_example": lambda n: reference_beam(images[n], state_dict, args.workdir),
                     "c_torch_loop": lambda n: reference_torch(dirs[n], state_dict),
                     "d_forward": lambda: forward_only(checkpoint),
                     "decode": lambda: decode_only(images[args.images], checkpoint, pool, cores)}
    measures["e_startup"] = lambda: ours(dirs[STARTUP_IMAGES], checkpoint, out, args.label_args)
    for name in LABELERS:  # untimed: the first run of each reads cold files and compiles bytecode
        if name in measures:
            measures[name](args.small)
    rounds = []
    for i in range(args.rounds):
        print(f"round {i + 1} of {args.rounds}", flush=True)
        rounds.append(one_round(measures, (args.small, args.images)))
    if pool:
        pool.close()
    startups = [r["e_startup"]["process_s"] - STARTUP_IMAGES / r["a_ours"]["marginal"] for r in rounds]
    results = {"images": args.images, "small": args.small, "cores": cores, "rounds": args.rounds,
               **summarize(rounds, startups), "by_round": rounds}
    if args.scaling is not None:
        results["scaling"] = {}
        for n in args.scaling or (1000, 10000, 20000):
            directory = os.path.join(args.workdir, f"images-{n}")
            ensure_images(directory, n)
            results["scaling"][n] = ours(directory, checkpoint, os.path.join(args.workdir, f"scale-{n}"),
                                         args.label_args)
            print("scaling", n, results["scaling"][n], flush=True)
    print(json.dumps({k: v for k, v in results.items() if k != "by_round"}, indent=2))
    print_table(results, (args.small, args.images))
    name = "bench_startup.json" if args.startup_only else "bench_label.json"
    with open(os.path.join(args.workdir, name), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
