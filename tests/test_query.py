"""`alexlabel query` over real Parquet outputs: SQL in four formats, the built-ins, the latest-row rule."""
import json
from datetime import timedelta

import pyarrow.parquet as pq
import pytest
from commands import invoke
from commands import one_line_error as error_line
from outputs import T0, drop_column, error, label, write_output


def ok(*args) -> str:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result.output


def as_json(*args):
    return json.loads(ok(*args, "--format", "json"))


def one_line_error(*args) -> str:
    return error_line(invoke(*args))


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """Model m1 labeled a-d in run r1, then b again in run r2; model m2 labeled a-d in run r3."""
    root = tmp_path_factory.mktemp("query")
    img = root / "imgs"
    rows = [label(f"{img}/a.jpg", "cat", 0.9), label(f"{img}/b.jpg", "dog", 0.4), label(f"{img}/c.jpg", "cat", 0.45),
            label(f"{img}/d.jpg", "dog", 0.95), label(f"{img}/b.jpg", "cat", 0.7, run="r2", minute=10)]
    rows += [label(f"{img}/a.jpg", "cat", 0.8, model="m2", run="r3", margin=0.7),
             label(f"{img}/b.jpg", "dog", 0.55, model="m2", run="r3", margin=0.02),
             label(f"{img}/c.jpg", "dog", 0.3, model="m2", run="r3", margin=0.05),
             label(f"{img}/d.jpg", "dog", 0.9, model="m2", run="r3", margin=0.85)]
    (root / "truth.csv").write_text("uri,label\nimgs/a.jpg,cat\nimgs/b.jpg,cat\nimgs/c.jpg,dog\nimgs/d.jpg,dog\n"
                                    "imgs/z.jpg,cat\n")
    for rel in ("cat/a.jpg", "cat/b.jpg", "dog/c.jpg", "dog/d.jpg", "cat/z.jpg"):
        (root / "tree" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "tree" / rel).write_bytes(b"")
    return write_output(str(root / "out"), rows, [error(f"{img}/e.jpg"), error(f"{img}/f.jpg", "OSError", "truncated")])


SQL = "SELECT label, count(*) AS n FROM latest WHERE model_version = 'm1' GROUP BY 1 ORDER BY 1"


def test_sql_prints_an_aligned_table_csv_or_json(out):
    assert ok("query", out, "--sql", SQL) == "label  n\n-----  -\ncat    3\ndog    1\n(2 rows)\n"
    assert ok("query", out, "--sql", SQL, "--format", "csv") == "label,n\ncat,3\ndog,1\n"
    assert as_json("query", out, "--sql", SQL) == [{"label": "cat", "n": 3}, {"label": "dog", "n": 1}]
    row = as_json("query", out, "--sql", "SELECT topk_labels, labeled_at FROM labels WHERE run_id = 'r2'")[0]
    assert row == {"topk_labels": ["cat", "other"], "labeled_at": "2025-01-01T00:10:00+00:00"}
    assert ok("query", out, "--sql", "SELECT topk_labels FROM labels WHERE run_id = 'r2'", "--format", "csv") \
        == 'topk_labels\n"[""cat"", ""other""]"\n'


def test_results_go_to_files_and_urls_parquet_only_there(out, tmp_path):
    assert ok("query", out, "--sql", SQL, "--format", "parquet", "--to", tmp_path / "r.parquet").startswith("wrote")
    assert pq.read_table(tmp_path / "r.parquet").to_pylist() == [{"label": "cat", "n": 3}, {"label": "dog", "n": 1}]
    ok("query", out, "--review", 1, "--format", "csv", "--to", tmp_path / "sub" / "review.csv")
    assert (tmp_path / "sub" / "review.csv").read_text().startswith("uri,label,confidence,margin,runner_up")
    assert "add --to FILE" in one_line_error("query", out, "--sql", SQL, "--format", "parquet")
    assert "holds one table" in one_line_error("query", out, "--summary", "--format", "csv")


