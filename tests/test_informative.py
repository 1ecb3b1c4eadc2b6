"""`query --review N --by informative` and `review --order informative` over a real output: a review queue of
near-duplicates is served spread over its kinds of image, not one kind after another."""
import json

import numpy as np
import pytest
from commands import invoke, one_line_error
from outputs import label, vector, write_output

from output_tools.informative import k_center
from output_tools.review_app import Queue

GROUPS, COPIES, DIM = 10, 10, 16


def group_of(uri: str) -> str:
    return uri.rsplit("/", 1)[1].split("_")[0]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """10 originals x 10 near-identical copies the model is unsure of, in margin order a group at a time (g0's
    copies have the smallest margins), and 20 confident images, each unlike the rest."""
    root, rng = tmp_path_factory.mktemp("informative"), np.random.default_rng(0)
    originals = rng.standard_normal((GROUPS, DIM))
    rows, embeddings = [], []
    for g in range(GROUPS):
        for i in range(COPIES):
            row = label(f"{root}/imgs/g{g}_{i}.jpg", "cat", 0.4, margin=0.01 + 0.001 * (COPIES * g + i))
            rows.append(row)
            embeddings.append(vector(row, originals[g] + 0.01 * rng.standard_normal(DIM)))
    for i in range(20):
        rows.append(row := label(f"{root}/imgs/sure{i}_0.jpg", "dog", 0.95, margin=0.9))
        embeddings.append(vector(row, rng.standard_normal(DIM)))
    return write_output(str(root / "out"), rows, embeddings=embeddings)


def reviewed_first(out, n: int, by: str, *args) -> list[dict]:
    result = invoke("query", out, "--review", n, "--by", by, "--format", "json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_query_informative_spreads_a_batch_over_the_groups(out):
    informative = reviewed_first(out, 10, "informative")
    assert {group_of(r["uri"]) for r in informative} == {f"g{g}" for g in range(GROUPS)}
    assert informative[0]["uri"].endswith("/g0_0.jpg")  # the most uncertain first
    assert {group_of(r["uri"]) for r in reviewed_first(out, 10, "margin")} == {"g0"}
    assert reviewed_first(out, 10, "informative") == informative  # the same order every time


def test_review_queue_informative_is_spread_and_holds_the_whole_queue(out):
    queue = Queue(out, None, "review", "informative")
    items = queue.items(0, 200)
    assert queue.size == len(items) == GROUPS * COPIES and [item["pos"] for item in items] == list(range(100))
    assert {group_of(item["uri"]) for item in items[:GROUPS]} == {f"g{g}" for g in range(GROUPS)}
    assert {group_of(item["uri"]) for item in Queue(out, None, "review", "margin").items(0, GROUPS)} == {"g0"}
    every = Queue(out, None, "all", "informative").items(0, 200)  # confident rows: after the kinds, before copies
    assert {group_of(item["uri"]) for item in every[:GROUPS]} == {f"g{g}" for g in range(GROUPS)}
    assert all(item["confidence"] > 0.9 for item in every[GROUPS:GROUPS + 20]) and len(every) == 120


def test_rows_without_embeddings_follow_and_none_at_all_is_one_line(tmp_path):
    rows = [label(f"/imgs/g{g}_0.jpg", "cat", 0.3, margin=0.01 * g) for g in range(4)]
    out = write_output(str(tmp_path / "partial"), rows, embeddings=[vector(r, np.eye(4)[i]) for i, r in
                                                                    enumerate(rows) if i != 1])
    assert [r["uri"] for r in reviewed_first(out, 4, "informative")] == [f"/imgs/g{g}_0.jpg" for g in (0, 2, 3, 1)]
    bare = write_output(str(tmp_path / "bare"), rows)
    for args in (("query", bare, "--review", 5, "--by", "informative"),
                 ("review", bare, "--order", "informative", "--port", 0)):
        line = one_line_error(invoke(*args))
        assert "needs embeddings of model version m1" in line and "`alexlabel label --embeddings`" in line, line


def test_embeddings_of_two_model_versions_do_not_mix(tmp_path):
    rows = [label("/imgs/a.jpg", "cat", 0.3, model=m, run=m) for m in ("m1", "m2")]
    out = write_output(str(tmp_path / "out"), rows, embeddings=[vector(r, [1.0, 0.0]) for r in rows])
    assert "pick one with --model" in one_line_error(invoke("query", out, "--review", 2, "--by", "informative"))
    assert [r["model_version"] for r in reviewed_first(out, 2, "informative", "--model", "m2")] == ["m2"]


def test_k_center_weighs_distance_by_uncertainty_and_breaks_ties_by_position():
    x = np.array([[1, 0], [1, 0.01], [0, 1], [-1, 0]], np.float32)
    assert k_center(x, np.array([0.9, 0.9, 0.5, 0.2]), 4).tolist() == [0, 2, 3, 1]  # the copy of 0 last
    assert k_center(x, np.array([0.9, 0.9, 0.15, 0.1]), 2).tolist() == [0, 3]  # farther, though less unsure than 2
    assert k_center(np.ones((3, 2)), np.ones(3), 3).tolist() == [0, 1, 2]
