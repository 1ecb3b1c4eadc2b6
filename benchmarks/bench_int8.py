"""int8 vs bf16 on this CPU: forward speed, one-time cost, memory, and top-1 agreement with fp32.

What each flow is (all start from the labeling model's fp32 module: load_model, then fold_normalization):

- `bf16`: what load_classifier builds today (lean_for_inference, bf16 weights, channels_last).
- `int8`: what `label --precision int8` labels with (beam_pipeline/int8.py): oneDNN's own int8 kernels
  (onednn::qconv_pointwise / qlinear_pointwise, the ops that PT2E + inductor lower to), called eagerly, weights
  int8 per output channel, activations uint8 per tensor; its ranges fitted as trainer/int8_ranges.py fits them
  (HistogramObserver on the fp32 model's activations). For speed they are fitted on random pixels; for agreement
  the checkpoint's own ranges are used, as labeling uses them. No compile: nothing to cache.
- `fx_int8`: torch.ao's FX graph mode static quantization (prepare_fx, convert_fx, qconfig 'onednn', the
  quantized engine 'onednn'): quantized::conv2d / linear kernels on quantized tensors; the first convolution
  (RawPixelConv, which FX cannot trace) stays fp32.
- `dyn_fc`: bf16 convolutions as in `bf16`, then the fully connected layers dynamically quantized to int8
  (torch.ao quantize_dynamic: weights int8, activations quantized per batch), where most of the weights are.
- PT2E (torch.export, prepare_pt2e with X86InductorQuantizer, convert_pt2e, torch.compile): torch 2.14 has no
  torch.ao.quantization.quantize_pt2e any more, it lives in torchao, which is not installed here: the script
  says whether it can import it, and skips it. With --inductor it tries the nearest thing torch itself has:
  FX's decomposed reference model (the same quantize/dequantize graph convert_pt2e gives) under torch.compile
  with freezing, in two fresh processes sharing one inductor cache (cold, then warm start). In torch 2.14
  inductor keeps the lowerings of the onednn int8 ops but not the passes that form them from that graph (the
  weight prepacking moved to torchao too), so this runs fp32 convolutions: it measures the compile cost only.

Speed (`--speed-checkpoint`, default: torchvision's 1000-class AlexNet layout, seeded weights, built in memory as
`import-weights` of torchvision.models.alexnet after torch.manual_seed(0) would give; 224 x 224 crops): batches
of --batch (64) uint8 pixels, channels_last, as the pipeline stacks them, each flow's cast included; torch's
default threads (--threads N to change). Each flow is warmed up, then the flows take one batch each in turn
until every flow has had --seconds (5) of timing: on a shared machine the others' load then falls on every flow
alike. Reported per batch: median, 90th percentile (the machine at its quietest), mean, worst. Calibration for
speed uses random pixels (speed does not depend on the ranges). Note: with 2 threads on 2 cores, whenever other
work holds a core each parallel region waits for the thread that is not running; int8's ops are short, so it
loses the most (to about bf16's speed under heavy load), while with --threads 1 it keeps its lead.

One-time cost: seconds to build each flow from the loaded fp32 module (int8: calibration apart from weight
quantization and packing) and of its first forward (oneDNN creates its kernels there). Memory: each flow built
and run for three batches in a child process of its own: peak RSS (VmHWM) and RSS after the run.

Agreement (--checkpoint, --data: the demo's): top-1 of each flow vs fp32 (load_classifier's fp32 module) on
every image under --data that the labeling path decodes. int8 is `label --precision int8`'s network with the ranges
the checkpoint carries (fitted by the trainer on training images); fx_int8 calibrates on --calibration (200) images
drawn evenly from DATA/train. Reported over the images outside DATA/train (the target, >= 99%) and over all of
them. bf16's agreement is measured beside it.

End to end: labeling also decodes every JPEG on the same cores (about 2.3-3 ms of one core per image), so a
forward of F images/s (the median) with decode of D = cores / decode-seconds images/s bounds labeling at
1 / (1/F + 1/D).

Usage: python benchmarks/bench_int8.py --checkpoint alexlabel-demo/model/model.pt --data alexlabel-demo/data
       [--seconds 5] [--flows bf16,int8,fx_int8,dyn_fc] [--inductor] [--no-memory] [--no-agreement]
Prints one JSON document, then a short table of each flow against bf16.
"""
import argparse
import copy
import ctypes
import ctypes.util
import gc
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable

