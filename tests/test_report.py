"""`alexlabel report`: the page really renders in headless Debian chromium, self-contained and escaped."""
import base64
import io
import os
import re
import subprocess
from html.parser import HTMLParser

import pytest
from click.testing import CliRunner
from commands import invoke, one_line_error
from outputs import drop_column, error, label, write_images, write_output
from PIL import Image, ImageStat

from alexlabel.cli import main

CHROMIUM = "/usr/bin/chromium"
HOSTILE = '<script>alert("x")</script>'


class Dom(HTMLParser):
    """Every start tag with its attributes, and all text, of a page."""

    def __init__(self, page: str):
        super().__init__()
        self.tags, self.text = [], []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag: str, **attrs) -> list[dict]:
        return [a for t, a in self.tags if t == tag and all(v in a.get(k, "").split() for k, v in attrs.items())]


def chromium(url: str, profile, *args: str) -> subprocess.CompletedProcess:
    """Real headless chromium, offline and quiet; the test fails (never skips) where it is missing."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (installs Debian's chromium)")
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", *args, url],
                          capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A report over 6 real JPEGs (one under a hostile label), a vanished image and two errors."""
    root = tmp_path_factory.mktemp("report")
    paths = write_images(root / "imgs", [f"img_{i}.jpg" for i in range(6)]) + [str(root / "imgs" / "gone.jpg")]
    names = ["cat", "dog", HOSTILE, "cat", "dog", "cat", "dog"]
    rows = [label(p, n, 0.15 + 0.12 * i) for i, (p, n) in enumerate(zip(paths, names, strict=True))]
    out = write_output(str(root / "out"), rows, [error(f"{root}/bad.jpg", message=f"bad {HOSTILE} & more"),
                                                 error(f"{root}/empty.jpg", "EmptyFile", "0 bytes", stage="read")])
    html = root / "report.html"
    result = CliRunner().invoke(main, ["report", out, "--html", str(html), "--review", "7"])
    assert result.exit_code == 0, result.output
    assert "3 labels, 7 rows to review, 2 errors" in result.output
    return html


def test_page_renders_in_headless_chromium_as_a_non_blank_screenshot(page, tmp_path):
    shot = tmp_path / "shot.png"
    chromium(page.as_uri(), tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,2000")
    image = Image.open(shot).convert("L")
    assert image.size == (1200, 2000)
    assert ImageStat.Stat(image).var[0] > 100, "the screenshot is blank"


def test_rendered_dom_holds_charts_thumbnails_and_the_errors_table(page, tmp_path):
    dom = Dom(chromium(page.as_uri(), tmp_path / "profile", "--dump-dom").stdout)
    assert len(dom.find("svg", **{"class": "bar-chart"})) == 1 and len(dom.find("svg", **{"class": "histogram"})) == 3
    assert len(dom.find("rect", **{"class": "accept"})) == 3
    thumbs = dom.find("img", **{"class": "thumb"})
    assert len(thumbs) == 6  # seven rows to review, one image is gone
    for img in thumbs:
        assert img["src"].startswith("data:image/jpeg;base64,")
        assert max(Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1]))).size) <= 96
    assert dom.find("table", id="errors-table") and "EmptyFile" in dom.text and "no preview" in dom.text


def test_page_is_self_contained_and_data_is_escaped(page, tmp_path):
    raw = page.read_text()
    assert "<script" not in raw and "&lt;script&gt;" in raw
    dom = Dom(chromium(page.as_uri(), tmp_path / "profile", "--dump-dom").stdout)
    assert not dom.find("script") and not dom.find("link")
    assert not [v for _, attrs in dom.tags for v in attrs.values() if v and v.startswith(("http:", "https:", "//"))]
    assert HOSTILE in "".join(dom.text) and f"bad {HOSTILE} & more" in dom.text


def test_several_model_versions_show_the_latest_and_name_the_others(tmp_path):
    out = write_output(str(tmp_path / "out"), [label("/x/a.jpg", "cat", 0.9, model="old"),
                                               label("/x/a.jpg", "dog", 0.8, model="new", run="r2", minute=5)])
    result = CliRunner().invoke(main, ["report", out, "--html", str(tmp_path / "r.html"), "--review", "0"])
    assert result.exit_code == 0 and "model version new, 1 labels, 0 rows to review" in result.output
    assert "Also in this output: old (pick one with --model)" in (tmp_path / "r.html").read_text()