def test_remote_output_and_result_through_fsspec(tmp_path):
    out = write_output("memory://alexlabel-query/out", [label("memory://alexlabel-query/a.jpg", "cat", 0.9)])
    ok("query", out, "--sql", "SELECT uri, label FROM labels", "--format", "csv", "--to", f"{out}/result.csv")
    assert ok("query", out, "--sql", f"SELECT * FROM read_csv('{out}/result.csv')", "--format", "csv") \
        == "uri,label\nmemory://alexlabel-query/a.jpg,cat\n"


def test_summary_counts_the_latest_row_per_uri_and_model(out):
    s = as_json("query", out, "--summary")
    assert list(s) == ["runs", "confidence", "labels", "errors"]
    assert [(r["run_id"], r["labeled"], r["errored"]) for r in s["runs"]] == [("r1", 4, 2), ("r2", 1, 0), ("r3", 4, 0)]
    m1 = s["confidence"][0]
    assert (m1["model_version"], m1["images"], m1["accepted"], m1["review"], m1["accept_rate"]) == ("m1", 4, 3, 1, 0.75)
    assert m1["min"] == 0.45 and m1["max"] == 0.95 and m1["median"] == 0.8 and m1["p10"] <= m1["p25"] <= m1["median"]
    assert [(r["model_version"], r["label"], r["images"], r["review"]) for r in s["labels"]] == [
        ("m1", "cat", 3, 1), ("m1", "dog", 1, 0), ("m2", "dog", 3, 1), ("m2", "cat", 1, 0)]
    assert [(r["model_version"], r["error_type"], r["files"]) for r in s["errors"]] == [
        ("m1", "OSError", 1), ("m1", "UnidentifiedImageError", 1)]
    every = as_json("query", out, "--summary", "--all-rows", "--model", "m1")
    assert [(r["label"], r["images"]) for r in every["labels"]] == [("cat", 3), ("dog", 2)]


@pytest.mark.parametrize("old", ["*", "r1"])
def test_runs_files_from_before_job_id_still_read(tmp_path, old):
    """Runs files that predate the job_id column: every one (*), or one beside a newer file (r1)."""
    out = write_output(str(tmp_path / "out"), [label("/x/a.jpg", "cat", 0.9), label("/x/b.jpg", "dog", 0.9, run="r2")])
    drop_column(out, "runs", "job_id", old)
    runs = as_json("query", out, "--summary")["runs"]
    assert [(r["run_id"], r["slices"], r["unfinished_job"]) for r in runs] == [("r1", 0, None), ("r2", 0, None)]
    assert as_json("query", out, "--sql", "SELECT run_id, job_id FROM runs ORDER BY 1") == [
        {"run_id": "r1", "job_id": None}, {"run_id": "r2", "job_id": None}]


def test_latest_row_ties_go_to_the_greater_run_id(tmp_path):
    out = write_output(str(tmp_path / "out"), [label("/x/a.jpg", "cat", 0.9, run="r1"),
                                               label("/x/a.jpg", "dog", 0.9, run="r2")])
    assert as_json("query", out, "--sql", "SELECT label FROM latest") == [{"label": "dog"}]


def test_review_orders_by_confidence_or_margin(out):
    rows = as_json("query", out, "--review", 2, "--model", "m2")
    assert [(r["uri"].rsplit("/")[-1], r["runner_up"]) for r in rows] == [("c.jpg", "other"), ("b.jpg", "other")]
    rows = as_json("query", out, "--review", 2, "--model", "m2", "--by", "margin")
    assert [r["uri"].rsplit("/")[-1] for r in rows] == ["b.jpg", "c.jpg"]
    assert [r["run_id"] for r in as_json("query", out, "--review", 4, "--model", "m1")] == ["r1", "r2", "r1", "r1"]