import torch
from torch import nn

from beam_pipeline.int8 import build_int8
from beam_pipeline.lean_layers import lean_for_inference
from beam_pipeline.model_handler import load_classifier
from beam_pipeline.raw_pixels import RawPixelConv, fold_normalization
from common.storage import read_bytes
from schemas.transform import Preprocess, eval_tensor_from_bytes
from trainer.int8_ranges import activation_ranges
from trainer.models import AlexNet, load_model

warnings.filterwarnings("ignore", message=".*(deprecated|torchao|TypedStorage|quantize).*")
FLOWS = ("bf16", "int8", "fx_int8", "dyn_fc")
SPEED_PRE = Preprocess(resize=256, crop=224)


# ---------------------------------------------------------------------------------------------------------------
# The other flows.

class _DynamicFC(nn.Module):
    """bf16 convolutions (the labeling model's), then the fully connected layers dynamically quantized to int8."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.features = nn.Sequential(module.features, module.avgpool).to(torch.bfloat16,
                                                                          memory_format=torch.channels_last)
        self.classifier = torch.ao.quantization.quantize_dynamic(module.classifier.float(), {nn.Linear},
                                                                 dtype=torch.qint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1).float())


def build_fx_int8(module: nn.Module, calibration: Iterable[torch.Tensor]) -> nn.Module:
    """torch.ao FX static quantization, qconfig 'onednn'; RawPixelConv (not traceable) stays fp32."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    calibration = [x.float().contiguous(memory_format=torch.channels_last) for x in calibration]
    mapping = get_default_qconfig_mapping("onednn").set_module_name("features.0", None)
    prepared = prepare_fx(module.eval(), mapping, example_inputs=(calibration[0],),
                          prepare_custom_config={"non_traceable_module_class": [RawPixelConv]})
    with torch.inference_mode():
        for x in calibration:
            prepared(x)
    return convert_fx(prepared).eval()


def build_int8_from(module: nn.Module, calibration: Iterable[torch.Tensor]) -> nn.Module:
    """The shipped int8 network (beam_pipeline/int8.py), its ranges fitted as the trainer fits them, here on
    `calibration`'s raw pixels through the folded module (the same activations as normalized pixels through the
    unfolded one)."""
    ranges, _ = activation_ranges(module, (x.float() for x in calibration))
    return build_int8(module, ranges, module.features[0].crop)