def test_report_reads_images_from_a_bucket_and_writes_the_page_there(gcs, tmp_path):
    (image,) = write_images(tmp_path, ["a.jpg"])
    gcs.mkdir("alexlabel-report")
    gcs.put(image, "alexlabel-report/imgs/a.jpg")
    out = write_output("gs://alexlabel-report/out", [label("gs://alexlabel-report/imgs/a.jpg", "cat", 0.4)])
    result = CliRunner().invoke(main, ["report", out, "--html", "gs://alexlabel-report/report.html"])
    assert result.exit_code == 0, result.output
    assert gcs.cat("alexlabel-report/report.html").count(b'src="data:image/jpeg;base64,') == 1


def test_errors_count_failed_files_unless_all_rows(tmp_path):
    """Two runs (the second with --retry-errors) failed on the same two files: two files, four rows."""
    out = write_output(str(tmp_path / "out"), [label("/x/a.jpg", "cat", 0.9)],
                       [error(f"/x/{name}.jpg", run=run) for name in "ef" for run in ("r1", "r2")])
    result = invoke("report", out, "--html", tmp_path / "r.html", "--review", 0)
    assert result.exit_code == 0 and "0 rows to review, 2 errors" in result.output, result.output
    assert "Errors: 2 files (latest row per uri and model version), showing 2" in (tmp_path / "r.html").read_text()
    assert "4 errors" in invoke("report", out, "--html", tmp_path / "all.html", "--review", 0, "--all-rows").output
    assert "Errors: 4 rows (every error row), showing 4" in (tmp_path / "all.html").read_text()


def test_an_output_whose_runs_files_predate_job_id_still_reports(tmp_path):
    out = write_output(str(tmp_path / "out"), [label("/x/a.jpg", "cat", 0.9)])
    drop_column(out, "runs", "job_id")
    assert invoke("report", out, "--html", tmp_path / "r.html", "--review", 0).exit_code == 0
    assert ">r1<" in (tmp_path / "r.html").read_text().split("<h2>Runs</h2>")[1]


def test_html_path_that_is_a_directory_is_refused_before_any_work(tmp_path):
    (tmp_path / "dir").mkdir()
    line = one_line_error(invoke("report", tmp_path / "missing", "--html", tmp_path / "dir"))
    assert line == f"Error: --html {tmp_path}/dir is a directory; give the path of the file to write"
    assert not list((tmp_path / "dir").iterdir())


def test_the_report_names_the_review_app_and_shows_what_people_said(tmp_path):
    from output_tools.reviews import ReviewLog, review_row

    rows = [label(f"/x/{i}.jpg", "cat", 0.3 + 0.1 * i) for i in range(4)]  # two review rows, two accepted
    out = write_output(str(tmp_path / "out"), rows)
    assert invoke("report", out, "--html", tmp_path / "before.html", "--review", 0).exit_code == 0
    before = Dom((tmp_path / "before.html").read_text())
    assert f"alexlabel review {out}" in before.text and not before.find("table", id="human-checked")
    log = ReviewLog(out, "s1")
    for row, action in zip(rows, ("confirm", "correct", "confirm", "confirm"), strict=True):
        log.add(review_row(row, action, "cat" if action == "confirm" else "dog", "ana", "s1"))
    log.close()
    assert invoke("report", out, "--html", tmp_path / "after.html", "--review", 0).exit_code == 0
    page = (tmp_path / "after.html").read_text()
    dom = Dom(page)
    assert "What people said" in dom.text and dom.find("table", id="reviewed-share")
    table = page.split('id="human-checked"')[1].split("</table>")[0]
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table)]
    assert {tuple(row[1:6]) for row in rows if row} == {("accept", "2", "0", "0", "1"),
                                                        ("review", "1", "1", "0", "0.5"),
                                                        ("all", "3", "1", "0", "0.75")}
