"""Nothing lost, nothing half-written: a bad-input corpus, bounded memory, and SIGKILL mid-run."""
import glob
import io
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from beam_pipeline.launch import run
from beam_pipeline.options import LabelOptions

ALEXLABEL = os.path.join(os.path.dirname(sys.executable), "alexlabel")
DECODE_BUDGET_MIB = 512  # on top of what merely importing the stack costs (the CUDA torch build: ~1.2 GiB)


def peak_rss_mib(cmd: list[str]) -> float:
    """Peak resident memory of a command's largest process, as GNU time reports it.

    Not os.wait4 from here: Linux carries a forking parent's high-water mark (this test process
    holds torch) into the child's ru_maxrss, so it would report our size, not the command's.
    """
    result = subprocess.run(["/usr/bin/time", "-f", "PEAK_KB=%M", *cmd], capture_output=True, text=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return int(result.stderr.rsplit("PEAK_KB=", 1)[1].split()[0]) / 1024


def save(path, img: Image.Image, fmt: str, **kw) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, fmt, **kw)


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    small = np.random.default_rng(seed).integers(0, 256, (max(2, h // 50), max(2, w // 50), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BILINEAR)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[str, set[str], dict[str, str]]:
    """(root, files expected in labels, {file expected in errors: words its message must contain})."""
    root = str(tmp_path_factory.mktemp("corpus"))
    good = photo(320, 240)
    buf = io.BytesIO()
    good.save(buf, "JPEG")
    jpeg = buf.getvalue()
    raw = {"truncated.jpg": jpeg[: len(jpeg) // 3], "empty.jpg": b"", "random.jpg": os.urandom(5000),
           "page.jpg": b"<html><body>404</body></html>", "header_only.jpg": jpeg[:20]}
    for name, data in raw.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    save(f"{root}/bomb.png", Image.new("1", (20_000, 20_000)), "PNG")  # 400 megapixels, tens of KB
    save(f"{root}/cmyk.jpg", good.convert("CMYK"), "JPEG")
    save(f"{root}/gray16.png", Image.fromarray(np.full((60, 80), 40000, np.uint16)), "PNG")
    save(f"{root}/palette.png", good.convert("P"), "PNG")
    save(f"{root}/alpha.png", good.convert("RGBA"), "PNG")
    second_frame = photo(320, 240, 1).convert("P")
    save(f"{root}/animated.gif", good.convert("P"), "GIF", save_all=True, append_images=[second_frame])
    exif = Image.Exif()
    exif[0x0112] = 8
    save(f"{root}/rotated.jpg", good, "JPEG", exif=exif.tobytes())
    save(f"{root}/one_pixel.png", Image.new("RGB", (1, 1), (200, 10, 10)), "PNG")
    save(f"{root}/strip.png", Image.new("RGB", (20_000, 2), (10, 200, 10)), "PNG")
    save(f"{root}/large_photo.jpg", photo(8000, 5000), "JPEG", quality=85)  # 40 megapixels
    save(f"{root}/ünïcödé 名前.jpg", good, "JPEG")
    save(f"{root}/with space.webp", good, "WEBP")
    save(f"{root}/nested/deeper/inner.bmp", good, "BMP")
    save(f"{root}/UPPER.JPEG", good, "JPEG")
    save(f"{root}/scan.TIF", good, "TIFF")
    errors = {"truncated.jpg": "truncated", "empty.jpg": "empty", "random.jpg": "not an image",
              "page.jpg": "<html>", "header_only.jpg": "", "bomb.png": "exceeds the limit"}
    everything = {os.path.relpath(p, root) for p in glob.glob(f"{root}/**", recursive=True) if os.path.isfile(p)}
    return root, everything - set(errors), errors


def test_every_corpus_file_ends_in_labels_or_errors_with_bounded_memory(corpus, checkpoint, tmp_path):
    root, good, bad = corpus
    out = str(tmp_path / "out")
    peak_mib = peak_rss_mib([ALEXLABEL, "label", "--input", f"{root}/**", "--checkpoint", checkpoint,
                             "--output", out])
    imports_mib = peak_rss_mib([sys.executable, "-c", "import alexlabel.cli, beam_pipeline.pipeline"])
    print(f"peak RSS labeling the corpus: {peak_mib:.0f} MiB; importing the stack alone: {imports_mib:.0f} MiB")
    assert peak_mib < imports_mib + DECODE_BUDGET_MIB
    labels = pq.read_table(glob.glob(f"{out}/labels/*/*.parquet"), partitioning=None).to_pylist()
    errors = pq.read_table(glob.glob(f"{out}/errors/*/*.parquet"), partitioning=None).to_pylist()
    assert {os.path.relpath(r["uri"], root) for r in labels} == good
    by_name = {os.path.relpath(r["uri"], root): r for r in errors}
    assert set(by_name) == set(bad)
    for name, words in bad.items():
        assert by_name[name]["stage"] == "decode" and words in by_name[name]["message"], by_name[name]
    sizes = {os.path.relpath(r["uri"], root): (r["width"], r["height"]) for r in labels}
    assert sizes["rotated.jpg"] == (240, 320) and sizes["large_photo.jpg"] == (8000, 5000)


def test_sigkill_mid_run_then_resume_labels_each_input_exactly_once_and_removes_the_leftovers(sample_dir, checkpoint,
                                                                                              tmp_path):
    """A killed run cannot remove its temp folders: a later run into the same output does, once they are a
    day old, and leaves a younger one alone (it may belong to a run still going)."""
    bucket, out = tmp_path / "bucket", str(tmp_path / "out")
    bucket.mkdir()
    sources = sorted(glob.glob(f"{sample_dir}/train/*/*.jpg") + glob.glob(f"{sample_dir}/bucket/img_*.jpg"))
    for i in range(1200):  # enough work that the kill lands while shards are being written
        shutil.copy(sources[i % len(sources)], bucket / f"copy_{i:05d}.jpg")
    proc = subprocess.Popen([ALEXLABEL, "label", "--input", f"{bucket}/*", "--checkpoint", checkpoint,
                             "--output", out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not glob.glob(f"{out}/.beam-temp/*/*") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # waiting for an event, not for time: the first shard being written
    assert proc.poll() is None, "the run finished before it could be killed midway"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    for table in ("labels", "errors", "runs"):  # readers see only whole files, or none
        for f in glob.glob(f"{out}/{table}/*/*.parquet"):
            pq.read_metadata(f)
        if os.path.isdir(f"{out}/{table}"):
            ds.dataset(f"{out}/{table}", format="parquet", partitioning="hive").to_table()
    leftovers = glob.glob(f"{out}/.beam-temp/*")
    assert leftovers
    day_ago = time.time() - 24 * 3600 - 60
    for path in glob.glob(f"{out}/.beam-temp/**", recursive=True):
        os.utime(path, (day_ago, day_ago))
    live = f"{out}/.beam-temp/another-run-0123456789abcdef0123456789abcdef"  # young: maybe a concurrent run's
    os.makedirs(live)
    row = run(LabelOptions(inputs=[f"{bucket}/*"], checkpoint=checkpoint, output=out, skip_existing=True))
    assert row["matched"] == 1200 and row["labeled"] + row["skipped"] == 1200
    uris = pq.read_table(glob.glob(f"{out}/labels/*/*.parquet"), partitioning=None).column("uri").to_pylist()
    assert len(uris) == len(set(uris)) == 1200
    assert glob.glob(f"{out}/.beam-temp/*") == [live]


ARENA_PROBE = """
import ctypes, ctypes.util, sys, tempfile, threading
from beam_pipeline.heap import bound_heap
if sys.argv[1] == "bound":
    assert bound_heap()
ready = threading.Barrier(6)
def decode():  # each thread allocates while the others are alive, as PrepareImage's threads do
    buffers = [bytearray(200_000) for _ in range(4)]
    ready.wait()
threads = [threading.Thread(target=decode) for _ in range(6)]
[t.start() for t in threads]
[t.join() for t in threads]
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.fopen.restype = ctypes.c_void_p
with tempfile.NamedTemporaryFile("r") as f:
    stream = libc.fopen(f.name.encode(), b"w")
    libc.malloc_info(0, ctypes.c_void_p(stream))
    libc.fclose(ctypes.c_void_p(stream))
    print(f.read().count("<heap nr="))
"""

TRIM_PROBE = """
import os, sys
from beam_pipeline.heap import trim_heap
def rss_mib(): return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
blocks = [bytearray(b"1" * 60_000) for _ in range(3000)]  # ~180 MB on the heap (below the mmap threshold)
pinned = blocks[::10]  # every tenth stays alive, so the freed space lies between live blocks
del blocks
before = rss_mib()
if sys.argv[1] == "trim":
    assert trim_heap() and not trim_heap()  # a second call within the interval does nothing
print(before - rss_mib())
"""


def probe(script: str, mode: str) -> int:
    """Run a probe in a fresh process with glibc's defaults (no malloc settings from the environment)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    return int(subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, env=env,
                              check=True).stdout)


def test_heap_stays_flat_two_arenas_and_free_pages_handed_back():
    """Why memory stays flat over 20,000 images (BENCHMARKS.md "Memory"): PrepareImage.setup bounds the arenas,
    and the model handler trims the heap between batches. Each default run shows glibc's behaviour
    without them, so this test can tell the difference."""
    assert probe(ARENA_PROBE, "default") >= 4
    assert probe(ARENA_PROBE, "bound") == 2
    assert probe(TRIM_PROBE, "default") < 10
    assert probe(TRIM_PROBE, "trim") > 100  # MiB of freed-but-held pages given back