def build(flow: str, module: nn.Module, calibration: list[torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """`flow`'s forward from the fp32 labeling module (which it may change): uint8 batch in, logits out. The cast
    each flow needs is part of it, as it is of the pipeline's batch (to_batch(images, device, model.dtype))."""
    if flow == "bf16":
        model = lean_for_inference(module).to(torch.bfloat16, memory_format=torch.channels_last).eval()
        return lambda x: model(x.to(torch.bfloat16))
    if flow == "fp32":
        model = lean_for_inference(module).to(memory_format=torch.channels_last).eval()
        return lambda x: model(x.float())
    if flow == "int8":
        return build_int8_from(module, calibration)
    if flow == "fx_int8":
        model = build_fx_int8(module, calibration)
        return lambda x: model(x.float())
    if flow == "dyn_fc":
        model = _DynamicFC(lean_for_inference(module)).eval()
        return lambda x: model(x.to(torch.bfloat16))
    raise ValueError(f"unknown flow {flow!r}")


# ---------------------------------------------------------------------------------------------------------------
# Measuring.

def speed_module(checkpoint: str | None) -> tuple[nn.Module, Preprocess]:
    if checkpoint:
        module, manifest, *_ = load_model(checkpoint)
        return fold_normalization(module, manifest.preprocess), manifest.preprocess
    torch.manual_seed(0)  # torchvision.models.alexnet(num_classes=1000)'s weights from this seed, as import-weights
    return fold_normalization(AlexNet(num_classes=1000).eval(), SPEED_PRE), SPEED_PRE


def random_batches(count: int, batch: int, crop: int, seed: int) -> list[torch.Tensor]:
    """uint8 NCHW channels_last batches of random pixels, `count` images in all."""
    g = torch.Generator().manual_seed(seed)
    sizes = [min(batch, count - i) for i in range(0, count, batch)]
    return [torch.randint(0, 256, (n, crop, crop, 3), generator=g, dtype=torch.uint8).permute(0, 3, 1, 2)
            for n in sizes]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    """This process's peak RSS (VmHWM: ru_maxrss would carry over a parent's peak through fork and exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def one_time(flows: list[str], source: nn.Module, calibration: list[torch.Tensor], x: torch.Tensor
             ) -> tuple[dict, dict]:
    """Build every flow from a copy of `source`: seconds to build (int8: calibration apart), of the first forward."""
    built, costs = {}, {}
    for flow in flows:
        module = copy.deepcopy(source)
        cost, t0 = {}, time.perf_counter()
        if flow == "int8":
            ranges, _ = activation_ranges(module, (x.float() for x in calibration))
            cost["calibrate_s"] = round(time.perf_counter() - t0, 3)
            t0 = time.perf_counter()
            forward = build_int8(module, ranges, module.features[0].crop)
        else:
            forward = build(flow, module, calibration)
        t1 = time.perf_counter()
        with torch.inference_mode():
            forward(x)
        costs[flow] = {**cost, "build_s": round(t1 - t0, 3), "first_forward_s": round(time.perf_counter() - t1, 3)}
        built[flow] = forward
    return built, costs


def timed(built: dict, x: torch.Tensor, seconds: float) -> dict:
    """Per-batch images/s of each forward: two warm-up batches each, then one batch of each flow in turn until
    every flow has had `seconds`. On a shared machine the others' load slows some batches of every flow alike;
    the median and the 90th percentile batch say more than the mean."""
    rates: dict[str, list[float]] = {flow: [] for flow in built}
    spent = dict.fromkeys(built, 0.0)
    with torch.inference_mode():
        for forward in built.values():
            for _ in range(2):
                forward(x)
        while min(spent.values()) < seconds:
            for flow, forward in built.items():
                t0 = time.perf_counter()
                forward(x)
                dt = time.perf_counter() - t0
                spent[flow] += dt
                rates[flow].append(x.shape[0] / dt)
    result = {}
    for flow, r in rates.items():
        r = sorted(r)
        result[flow] = {"images_per_s_median": round(r[len(r) // 2], 1),
                        "images_per_s_p90": round(r[9 * len(r) // 10], 1),
                        "images_per_s_mean": round(len(r) * x.shape[0] / spent[flow], 1),
                        "images_per_s_worst": round(r[0], 1), "batches": len(r)}
    return result


def probe(flow: str, args) -> dict:
    """In a child process: build `flow` from the speed model, run three batches. RSS before the model, with the
    fp32 model loaded, once the flow is built and the fp32 model freed (free heap pages handed back), after
    the run; the peak over it all, calibration included."""
    base = rss_mb()
    source, pre = speed_module(args.speed_checkpoint)
    calibration = random_batches(args.calibration, args.batch, pre.crop, seed=1)
    x = random_batches(args.batch, args.batch, pre.crop, seed=2)[0]
    loaded = rss_mb()
    forward = build(flow, source, calibration)
    del source, calibration
    gc.collect()
    ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    built = rss_mb()
    with torch.inference_mode():
        for _ in range(3):
            forward(x)
    return {"rss_before_model_mb": round(base), "rss_fp32_loaded_mb": round(loaded), "rss_built_mb": round(built),
            "model_mb": round(built - base), "rss_after_run_mb": round(rss_mb()), "peak_rss_mb": round(peak_mb())}


def child(argv: list[str], env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), *argv], capture_output=True, text=True,
                         env=env, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        return {"error": (out.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------------------------
# Agreement with fp32 on a trained checkpoint.

def decoded(data: str, pre: Preprocess) -> list[tuple[str, torch.Tensor]]:
    """Every image under `data` the labeling path decodes, as it decodes it."""
    images = []
    for path in sorted(glob.glob(f"{data}/**/*.jpg", recursive=True)):
        try:
            images.append((path, eval_tensor_from_bytes(read_bytes(path), pre)[0]))
        except OSError:
            continue  # the sample set's deliberately broken files
    return images


def calibration_set(images: list[tuple[str, torch.Tensor]], data: str, count: int) -> list[int]:
    """Indices of `count` images drawn evenly from the training folder (every class alike when sorted by class)."""
    train = [i for i, (path, _) in enumerate(images) if path.startswith(os.path.join(data, "train") + os.sep)]
    pool = train or list(range(len(images)))
    step = max(1, len(pool) // count)
    return pool[::step][:count]


def stack(images: list[torch.Tensor]) -> torch.Tensor:
    """CHW uint8 images -> the uint8 NCHW channels_last batch the labeling path casts to the model's dtype."""
    return torch.stack(images).contiguous(memory_format=torch.channels_last)


def top1(forward: Callable[[torch.Tensor], torch.Tensor], pixels: list[torch.Tensor], batch: int) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([forward(stack(pixels[i:i + batch])).float().argmax(dim=1)
                          for i in range(0, len(pixels), batch)])


def agreement(flows: list[str], args) -> dict:
    """Top-1 of each flow against fp32's. int8 is the labeling path's own (load_classifier, the ranges the trainer
    fitted on training images); other flows that calibrate do so on --calibration training images. Held out: the
    images outside DATA/train."""
    classifier = load_classifier(args.checkpoint, "cpu", "fp32")
    pre = classifier.manifest.preprocess
    images = decoded(args.data, pre)
    pixels = [image for _, image in images]
    chosen = calibration_set(images, args.data, args.calibration)
    calibration = [stack([pixels[i] for i in chosen[j:j + args.batch]]) for j in range(0, len(chosen), args.batch)]
    fp32 = classifier.module
    reference = top1(lambda x: fp32(x.to(classifier.dtype)), pixels, args.batch)
    train = os.path.join(args.data, "train") + os.sep
    held_out = torch.tensor([not path.startswith(train) for path, _ in images])
    result = {"checkpoint": args.checkpoint, "arch": classifier.manifest.arch, "crop": pre.crop,
              "images": len(pixels), "calibration_images": len(chosen), "held_out_images": int(held_out.sum())}
    for flow in flows:
        if flow == "int8":
            forward = load_classifier(args.checkpoint, "cpu", "int8").module
        else:
            module, manifest, *_ = load_model(args.checkpoint)
            forward = build(flow, fold_normalization(module, manifest.preprocess), calibration)
        same = top1(forward, pixels, args.batch) == reference
        result[flow] = {"top1_agreement_held_out": round(same[held_out].float().mean().item(), 5),
                        "top1_agreement_all": round(same.float().mean().item(), 5),
                        "disagreements_held_out": int((~same[held_out]).sum())}
    return result


# ---------------------------------------------------------------------------------------------------------------
# PT2E's availability, and its nearest stand-in in torch itself under inductor (--inductor).

def pt2e_status() -> str:
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e  # noqa: F401
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer  # noqa: F401
    except ImportError as e:
        return f"unavailable: {e} (torch {torch.__version__} has no torch.ao.quantization.quantize_pt2e)"
    return "torchao importable: this script does not run it yet"


def inductor_child(args) -> dict:
    """FX's decomposed reference model (the q/dq graph convert_pt2e would give) under torch.compile, freezing on."""
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import _convert_to_reference_decomposed_fx, prepare_fx

    inductor_config.freezing = True
    source, pre = speed_module(args.speed_checkpoint)
    calibration = [x.float().contiguous(memory_format=torch.channels_last)
                   for x in random_batches(args.calibration, args.batch, pre.crop, seed=1)]
    x = random_batches(args.batch, args.batch, pre.crop, seed=2)[0]
    t0 = time.perf_counter()
    mapping = get_default_qconfig_mapping("onednn").set_module_name("features.0", None)
    prepared = prepare_fx(source, mapping, example_inputs=(calibration[0],),
                          prepare_custom_config={"non_traceable_module_class": [RawPixelConv]})
    with torch.inference_mode():
        for batch in calibration:
            prepared(batch)
    reference = _convert_to_reference_decomposed_fx(prepared)
    t1 = time.perf_counter()
    compiled = torch.compile(reference)
    with torch.no_grad():
        compiled(x.float())
        t2 = time.perf_counter()
        n, t3 = 0, time.perf_counter()
        while time.perf_counter() - t3 < min(args.seconds, 3):
            compiled(x.float())
            n += 1
        rate = n * x.shape[0] / (time.perf_counter() - t3)
    found = {k: v for k, v in counters["inductor"].items() if k.startswith(("qconv", "qlinear", "qmaxpool"))}
    return {"calibrate_convert_s": round(t1 - t0, 2), "compile_first_forward_s": round(t2 - t1, 2),
            "images_per_s": round(rate, 1), "int8_patterns_found": found, "peak_rss_mb": round(peak_mb())}


def inductor(args) -> dict:
    """Cold then warm: two fresh processes, one fresh inductor cache between them."""
    with tempfile.TemporaryDirectory(prefix="bench-int8-inductor-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        argv = ["--inductor-child", "--batch", str(args.batch), "--calibration", str(args.calibration),
                "--seconds", str(args.seconds)] + (["--speed-checkpoint", args.speed_checkpoint]
                                                   if args.speed_checkpoint else [])
        return {"cold": child(argv, env), "warm": child(argv, env)}


# ---------------------------------------------------------------------------------------------------------------

def bound(forward: float, decode_ms: float, cores: int) -> float:
    """Labeling's images/s when the forward (images/s on all cores) and the decode (ms of one core per image)
    take turns on the same cores."""
    decode = cores / (decode_ms / 1000)
    return 1 / (1 / forward + 1 / decode)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="alexlabel-demo/model/model.pt", help="trained checkpoint: agreement")
    ap.add_argument("--data", default="alexlabel-demo/data", help="its images (DATA/train: calibration)")
    ap.add_argument("--speed-checkpoint", default=None,
                    help="checkpoint to time (default: the seeded 1000-class torchvision AlexNet, 224 px)")
    ap.add_argument("--flows", default=",".join(FLOWS), help=f"comma-separated, of {', '.join(FLOWS)}, fp32")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch threads for the timing (default: torch's own)")
    ap.add_argument("--seconds", type=float, default=5.0, help="timing per flow")
    ap.add_argument("--calibration", type=int, default=200, help="calibration images")
    ap.add_argument("--decode-ms", type=float, nargs="+", default=[2.3, 3.0],
                    help="JPEG decode, ms of one core per image (for the end-to-end bound)")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-flow child processes")
    ap.add_argument("--no-agreement", action="store_true")
    ap.add_argument("--inductor", action="store_true",
                    help="also time FX's q/dq reference model under torch.compile, cold and warm cache (minutes)")
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    ap.add_argument("--inductor-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.backends.quantized.engine = "onednn"
    if args.probe:
        print(json.dumps(probe(args.probe, args)))
        return
    if args.inductor_child:
        print(json.dumps(inductor_child(args)))
        return
    flows = [f for f in args.flows.split(",") if f]
    if "bf16" not in flows:
        flows.insert(0, "bf16")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    report = {"torch": torch.__version__, "threads": threads, "batch": args.batch, "quantized_engine": "onednn",
              "cpu_flags": cpu_flags(), "pt2e": pt2e_status()}
    source, pre = speed_module(args.speed_checkpoint)
    calibration = random_batches(args.calibration, args.batch, pre.crop, seed=1)
    x = random_batches(args.batch, args.batch, pre.crop, seed=2)[0]
    report["speed_model"] = {"checkpoint": args.speed_checkpoint or "seeded torchvision alexnet, 1000 classes",
                             "crop": pre.crop}
    built, report["one_time"] = one_time(flows, source, calibration, x)
    del source
    report["load_average_before"] = load_average()
    report["speed"] = timed(built, x, args.seconds)
    report["load_average_after"] = load_average()
    del built
    gc.collect()
    report["end_to_end_bound"] = {
        flow: {f"decode_{ms}ms": round(bound(r["images_per_s_median"], ms, threads), 1) for ms in args.decode_ms}
        for flow, r in report["speed"].items()}
    if not args.no_memory:
        extra = ["--batch", str(args.batch), "--calibration", str(args.calibration)]
        if args.speed_checkpoint:
            extra += ["--speed-checkpoint", args.speed_checkpoint]
        report["memory"] = {flow: child(["--probe", flow, *extra]) for flow in flows}
    if not args.no_agreement:
        report["agreement"] = agreement(flows, args)
    if args.inductor:
        report["inductor_reference_q_dq"] = inductor(args)
    print(json.dumps(report, indent=2))
    print_table(report, flows)


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f.startswith(("amx", "avx512_vnni", "avx512_bf16", "avx_vnni")))


def print_table(report: dict, flows: list[str]) -> None:
    speed, e2e = report["speed"], report["end_to_end_bound"]
    base = speed["bf16"]
    keys = list(e2e["bf16"])
    print(f"\n{'flow':<8} {'median':>7} {'x bf16':>6} {'p90':>6} {'x bf16':>6} "
          + " ".join(f"{'e2e ' + k[7:]:>11} {'x bf16':>6}" for k in keys)
          + f" {'build s':>7} {'model MB':>8} {'peak MB':>7} {'top-1 vs fp32':>13}")
    for flow in flows:
        median, p90 = speed[flow]["images_per_s_median"], speed[flow]["images_per_s_p90"]
        cells = " ".join(f"{e2e[flow][k]:>11.0f} {e2e[flow][k] / e2e['bf16'][k]:>6.2f}" for k in keys)
        cost = report["one_time"][flow]
        memory = report.get("memory", {}).get(flow, {})
        model, peak = memory.get("model_mb", ""), memory.get("peak_rss_mb", "")
        agree = report.get("agreement", {}).get(flow, {}).get("top1_agreement_held_out")
        agree = f"{agree:.2%}" if agree is not None else ""
        print(f"{flow:<8} {median:>7.0f} {median / base['images_per_s_median']:>6.2f} {p90:>6.0f} "
              f"{p90 / base['images_per_s_p90']:>6.2f} {cells} {cost.get('calibrate_s', 0) + cost['build_s']:>7.1f} "
              f"{model:>8} {peak:>7} {agree:>13}")
    print(f"(images/s of the forward, per batch of {report['batch']}, {report['threads']} threads; e2e: "
          "1 / (1/forward + 1/decode) from the median, decode in ms of one core per image; build: calibration "
          "included; model MB: RSS the built model adds; peak: the whole process, calibration included; top-1 on "
          "held-out images, target >= 99%)")


if __name__ == "__main__":
    main()