@pytest.mark.parametrize("truth", ["truth.csv", "tree"])
def test_truth_as_csv_or_image_folder(out, truth):
    t = as_json("query", out, "--truth", out.replace("/out", f"/{truth}"))
    assert list(t) == ["accuracy", "per_class", "confusion"]
    assert [(a["model_version"], a["compared"], a["correct"], a["accuracy"], a["truth_unlabeled"])
            for a in t["accuracy"]] == [("m1", 4, 3, 0.75, 1), ("m2", 4, 3, 0.75, 1)]
    assert [(c["label"], c["support"], c["predicted"], c["precision"], c["recall"]) for c in t["per_class"][:2]] == [
        ("cat", 2, 3, 0.6667, 1.0), ("dog", 2, 1, 1.0, 0.5)]
    assert t["confusion"][:2] == [{"model_version": "m1", "truth / predicted": "cat", "cat": 2, "dog": 0},
                                  {"model_version": "m1", "truth / predicted": "dog", "cat": 1, "dog": 1}]


def test_truth_that_does_not_fit_is_one_line(out, tmp_path):
    assert "does not exist" in one_line_error("query", out, "--truth", tmp_path / "none.csv")
    (tmp_path / "other.csv").write_text("uri,label\nelsewhere/a.jpg,cat\n")
    assert "no labeled image matches truth" in one_line_error("query", out, "--truth", tmp_path / "other.csv")
    for rel in ("cat/a.jpg", "dog/a.jpg"):
        (tmp_path / "tree" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "tree" / rel).write_bytes(b"")
    assert "a.jpg under both cat/ and dog/" in one_line_error("query", out, "--truth", tmp_path / "tree")


def test_compare_model_versions_and_runs(out):
    c = as_json("query", out, "--compare", "m1", "m2")
    assert c["agreement"] == [{"a": "m1", "b": "m2", "compared": 4, "agreed": 2, "agreement": 0.5, "only_in_a": 0,
                               "only_in_b": 0}]
    assert [(r["uri"].rsplit("/")[-1], r["label_a"], r["label_b"]) for r in c["changed"]] == [
        ("b.jpg", "cat", "dog"), ("c.jpg", "cat", "dog")]
    runs = as_json("query", out, "--compare", "r1", "r2")["agreement"][0]
    assert (runs["compared"], runs["agreement"], runs["only_in_a"], runs["only_in_b"]) == (1, 0.0, 3, 0)
    assert "nope is neither a run id nor a model version" in one_line_error("query", out, "--compare", "m1", "nope")


def test_built_ins_asked_together_print_under_their_names(out):
    text = ok("query", out, "--review", 1, "--compare", "r1", "r3")
    assert text.startswith("review:\nuri ") and "\nagreement:\n" in text and "\nchanged:\n" in text


def test_bad_requests_are_one_line_errors(out):
    assert "Parser Error" in one_line_error("query", out, "--sql", "SELEC 1")
    assert "Table with name nope does not exist" in one_line_error("query", out, "--sql", "SELECT * FROM nope")
    assert "--sql runs alone" in one_line_error("query", out, "--sql", SQL, "--summary")
    assert "no rows of model version m9 (it has: m1, m2)" in one_line_error("query", out, "--model", "m9")


def later(row: dict, minutes: int) -> dict:
    return {**row, "at": T0 + timedelta(minutes=minutes)}


def test_errors_count_failed_files_not_attempts(tmp_path):
    """--retry-errors fails on the same broken files again: each is one failed file, as a relabeled image is
    one image. A file a retry labeled has not failed any more, for that model version only."""
    errors = [error("/x/e.jpg"), error("/x/f.jpg"), error("/x/g.jpg"), error("/x/h.jpg"),
              later(error("/x/e.jpg", run="r2"), 10), later(error("/x/f.jpg", "OSError", run="r2"), 10)]
    out = write_output(str(tmp_path / "out"), [label("/x/g.jpg", "cat", 0.9, run="r2", minute=10),
                                               label("/x/h.jpg", "cat", 0.9, model="m2", run="r3", minute=10)], errors)
    s = as_json("query", out, "--summary")
    assert [(r["model_version"], r["error_type"], r["files"]) for r in s["errors"]] == [
        ("m1", "UnidentifiedImageError", 2), ("m1", "OSError", 1)]
    rows = as_json("query", out, "--sql", "SELECT uri, run_id FROM failed ORDER BY uri")
    assert [(r["uri"], r["run_id"]) for r in rows] == [("/x/e.jpg", "r2"), ("/x/f.jpg", "r2"), ("/x/h.jpg", "r1")]
    every = as_json("query", out, "--summary", "--all-rows")["errors"]
    assert [(r["error_type"], r["files"]) for r in every] == [("UnidentifiedImageError", 5), ("OSError", 1)]


