"""`make bench-review`: what a person reviewing waits for, over an output of 1 million label rows.

1. Opening the queue: the whole `alexlabel review OUT` command, from its start until it prints the URL
   (target: under 3 s), beside the floor of reading the same label files once (DuckDB, count(*)).
2. Each decision's acknowledgement: POST /api/decide round trips on a kept-alive connection, as the page
   sends them (target: under 50 ms each), and a page of queue items; with the queue's image lookups.

The rows come from query_bench.py (same schema and layout as the pipeline's); the class list from a small
checkpoint written here.

Usage: python benchmarks/bench_review.py [--rows 1000000] [--decisions 300] [--workdir bench-out]
"""
import argparse
import glob
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse

import duckdb
from query_bench import CLASSES, write_output

from schemas.checkpoint import Manifest, save_checkpoint
from schemas.transform import Preprocess
from trainer.models import build_model


def small_checkpoint(path: str) -> str:
    model = build_model("alexnet_small", len(CLASSES), width=8)
    save_checkpoint(path, model.state_dict(), Manifest(arch="alexnet_small", class_names=CLASSES,
                                                       preprocess=Preprocess(36, 32), arch_kwargs={"width": 8}))
    return path


def open_queue(out: str, checkpoint: str) -> tuple[subprocess.Popen, str, float]:
    t0 = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", "from alexlabel.cli import main; main()", "review", out,
                                "--port", "0", "--checkpoint", checkpoint], stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("open http"):
            return process, line.split()[1], time.perf_counter() - t0
    raise SystemExit(f"review did not start: {process.wait()}")


def timed(connection: http.client.HTTPConnection, method: str, path: str, token: str, body: dict | None = None):
    t0 = time.perf_counter()
    connection.request(method, path, body=json.dumps(body).encode() if body else None,  # one send with the headers
                       headers={"X-Review-Token": token, "Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    assert response.status == 200, (path, response.status)
    return (time.perf_counter() - t0) * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--decisions", type=int, default=300)
    ap.add_argument("--workdir", default="bench-out")
    args = ap.parse_args()
    out = os.path.join(args.workdir, f"review-{args.rows}")
    if not os.path.exists(f"{out}/runs"):
        write_output(out, args.rows, args.rows // 10, 8)
    for stale in glob.glob(f"{out}/reviews/*/*.parquet"):  # each run reviews the same queue afresh
        os.remove(stale)
    checkpoint = small_checkpoint(os.path.join(args.workdir, "review-classes.pt"))

    t0 = time.perf_counter()
    duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/labels/*/*.parquet')").fetchall()
    floor_s = time.perf_counter() - t0
    process, url, open_s = open_queue(out, checkpoint)
    parts = urllib.parse.urlsplit(url)
    token = urllib.parse.parse_qs(parts.query)["token"][0]
    connection = http.client.HTTPConnection(parts.hostname, parts.port)
    connection.connect()
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as browsers do
    try:
        items_ms = [timed(connection, "GET", f"/api/items?start={i * 50}&count=50", token) for i in range(20)]
        decide_ms = [timed(connection, "POST", "/api/decide", token, {"pos": i, "action": "confirm"})
                     for i in range(args.decisions)]
    finally:
        process.send_signal(2)
        process.wait(timeout=60)
    decide_ms.sort()
    results = {"rows": args.rows, "open_queue_s": round(open_s, 2), "read_labels_once_s": round(floor_s, 2),
               "open_over_floor": round(open_s / floor_s, 1),
               "decide_ms": {"median": round(statistics.median(decide_ms), 1),
                             "p95": round(decide_ms[int(0.95 * len(decide_ms)) - 1], 1),
                             "max": round(decide_ms[-1], 1), "count": len(decide_ms)},
               "items_page_ms_median": round(statistics.median(items_ms), 1),
               "saved_reviews": len(duckdb.sql(f"SELECT * FROM read_parquet('{out}/reviews/*/*.parquet')").fetchall())}
    print(json.dumps(results, indent=2))
    print(f"open the queue over {args.rows:,} label rows: {open_s:.2f} s (target 3 s, "
          f"{'ok' if open_s < 3 else 'MISSED'}); decisions acknowledged in {results['decide_ms']['median']} ms "
          f"median, {results['decide_ms']['max']} ms at most (target 50 ms, "
          f"{'ok' if decide_ms[-1] < 50 else 'MISSED'})")
    with open(os.path.join(args.workdir, "bench_review.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
