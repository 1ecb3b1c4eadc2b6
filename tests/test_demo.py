"""`make demo`'s own command, end to end, in a fresh process: the README's promise."""
import os
import subprocess
import sys

import duckdb

from schemas.checkpoint import load_checkpoint


def test_demo_trains_labels_and_summarizes(tmp_path):
    workdir = tmp_path / "demo"
    alexlabel = os.path.join(os.path.dirname(sys.executable), "alexlabel")
    result = subprocess.run([alexlabel, "demo", "--workdir", str(workdir)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accuracy:" in result.stdout and "demo done" in result.stdout
    _, manifest = load_checkpoint(str(workdir / "model" / "model.pt"))
    assert manifest.metrics["val_top1"] >= 0.9
    labels = str(workdir / "labels")
    truth = str(workdir / "data" / "bucket_truth.csv")
    accuracy, = duckdb.sql(f"""SELECT avg((l.label = t.label)::INT) FROM read_parquet('{labels}/labels/*/*.parquet') l
                              JOIN (SELECT '{workdir}/data/' || uri AS uri, label FROM read_csv('{truth}')) t
                              USING (uri)""").fetchall()[0]
    assert accuracy >= 0.9
    errors, = duckdb.sql(f"SELECT count(*) FROM read_parquet('{labels}/errors/*/*.parquet')").fetchall()[0]
    assert errors == 4
