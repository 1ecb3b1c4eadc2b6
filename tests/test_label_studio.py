"""Label Studio both ways, against a real Label Studio server (`make label-studio` installs it into its own
virtualenv, `make test-integration` runs the test marked `integration`): our tasks and labeling config go in
through its API, annotations are made through its API, its own JSON export comes back through
`alexlabel import-reviews`. The other tests here need no server and run with the rest of the suite."""
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from datetime import datetime
from http.cookiejar import CookieJar
from pathlib import Path

import pytest
from commands import invoke, one_line_error

from beam_pipeline.launch import run
from beam_pipeline.options import LabelOptions
from output_tools import query
from output_tools.label_studio import labeling_config

LS_VENV = Path(__file__).resolve().parents[1] / ".venv-label-studio"
LABEL_STUDIO, MIGRATED = LS_VENV / "bin" / "label-studio", LS_VENV / "migrated" / "label_studio.sqlite3"
USER, PASSWORD, TOKEN = "ana@example.com", "not-a-secret-9", "alexlabel-test-token-0123456789"


def label_bucket(sample_dir: str, checkpoint: str, root: Path) -> str:
    """A real labeling run over a copy of the sample bucket, placed at root/bucket; returns OUT."""
    shutil.copytree(os.path.join(sample_dir, "bucket"), root / "bucket")
    out = str(root.parent / "out")
    run(LabelOptions(inputs=[f"{root}/bucket/*"], checkpoint=checkpoint, output=out))
    return out


@pytest.fixture()
def labeled(sample_dir, checkpoint, tmp_path) -> str:
    return label_bucket(sample_dir, checkpoint, tmp_path / "images")


def latest_rows(out: str) -> list[tuple]:
    return query.connect(out).sql("SELECT uri, label, confidence, model_version, topk_labels FROM latest "
                                  "ORDER BY uri").fetchall()


