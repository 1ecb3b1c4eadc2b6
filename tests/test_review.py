"""The review app for real: `alexlabel review` in its own process, plain HTTP for the gate, and Playwright
driving Debian's chromium with real key presses; the reviews table read back from Parquet."""
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
from commands import invoke, one_line_error
from PIL import Image, ImageStat

from beam_pipeline.launch import run
from beam_pipeline.options import LabelOptions
from output_tools import query
from output_tools.reviews import ReviewLog, review_row

CHROMIUM = "/usr/bin/chromium"  # installed by `make browser`; Playwright's own download does not work offline


@pytest.fixture()
def labeled(sample_dir, checkpoint, tmp_path) -> str:
    """A real labeling run over a copy of the sample bucket (so a test may delete an image)."""
    bucket = tmp_path / "bucket"
    shutil.copytree(os.path.join(sample_dir, "bucket"), bucket)
    out = str(tmp_path / "out")
    run(LabelOptions(inputs=[f"{bucket}/*"], checkpoint=checkpoint, output=out))
    return out


class ReviewServer:
    """`alexlabel review OUT ...` as a user starts it; stops with Ctrl-C (SIGINT), as a user stops it."""

    def __init__(self, out: str, *args: str):
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from alexlabel.cli import main; main()", "review", out, "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []
        for line in self.process.stdout:
            self.lines.append(line)
            if line.startswith("open http"):
                self.url = line.split()[1]
                break
        else:
            raise AssertionError("".join(self.lines))
        parts = urllib.parse.urlsplit(self.url)
        self.base, self.token = f"{parts.scheme}://{parts.netloc}", urllib.parse.parse_qs(parts.query)["token"][0]

    def get(self, path: str, token: str | None = None) -> tuple[int, bytes]:
        sep = "&" if "?" in path else "?"
        url = self.base + path + (f"{sep}token={urllib.parse.quote(token)}" if token else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def post(self, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(self.base + path, data=body, headers=headers or {}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, {"text": e.read().decode()}

    def stop(self) -> str:
        self.process.send_signal(signal.SIGINT)
        rest, _ = self.process.communicate(timeout=30)
        assert self.process.returncode == 0, "".join(self.lines) + rest
        return rest


def reviews(out: str) -> list[dict]:
    files = glob.glob(f"{out}/reviews/*/*.parquet")
    return sorted((r for f in files for r in pq.read_table(f, partitioning=None).to_pylist()),
                  key=lambda r: r["reviewed_at"])


def test_every_request_needs_the_token_and_only_queue_images_are_served(labeled, sample_dir):
    server = ReviewServer(labeled, "--queue", "all")
    try:
        for path in ("/", "/api/state", "/api/items?start=0"):
            assert server.get(path)[0] == 403 and server.get(path, "wrong-token")[0] == 403
        status, body = server.get("/api/items?start=0&count=200", server.token)
        items = json.loads(body)
        assert status == 200 and len(items) == 12
        assert server.get(f"/image?uri={urllib.parse.quote(items[0]['uri'])}")[0] == 403  # an image needs it too
        status, body = server.get(f"/image?uri={urllib.parse.quote(items[0]['uri'])}", server.token)
        assert status == 200 and body == open(items[0]["uri"], "rb").read()
        train_image = sorted(glob.glob(f"{sample_dir}/train/*/*"))[0]  # a real image, but not in the labels table
        for uri in (train_image, "/etc/passwd", f"{items[0]['uri']}/../../../../etc/passwd",
                    items[0]["uri"].replace("/bucket/", "/bucket/../bucket/")):
            status, body = server.get(f"/image?uri={urllib.parse.quote(uri)}", server.token)
            assert status == 403 and b"not an image of this review queue" in body, uri
        decision = json.dumps({"pos": 0, "action": "confirm"}).encode()
        for path in ("/api/decide", "/api/undo"):  # writes need the token as much as reads
            assert server.post(path, decision)[0] == 403
            assert server.post(path, decision, {"X-Review-Token": "wrong"})[0] == 403
        gate = {"X-Review-Token": server.token, "Content-Type": "application/json"}
        for bad in (b"not json", b"[1, 2]", json.dumps({"pos": "x", "action": "confirm"}).encode(),
                    json.dumps({"pos": 0, "action": "delete"}).encode(),
                    json.dumps({"pos": 0, "action": "correct", "label": None}).encode(),
                    json.dumps({"pos": 0, "action": "correct", "label": "no-such-class"}).encode()):
            status, said = server.post("/api/decide", bad, gate)
            assert status == 400 and said["text"].startswith('{"error"'), (bad, said)
        assert server.post("/api/decide", decision, gate) == (200, {"decided": 1, "action": "confirm"})
        assert server.post("/api/undo", b"{}", gate) == (200, {"pos": 0, "decided": 0})
    finally:
        server.stop()
    assert reviews(labeled) == []  # the one decision was undone before it was written


def test_a_person_reviews_with_the_keyboard_in_a_real_browser(labeled, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    server = ReviewServer(labeled, "--queue", "all", "--reviewer", "ana")
    queue = json.loads(server.get("/api/items?start=0&count=50", server.token)[1])
    os.remove(queue[0]["uri"])  # gone since labeling: shown as missing, and x marks it unusable
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(server.url)
            expect(page.locator("#missing")).to_contain_text("missing")
            page.keyboard.press("x")                       # 0: unusable
            expect(page.locator("#uri")).to_have_text(queue[1]["uri"])
            expect(page.locator("#topk li")).to_have_count(len(queue[1]["topk_labels"]))
            page.wait_for_function("() => document.getElementById('image').naturalWidth > 0")
            page.keyboard.press("Enter")                   # 1: the model is right
            expect(page.locator("#uri")).to_have_text(queue[2]["uri"])
            page.keyboard.press("2")                       # 2: the runner-up is right
            expect(page.locator("#uri")).to_have_text(queue[3]["uri"])
            page.keyboard.press("3")                       # 3: the third label ...
            expect(page.locator("#uri")).to_have_text(queue[4]["uri"])
            page.keyboard.press("u")                       # ... undone: back at 3
            expect(page.locator("#uri")).to_have_text(queue[3]["uri"])
            expect(page.locator("#message")).to_have_text("Undone.")
            page.keyboard.press("s")                       # 3: skipped
            expect(page.locator("#uri")).to_have_text(queue[4]["uri"])
            typed = next(c for c in ("star", "circle", "square") if c != queue[4]["label"])
            expect(page.locator("#classes option")).to_have_count(8, timeout=60_000)  # the class list arrived
            page.keyboard.press("/")
            page.keyboard.type(typed)
            page.keyboard.press("Enter")                   # 4: a class typed by name
            expect(page.locator("#uri")).to_have_text(queue[5]["uri"])
            page.locator("#topk li").nth(0).click()        # 5: a click works too
            expect(page.locator("#progress")).to_contain_text("5 reviewed / 12 in the queue")
            page.wait_for_function("() => document.getElementById('image').naturalWidth > 0")
            page.screenshot(path=str(tmp_path / "review.png"))
            browser.close()
    finally:
        said = server.stop()
    assert "saved 5 decisions" in said
    shot = ImageStat.Stat(Image.open(tmp_path / "review.png").convert("L"))
    assert shot.stddev[0] > 20 and len(Image.open(tmp_path / "review.png").getcolors(1 << 20)) > 200  # not blank

    rows = reviews(labeled)
    assert {r["reviewer"] for r in rows} == {"ana"} and len({r["session_id"] for r in rows}) == 1
    expected = {queue[0]["uri"]: ("unusable", None), queue[1]["uri"]: ("confirm", queue[1]["label"]),
                queue[2]["uri"]: ("correct", queue[2]["topk_labels"][1]), queue[4]["uri"]: ("correct", typed),
                queue[5]["uri"]: ("confirm", queue[5]["label"])}
    con = query.connect(labeled)
    decided = con.sql("SELECT uri, action, reviewed_label, predicted_label, content_sha256 FROM reviewed").fetchall()
    assert {uri: (action, label) for uri, action, label, *_ in decided} == expected  # the undone one is not there
    by_uri = {item["uri"]: item for item in queue}
    assert all(predicted == by_uri[uri]["label"] and sha == by_uri[uri]["content_sha256"]
               for uri, _, _, predicted, sha in decided)


def review_rows(uris: list[str], action: str, session: str, reviewer: str = "bo") -> list[dict]:
    return [review_row({"uri": u, "content_sha256": "0" * 64, "model_version": "m1", "label": "cat"}, action,
                       "dog" if action == "correct" else None, reviewer, session) for u in uris]


def test_undo_after_a_flush_withdraws_the_decision_and_an_earlier_verdict_stands(labeled):
    first = ReviewLog(labeled, "s1", every=1)
    for row in review_rows(["/a.jpg", "/b.jpg"], "correct", "s1"):
        first.add(row)
    first.close()
    second = ReviewLog(labeled, "s2")
    for row in review_rows(["/a.jpg", "/c.jpg"], "unusable", "s2", reviewer="cy"):
        second.add(row)
    second.flush()  # written: undo must now write an undo row
    assert second.undo()["uri"] == "/c.jpg"
    second.close()
    assert [r["action"] for r in reviews(labeled)] == ["correct", "correct", "unusable", "unusable", "undo"]
    decided = query.connect(labeled).sql("SELECT uri, action, reviewer FROM reviewed ORDER BY uri").fetchall()
    assert decided == [("/a.jpg", "unusable", "cy"), ("/b.jpg", "correct", "bo")]  # /c.jpg's was undone


def test_reviewing_bad_outputs_is_one_line_each(labeled, checkpoint, tmp_path):
    def review(*args):  # each refused before it serves; the port is freed again every time
        return one_line_error(invoke("review", *args, "--port", 8765))

    assert "nothing does not exist" in review(tmp_path / "nothing")
    (tmp_path / "blank").mkdir()
    assert "holds no alexlabel runs" in review(tmp_path / "blank")
    empty = tmp_path / "empty"
    (empty / "runs").mkdir(parents=True)
    assert "has no label rows to review" in review(empty)
    assert "has no rows of model version nope" in review(labeled, "--model", "nope")
    assert "checkpoint /no/model.pt (the class list of model version" in review(labeled, "--checkpoint", "/no/model.pt")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_error(invoke("review", labeled, "--port", port))
    assert f"cannot listen on 127.0.0.1:{port}" in line and "pick another with --port" in line


def test_train_label_review_export_retrain_carries_the_corrections(labeled, sample_dir, tmp_path):
    """The loop a labeling team lives in, end to end: people correct labels in the real app in a browser, and
    those labels, not the model's, are what the next training run learns from."""
    from playwright.sync_api import expect, sync_playwright

    from trainer.config import TrainConfig
    from trainer.train import train, training_data

    server = ReviewServer(labeled, "--queue", "all", "--reviewer", "ana")
    queue = json.loads(server.get("/api/items?start=0&count=50", server.token)[1])
    corrected = {item["uri"]: next(c for c in ("star", "ring") if c != item["label"]) for item in queue[:2]}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(server.url)
            expect(page.locator("#classes option")).to_have_count(8, timeout=60_000)  # loaded by another process
            for item in queue[:2]:
                expect(page.locator("#uri")).to_have_text(item["uri"])
                page.keyboard.press("/")
                page.keyboard.type(corrected[item["uri"]])
                page.keyboard.press("Enter")
            expect(page.locator("#uri")).to_have_text(queue[2]["uri"])
            page.keyboard.press("x")  # unusable: out of the training data
            expect(page.locator("#progress")).to_contain_text("3 reviewed")
            browser.close()
    finally:
        server.stop()

    manifest, val = tmp_path / "train.csv", tmp_path / "val.csv"
    assert invoke("export", labeled, "--to", "manifest", manifest).exit_code == 0
    trained = {row.split(",")[1] for row in manifest.read_text().splitlines()[1:]}
    val.write_text("uri,label\n" + "".join(f"{path},{path.split('/')[-2]}\n" for path in
                                          sorted(glob.glob(f"{sample_dir}/val/*/*")) if path.split("/")[-2] in trained))
    cfg = TrainConfig(data_manifest=str(manifest), val_manifest=str(val), output=str(tmp_path / "model2"),
                      arch="alexnet_small", arch_kwargs={"width": 8, "dropout": 0.0}, image_size=32, epochs=1,
                      batch_size=16, optimizer="adamw", lr=1e-3, workers=0)
    classes, samples, _ = training_data(cfg)
    learned = {uri: classes[index] for uri, index in samples}
    assert {uri: learned.get(uri) for uri in corrected} == corrected  # the people's labels
    assert queue[2]["uri"] not in learned and len(learned) == len(queue) - 1  # the unusable one left out
    from_output = replace(cfg, data_manifest=labeled)  # `train --data-manifest OUT` reads the same rows
    classes_out, samples_out, _ = training_data(from_output)
    assert {uri: classes_out[index] for uri, index in samples_out} == learned
    assert train(cfg).metrics["val_images"] == 2 * len(classes)  # and the next model trains on them


def test_a_failing_write_keeps_the_decisions_and_says_why(labeled, monkeypatch):
    """Storage fails in many ways (gcsfs's HTTP errors are no OSErrors): the rows stay pending, the app can show
    the error, and the next write saves them."""
    from output_tools import reviews as reviews_module

    real, failures = reviews_module.atomic_write_bytes, [RuntimeError("HTTP 503 from the bucket")]

    def flaky(url, data):
        if failures:
            raise failures.pop()
        real(url, data)

    monkeypatch.setattr(reviews_module, "atomic_write_bytes", flaky)
    log = ReviewLog(labeled, "s1", every=1, seconds=30)  # the first write now, no retry before close
    log.add(review_rows(["/a.jpg"], "confirm", "s1")[0])
    deadline = time.monotonic() + 10
    while log.error is None and time.monotonic() < deadline:  # the writer thread met the failure
        time.sleep(0.01)
    assert "503" in str(log.error) and len(log.pending) == 1 and reviews(labeled) == []
    log.close()
    assert [r["uri"] for r in reviews(labeled)] == ["/a.jpg"] and log.error is None


def test_a_killed_app_keeps_what_it_saved_and_leaves_no_half_written_file(labeled):
    """SIGKILL (no shutdown, no final write) loses at most the decisions of the last few seconds."""
    server = ReviewServer(labeled, "--queue", "all")
    gate = {"X-Review-Token": server.token, "Content-Type": "application/json"}
    queue = json.loads(server.get("/api/items?start=0&count=50", server.token)[1])

    def decide(pos):
        assert server.post("/api/decide", json.dumps({"pos": pos, "action": "confirm"}).encode(), gate)[0] == 200

    for pos in range(3):
        decide(pos)
    deadline = time.monotonic() + 30
    while not reviews(labeled) and time.monotonic() < deadline:  # written within seconds, without any stop
        time.sleep(0.2)
    decide(3)  # the last seconds: not yet written when the app dies
    server.process.kill()
    server.process.wait(timeout=10)
    assert sorted(r["uri"] for r in reviews(labeled)) == sorted(item["uri"] for item in queue[:3])
    assert not [f for f in glob.glob(f"{labeled}/reviews/**", recursive=True) if os.path.basename(f).startswith(".")]