def test_result_file_that_is_a_directory_is_refused_before_any_work(tmp_path):
    (tmp_path / "dir").mkdir()
    line = one_line_error("query", tmp_path / "missing", "--to", tmp_path / "dir")  # checked before the output
    assert line == f"Error: --to {tmp_path}/dir is a directory; give the path of the file to write"
    assert not list((tmp_path / "dir").iterdir())


def test_missing_output_says_it_does_not_exist(tmp_path):
    assert one_line_error("query", tmp_path / "nope") == (
        f"Error: {tmp_path}/nope does not exist; give the folder or URL that `alexlabel label --output` wrote")


def test_result_format_follows_the_file_extension(out, tmp_path):
    for name, start in [("r.csv", "label,n\n"), ("r.json", '[\n {\n  "label": "cat"'), ("r.txt", "label  n\n")]:
        assert ok("query", out, "--sql", SQL, "--to", tmp_path / name) == f"wrote {tmp_path / name}\n"
        assert (tmp_path / name).read_text().startswith(start)
    ok("query", out, "--sql", SQL, "--to", tmp_path / "r.parquet")
    assert pq.read_table(tmp_path / "r.parquet").num_rows == 2
    ok("query", out, "--sql", SQL, "--to", tmp_path / "r.out")
    assert (tmp_path / "r.out").read_text().startswith("label  n\n")
    assert one_line_error("query", out, "--sql", SQL, "--format", "table", "--to", tmp_path / "x.csv") == (
        f"Error: --format table does not match --to {tmp_path}/x.csv, which names --format csv; "
        "drop --format or change the file name")
    assert not (tmp_path / "x.csv").exists()


def test_summary_judges_the_model_against_people_with_wilson_intervals(tmp_path):
    from output_tools.reviews import ReviewLog, review_row

    rows = [label(f"/x/{i}.jpg", "cat" if i % 2 else "dog", 0.3 + i * 0.06) for i in range(10)]  # 4 review rows
    out = write_output(str(tmp_path / "out"), rows)
    assert "human_checked" not in as_json("query", out, "--summary")  # nothing reviewed: the summary as before
    log = ReviewLog(out, "s1")
    for row in rows[:6]:  # people say every one of them is a cat: the model's cats are right, its dogs wrong
        log.add(review_row(row, "confirm" if row["label"] == "cat" else "correct", "cat", "ana", "s1"))
    log.add(review_row(rows[7], "unusable", None, "ana", "s1"))
    log.close()
    summary = as_json("query", out, "--summary")
    by_decision = {r["decision"]: r for r in summary["human_checked"]}
    assert {d: (r["confirmed"], r["corrected"], r["unusable"], r["accuracy"]) for d, r in by_decision.items()} == {
        "review": (2, 2, 0, 0.5), "accept": (1, 1, 1, 0.5), "all": (3, 3, 1, 0.5)}
    assert (by_decision["accept"]["low95"], by_decision["accept"]["high95"]) == (0.0945, 0.9055)  # Wilson, 1 of 2
    assert (by_decision["all"]["low95"], by_decision["all"]["high95"]) == (0.1876, 0.8124)        # 3 of 6
    per_label = {(r["label"], r["decision"]): r["accuracy"] for r in summary["human_checked_per_label"]}
    assert per_label[("cat", "all")] == 1.0 and per_label[("dog", "all")] == 0.0
    (share,) = summary["reviewed_share"]
    assert (share["rows"], share["reviewed"], share["review_queue"], share["queue_reviewed"]) == (10, 7, 4, 4)
    truth = as_json("query", out, "--truth", "reviews")
    assert [(r["compared"], r["correct"], r["accuracy"]) for r in truth["accuracy"]] == [(6, 3, 0.5)]