class LabelStudio:
    """`label-studio start` from its own virtualenv on a free loopback port, a fresh data dir, serving local
    files from `document_root`, with a legacy API token (enabled before its first start, as it must be).

    The data dir starts with a copy of the database `make label-studio` migrated: Label Studio then skips its
    migrations (~70 s on two busy cores) and is up in ~10 s; without it, it migrates itself."""

    def __init__(self, data_dir: Path, document_root: Path):
        data_dir.mkdir()
        if MIGRATED.exists():
            shutil.copy(MIGRATED, data_dir / MIGRATED.name)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),  # nothing in the home folder
               "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true", "LOCAL_FILES_SERVING_ENABLED": "true",
               "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root), "LATEST_VERSION_CHECK": "false",
               "COLLECT_ANALYTICS": "false", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": ""}  # nothing sent out
        self.log_path = data_dir.parent / "label-studio.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(LABEL_STUDIO), "start", "--no-browser", "--host", self.base, "--internal-host", "127.0.0.1",
                 "--port", str(self.port), "--data-dir", str(data_dir), "--username", USER, "--password", PASSWORD,
                 "--user-token", TOKEN], env=env, stdout=log, stderr=subprocess.STDOUT)
        self.started = time.monotonic()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_ready(self, timeout: float = 180) -> float:
        """Poll GET /health; returns the seconds since the start."""
        while time.monotonic() - self.started < timeout:
            assert self.process.poll() is None, f"label-studio exited {self.process.returncode}:\n{self.log()}"
            try:
                with urllib.request.urlopen(f"{self.base}/health", timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"label-studio not healthy after {timeout} s:\n{self.log()}")

    def api(self, method: str, path: str, body=None):
        request = urllib.request.Request(self.base + path, method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Authorization": f"Token {TOKEN}",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                data = response.read()
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{method} {path}: {e.code} {e.read()[:2000]!r}") from None
        return json.loads(data) if data else None

    def browser(self) -> urllib.request.OpenerDirector:
        """A logged-in session, as a person's browser has: Label Studio's image serving takes no API token."""
        jar = CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        opener.open(f"{self.base}/user/login/", timeout=30).read()  # the login page sets the CSRF cookie
        csrf = next(c.value for c in jar if c.name == "csrftoken")
        form = urllib.parse.urlencode({"email": USER, "password": PASSWORD, "csrfmiddlewaretoken": csrf}).encode()
        opener.open(f"{self.base}/user/login/", data=form, timeout=30).read()
        assert any(c.name == "sessionid" for c in jar), "not logged in to Label Studio"
        return opener

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def choices(label: str) -> list[dict]:
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


@pytest.mark.integration
def test_tasks_go_to_label_studio_and_its_annotations_come_back_as_reviews(sample_dir, checkpoint, tmp_path):
    assert LABEL_STUDIO.exists(), "run `make label-studio` first (Label Studio in .venv-label-studio)"
    root = tmp_path / "images"  # Label Studio's local-files document root; the bucket is below it
    root.mkdir()
    server = LabelStudio(tmp_path / "ls-data", root)  # starts while the labeling job runs
    try:
        out = label_bucket(sample_dir, checkpoint, root)
        exported = invoke("export", out, "--to", "label-studio", tmp_path / "tasks.json", "--image-root", root)
        assert exported.exit_code == 0, exported.output
        tasks = json.loads((tmp_path / "tasks.json").read_text())
        config = (tmp_path / "tasks.xml").read_text()
        rows = latest_rows(out)
        version = rows[0][3]
        assert [t["data"]["uri"] for t in tasks] == [r[0] for r in rows]
        ready = server.wait_ready()

        project = server.api("POST", "/api/projects", {"title": "alexlabel", "label_config": config})
        assert project["label_config"] == config.strip()  # accepted as it is
        server.api("POST", "/api/storages/localfiles",  # Label Studio serves local files only under one
                   {"project": project["id"], "path": str(root / "bucket"), "title": "bucket"})
        stranger = {**tasks[0], "data": {**tasks[0]["data"], "uri": "/elsewhere/not-labeled.jpg"}}
        imported = server.api("POST", f"/api/projects/{project['id']}/import", [*tasks, stranger])
        assert imported["task_count"] == len(tasks) + 1 and imported["prediction_count"] == len(tasks) + 1
        listed = server.api("GET", f"/api/tasks?project={project['id']}&page_size=100")
        ls_tasks = {t["data"]["uri"]: t for t in (listed["tasks"] if isinstance(listed, dict) else listed)}
        assert len(ls_tasks) == len(tasks) + 1

        # Label Studio kept our prediction (model version, score, label) and serves our image URL to a person
        first = ls_tasks[rows[0][0]]
        detail = server.api("GET", f"/api/tasks/{first['id']}")
        prediction = detail["predictions"][0]
        assert prediction["model_version"] == version and prediction["score"] == pytest.approx(rows[0][2], abs=1e-5)
        assert prediction["result"][0]["value"]["choices"] == [rows[0][1]]
        with server.browser().open(server.base + detail["data"]["image"], timeout=30) as response:
            assert response.read() == Path(rows[0][0]).read_bytes()

        # a person confirms one, corrects one (to a class the labels table never predicted there), cancels
        # one, submits one with no choice; and annotates a task whose image OUT never labeled
        (confirm_uri, confirm_label, *_), (correct_uri, correct_label, _, _, topk), cancel, empty = rows[:4]
        corrected = next(c for c in topk if c != correct_label)
        for uri, body in ((confirm_uri, {"result": choices(confirm_label)}),
                          (correct_uri, {"result": choices(corrected)}),
                          (cancel[0], {"result": [], "was_cancelled": True}),
                          (empty[0], {"result": []}),
                          ("/elsewhere/not-labeled.jpg", {"result": choices(confirm_label)})):
            server.api("POST", f"/api/tasks/{ls_tasks[uri]['id']}/annotations", body)
        export = server.api("GET", f"/api/projects/{project['id']}/export?exportType=JSON")  # what its UI gives
        (tmp_path / "export.json").write_text(json.dumps(export))
        # an export snapshot can name the annotators by email instead of their ids
        snapshot = server.api("POST", f"/api/projects/{project['id']}/exports/",
                              {"serialization_options": {"annotations__completed_by": {"only_id": False}}})
        for _ in range(60):
            if snapshot["status"] == "completed":
                break
            time.sleep(0.5)
            snapshot = server.api("GET", f"/api/projects/{project['id']}/exports/{snapshot['id']}")
        (tmp_path / "snapshot.json").write_text(json.dumps(server.api(
            "GET", f"/api/projects/{project['id']}/exports/{snapshot['id']}/download?exportType=JSON")))
        me = server.api("GET", "/api/current-user/whoami")
    finally:
        server.stop()
    assert server.process.returncode is not None

    done = invoke("import-reviews", out, "--from", "label-studio", tmp_path / "export.json")
    assert done.exit_code == 0, done.output
    line = done.output.strip()
    assert "\n" not in line and line.startswith("wrote 2 reviews")
    assert "skipped 2 annotations" in line and "1 task of images" in line and "not-labeled.jpg" in line

    con = query.connect(out)
    reviewed = con.sql("SELECT uri, action, predicted_label, reviewed_label, reviewer, model_version, session_id, "
                       "reviewed_at FROM reviewed ORDER BY uri").fetchall()
    assert {r[0]: r[1:4] for r in reviewed} == {confirm_uri: ("confirm", confirm_label, confirm_label),
                                                correct_uri: ("correct", correct_label, corrected)}
    assert {r[4] for r in reviewed} == {str(me["id"])} and {r[5] for r in reviewed} == {version}
    assert len({r[6] for r in reviewed}) == 1  # one session per import
    annotated = {t["data"]["uri"]: datetime.fromisoformat(t["annotations"][0]["updated_at"]) for t in export}
    for uri, *_, when in reviewed:  # when the person decided, not when we imported
        assert abs((when - annotated[uri]).total_seconds()) < 0.001, (when, annotated[uri])

    again = invoke("import-reviews", out, "--from", "label-studio", tmp_path / "snapshot.json")
    assert again.exit_code == 0 and again.output.startswith("wrote 2 reviews"), again.output
    session = again.output.split("(session ")[1].split(")")[0]
    by_email = query.connect(out).execute("SELECT uri, action, reviewer FROM reviews WHERE session_id = $1 "
                                          "ORDER BY uri", [session]).fetchall()
    assert by_email == sorted([(confirm_uri, "confirm", USER), (correct_uri, "correct", USER)])
    print(f"label-studio healthy {ready:.1f} s after its start")


def test_export_writes_tasks_and_the_checkpoints_classes_xml_escaped(labeled, checkpoint, tmp_path):
    from schemas.checkpoint import load_checkpoint

    dest = tmp_path / "ls" / "tasks.json"
    result = invoke("export", labeled, "--to", "label-studio", dest, "--image-root", tmp_path)
    assert result.exit_code == 0, result.output
    assert f"wrote 12 tasks to {dest} and their labeling config to {tmp_path}/ls/tasks.xml" in result.output
    tasks, rows = json.loads(dest.read_text()), latest_rows(labeled)
    assert tasks[0] == {
        "data": {"image": "/data/local-files/?d=" + urllib.parse.quote(rows[0][0][len(str(tmp_path)) + 1:]),
                 "uri": rows[0][0], "model_version": rows[0][3]},
        "predictions": [{"model_version": rows[0][3], "score": pytest.approx(rows[0][2], abs=1e-6),
                         "result": choices(rows[0][1])}]}
    view = ET.fromstring((tmp_path / "ls" / "tasks.xml").read_text())
    classes = load_checkpoint(checkpoint)[1].class_names
    assert [c.get("value") for c in view.iter("Choice")] == classes
    odd = ["a<b", 'say "hi"', "fish & chips", "it's"]
    assert [c.get("value") for c in ET.fromstring(labeling_config(odd)).iter("Choice")] == odd


def test_export_falls_back_to_topk_labels_when_the_checkpoint_is_gone(labeled, checkpoint, tmp_path):
    model = tmp_path / "model.pt"
    shutil.copy(checkpoint, model)
    out = str(tmp_path / "out2")
    run(LabelOptions(inputs=[f"{tmp_path}/images/bucket/*"], checkpoint=str(model), output=out))
    model.unlink()
    result = invoke("export", out, "--to", "label-studio", tmp_path / "t.json", "--image-root", tmp_path)
    assert result.exit_code == 0, result.output
    assert f"from the labels' top-k only (checkpoint {model} is gone" in result.output
    topk = {label for row in latest_rows(out) for label in row[4]}
    assert {c.get("value") for c in ET.parse(tmp_path / "t.xml").getroot().iter("Choice")} == topk


def test_export_refuses_what_label_studio_could_not_show(labeled, tmp_path):
    assert "pass --image-root DIR" in one_line_error(invoke("export", labeled, "--to", "label-studio",
                                                            tmp_path / "t.json"))
    assert "is not under --image-root" in one_line_error(invoke("export", labeled, "--to", "label-studio",
                                                                tmp_path / "t.json", "--image-root", "/srv"))
    assert "must end in .json" in one_line_error(invoke("export", labeled, "--to", "label-studio",
                                                        tmp_path / "t.txt"))
    (tmp_path / "dir.json").mkdir()
    assert "is a directory" in one_line_error(invoke("export", labeled, "--to", "label-studio",
                                                     tmp_path / "dir.json", "--image-root", tmp_path))
    assert not (tmp_path / "t.json").exists() and not (tmp_path / "t.xml").exists()


def test_import_reviews_refuses_bad_input_with_one_line(labeled, tmp_path):
    def error(text: str) -> str:
        path = tmp_path / "export.json"
        path.write_text(text)
        return one_line_error(invoke("import-reviews", labeled, "--from", "label-studio", path))

    assert "is not JSON" in error("<html>not json</html>")
    assert "not a Label Studio JSON export" in error('{"tasks": 3}')
    assert "not a Label Studio JSON export" in error('[{"image": "x.jpg", "choice": "star"}]')  # JSON_MIN
    assert "holds no tasks" in error("[]")
    assert "none of the 1 tasks" in error(json.dumps([{"data": {"uri": "/nowhere/x.jpg"}, "annotations": []}]))
    assert "does not exist" in one_line_error(invoke("import-reviews", labeled, "--from", "label-studio",
                                                     tmp_path / "missing.json"))
    assert not os.path.exists(f"{labeled}/reviews")
