"""The `alexlabel` command: bad input is one line and a non-zero exit with nothing written; queries."""
import json
import os
import subprocess
import sys

import click
import pytest
import torch
from commands import invoke, one_line_error

from alexlabel.cli import LAZY_COMMANDS, main
from beam_pipeline import launch
from beam_pipeline.options import LabelOptions


@pytest.mark.parametrize("extra, message", [
    (["--top-k", "0"], "--top-k must be at least 1"),
    (["--accept-threshold", "1.5"], "--accept-threshold must be between 0 and 1"),
    (["--min-batch-size", "8", "--max-batch-size", "4"], "batch sizes need 1 <= min <= max"),
])
def test_invalid_label_options_fail_before_anything_is_written(checkpoint, sample_dir, tmp_path, extra, message):
    out = tmp_path / "out"
    line = one_line_error(invoke("label", "--input", f"{sample_dir}/bucket/*", "--checkpoint", checkpoint,
                                 "--output", out, *extra))
    assert message in line and not out.exists()


def test_empty_match_names_the_pattern_and_writes_nothing(checkpoint, tmp_path):
    out = tmp_path / "out"
    line = one_line_error(invoke("label", "--input", tmp_path / "nothing" / "*.jpg", "--checkpoint", checkpoint,
                                 "--output", out))
    assert "no image files match" in line and "nothing/*.jpg" in line and not out.exists()


def test_missing_or_unsafe_checkpoint_fails_before_any_input_is_read(sample_dir, tmp_path):
    line = one_line_error(invoke("label", "--input", f"{sample_dir}/bucket/*", "--checkpoint", tmp_path / "no.pt",
                                 "--output", tmp_path / "out"))
    assert "does not exist" in line
    torch.save({"not": "ours"}, tmp_path / "plain.pt")
    line = one_line_error(invoke("label", "--input", f"{sample_dir}/bucket/*", "--checkpoint", tmp_path / "plain.pt",
                                 "--output", tmp_path / "out"))
    assert "no alexlabel manifest" in line and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["label", "evaluate"])
def test_the_trainers_resume_checkpoint_is_named_and_model_pt_suggested(command, checkpoint, sample_dir, tmp_path):
    last = os.path.join(os.path.dirname(checkpoint), "last.pt")  # the resume state the fixture's training wrote
    args = (["--input", f"{sample_dir}/bucket/*", "--output", tmp_path / "out"] if command == "label"
            else ["--data", f"{sample_dir}/val"])
    line = one_line_error(invoke(command, "--checkpoint", last, *args))
    assert line == (f"Error: checkpoint {last} is a training checkpoint (for `alexlabel train --resume`), not an "
                    f"inference one; use {checkpoint} beside it")
    assert not (tmp_path / "out").exists()


def checkpoint_command(command: str, sample_dir: str, tmp_path) -> list:
    """The arguments besides --checkpoint that label and evaluate need."""
    return (["--input", f"{sample_dir}/bucket/*", "--output", tmp_path / "out"] if command == "label"
            else ["--data", f"{sample_dir}/val"])


@pytest.mark.parametrize("command", ["label", "evaluate"])
def test_a_checkpoint_folder_stands_for_the_model_pt_in_it(command, checkpoint, sample_dir, tmp_path):
    result = invoke(command, "--checkpoint", os.path.dirname(checkpoint), *checkpoint_command(command, sample_dir,
                                                                                              tmp_path))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == f"using {checkpoint}"
    empty = tmp_path / "empty"
    empty.mkdir()
    line = one_line_error(invoke(command, "--checkpoint", empty, *checkpoint_command(command, sample_dir, tmp_path)))
    assert line == (f"Error: checkpoint {empty} is a folder with no model.pt in it; pass the model.pt that "
                    "`alexlabel train` or `alexlabel import-weights` wrote")


def test_only_the_commands_say_which_file_a_checkpoint_folder_stands_for(checkpoint, capfd):
    """load_checkpoint runs in workers, subprocesses and tools too: the contract resolves the folder and prints
    nothing; `label` and `evaluate` name the file (test above)."""
    from schemas.checkpoint import load_checkpoint

    assert load_checkpoint(os.path.dirname(checkpoint))[1].model_version
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize("command", ["label", "evaluate"])
def test_a_file_that_is_no_checkpoint_is_called_so_without_torchs_unsafe_advice(command, sample_dir, tmp_path):
    """Torch's refusal advises loading with weights_only=False, which would run the file's code: never passed on."""
    import numpy as np

    notes = tmp_path / "notes.txt"
    notes.write_text("not a model\n")
    for path in (f"{sample_dir}/bucket/img_00000.jpg", notes):
        line = one_line_error(invoke(command, "--checkpoint", path, *checkpoint_command(command, sample_dir, tmp_path)))
        assert line == (f"Error: checkpoint {path} is not a checkpoint (truncated or not a torch file); pass the "
                        "model.pt that `alexlabel train` or `alexlabel import-weights` wrote, or re-copy it")
    torch.save({"weights": np.zeros(3)}, tmp_path / "numpy.pt")  # a torch file, but with a pickled numpy array
    line = one_line_error(invoke(command, "--checkpoint", tmp_path / "numpy.pt",
                                 *checkpoint_command(command, sample_dir, tmp_path)))
    assert "holds objects other than tensors and was refused" in line and "weights_only" not in line


@pytest.mark.parametrize("command", ["label", "evaluate"])
@pytest.mark.parametrize("word", ["cuda", "gpu"])  # label's first word for it is still understood
def test_gpu_requested_without_a_gpu_fails_loudly(checkpoint, sample_dir, tmp_path, monkeypatch, command, word):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = (["--input", f"{sample_dir}/bucket/*", "--output", tmp_path / "out"] if command == "label"
            else ["--data", f"{sample_dir}/val"])
    line = one_line_error(invoke(command, "--checkpoint", checkpoint, "--device", word, *args))
    assert "--device cuda was asked for but no CUDA GPU works" in line and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["label", "train"])
def test_an_unknown_device_word_names_the_words_of_both_commands(checkpoint, sample_dir, tmp_path, command):
    args = (["--input", f"{sample_dir}/bucket/*", "--checkpoint", checkpoint] if command == "label"
            else ["--data", sample_dir])
    line = one_line_error(invoke(command, *args, "--output", tmp_path / "out", "--device", "tpu"))
    assert "unknown --device 'tpu'; use auto, cpu or cuda" in line and not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, shows", [(["schema", "runs"], "run_id"), (["--help"], "import-weights  Wrap")])
def test_schema_and_help_start_without_importing_torch_or_beam(args, shows):
    """Each command's module loads only when it runs: querying needs DuckDB, not seconds of torch and Beam."""
    code = ("import sys; from alexlabel.cli import main\n"
            f"try: main({args!r})\n"
            "except SystemExit: pass\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'apache_beam') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shows in result.stdout and result.stdout.strip().endswith("[]"), result.stdout


@pytest.mark.parametrize("name", sorted(LAZY_COMMANDS))
def test_help_summarizes_each_lazy_command_as_its_own_help_does(name):
    command = main.get_command(click.Context(main), name)
    assert LAZY_COMMANDS[name][1] == command.get_short_help_str(limit=1000)


def test_gpu_decode_without_the_gpu_device_is_refused(checkpoint, sample_dir, tmp_path):
    line = one_line_error(invoke("label", "--input", f"{sample_dir}/bucket/*", "--checkpoint", checkpoint,
                                 "--output", tmp_path / "out", "--device", "cpu", "--gpu-decode"))
    assert "--gpu-decode decodes JPEGs on the GPU the model runs on; add --device cuda" in line
    assert not (tmp_path / "out").exists()


def test_label_then_query_summary_sql_and_truth(checkpoint, sample_dir, tmp_path):
    out = tmp_path / "out"
    result = invoke("label", "--input", f"{sample_dir}/bucket/*", "--checkpoint", checkpoint, "--output", out)
    assert result.exit_code == 0, result.output
    assert "matched 16, labeled 12, errors 4, skipped 0" in result.output
    summary = invoke("query", out, "--summary", "--truth", os.path.join(sample_dir, "bucket_truth.csv"))
    assert summary.exit_code == 0, summary.output
    for heading in ("runs:", "labels:", "errors:", "accuracy:", "UnidentifiedImageError", "compared"):
        assert heading in summary.output
    sql = invoke("query", out, "--sql", "SELECT count(*) AS n FROM labels WHERE uri LIKE '%img_%'", "--format", "json")
    assert sql.exit_code == 0 and json.loads(sql.output) == [{"n": 12}]


def test_query_of_an_empty_folder_says_what_to_run(tmp_path):
    line = one_line_error(invoke("query", tmp_path))
    assert "holds no alexlabel runs" in line


def test_schema_prints_bigquery_json():
    """One table's is the bare field array `bq mk --schema` and `bq load --schema` read; with no table, an
    object of every table's (test_schemas checks each against BigQuery's documented form)."""
    from schemas.tables import TABLES, bigquery_schema

    result = invoke("schema", "--bigquery", "labels")
    assert result.exit_code == 0 and json.loads(result.output) == bigquery_schema(TABLES["labels"])
    assert json.loads(result.output)[0] == {"name": "uri", "type": "STRING", "mode": "REQUIRED"}
    result = invoke("schema", "--bigquery")
    assert result.exit_code == 0
    assert json.loads(result.output) == {name: bigquery_schema(schema) for name, schema in TABLES.items()}


@pytest.mark.parametrize("command", main.list_commands(click.Context(main)))
def test_every_command_has_help(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "Usage: main " + command in result.output


def test_unwritable_output_fails_before_any_work(checkpoint, sample_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    line = one_line_error(invoke("label", "--input", f"{sample_dir}/bucket/*", "--checkpoint", checkpoint,
                                 "--output", blocker / "out"))
    assert f"cannot write to --output {blocker}/out" in line and blocker.read_text() == "not a folder"


def test_a_run_id_already_in_the_output_is_refused_before_its_files_are_replaced(checkpoint, sample_dir, tmp_path):
    out = tmp_path / "out"
    args = ("label", "--input", f"{sample_dir}/bucket/*.jpg", "--checkpoint", checkpoint, "--output", out,
            "--precision", "fp32")
    assert invoke(*args, "--run-id", "r1").exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*.parquet")}
    line = one_line_error(invoke(*args, "--run-id", "r1"))
    assert line.startswith(f"Error: --run-id r1 is taken in {out} (e.g. {out}/") and line.endswith(
        "; choose another, or leave --run-id out for a new one")
    assert {p: p.read_bytes() for p in out.rglob("*.parquet")} == before
    assert invoke(*args, "--run-id", "r2").exit_code == 0


def test_a_run_without_run_id_does_not_search_the_output_for_its_new_id(checkpoint, sample_dir, tmp_path,
                                                                         monkeypatch):
    """The search lists the whole output (on gs://, every object under it); an id the run made itself is new."""
    listed = []
    monkeypatch.setattr(launch, "glob_urls", lambda pattern: listed.append(pattern) or [])
    args = ("label", "--input", f"{sample_dir}/bucket/*.jpg", "--checkpoint", checkpoint, "--output", tmp_path / "out",
            "--precision", "fp32")
    assert invoke(*args).exit_code == 0 and listed == []
    assert invoke(*args, "--run-id", "mine").exit_code == 0 and len(listed) == 2  # a given one is looked for


def test_checkpoint_whose_classes_do_not_fit_its_weights_is_refused(checkpoint, sample_dir, tmp_path):
    from dataclasses import replace

    from schemas.checkpoint import load_checkpoint, save_checkpoint

    state_dict, manifest = load_checkpoint(checkpoint)
    wrong = tmp_path / "wrong.pt"
    save_checkpoint(str(wrong), state_dict, replace(manifest, class_names=manifest.class_names[:5]))
    line = one_line_error(invoke("label", "--input", f"{sample_dir}/bucket/*", "--checkpoint", wrong,
                                 "--output", tmp_path / "out"))
    assert "do not fit alexnet_small with 5 classes" in line and not (tmp_path / "out").exists()


def test_credentials_never_reach_tables_messages_or_output(checkpoint, sample_dir, tmp_path):
    import glob
    import shutil

    folder = tmp_path / "signed"
    folder.mkdir()
    signed = folder / "photo.jpg?X-Goog-Signature=SECRET111"  # a signed-URL-shaped name, readable locally
    shutil.copy(f"{sample_dir}/bucket/img_00000.jpg", signed)
    listing = tmp_path / "uris.txt"
    listing.write_text(f"{signed}\n{folder}/gone.jpg?access_token=SECRET222\n")
    out = tmp_path / "out"
    result = invoke("label", "--input-list", listing, "--checkpoint", checkpoint, "--output", out,
                    "--labels=api_key=SECRET333")
    assert result.exit_code == 0, result.output
    # the runs row's checkpoint and inputs too: a signed checkpoint URL, a pattern with a token in it
    (tmp_path / "sig=SECRET555").mkdir()
    shutil.copy(f"{sample_dir}/bucket/img_00001.jpg", tmp_path / "sig=SECRET555")
    signed_checkpoint = tmp_path / "model.pt?X-Goog-Signature=SECRET666"
    shutil.copy(checkpoint, signed_checkpoint)
    patterned = invoke("label", "--input", f"{tmp_path}/sig=SECRET555/*", "--checkpoint", signed_checkpoint,
                       "--output", out)
    assert patterned.exit_code == 0, patterned.output
    import pyarrow.parquet as pq

    stored = " ".join(str(pq.read_table(f, partitioning=None).to_pylist())
                      for f in glob.glob(f"{out}/**/*.parquet", recursive=True))
    assert "X-Goog-Signature=***" in stored and "access_token=***" in stored and "api_key=***" in stored
    assert "'checkpoint': '" + str(tmp_path / "model.pt?X-Goog-Signature=***'") in stored and "sig=***" in stored
    assert "SECRET" not in stored + result.output + patterned.output
    failing = invoke("label", "--input", f"{tmp_path}/none/*.jpg?sig=SECRET444", "--checkpoint", checkpoint,
                     "--output", out)
    assert failing.exit_code == 1 and "SECRET" not in failing.output and "sig=***" in failing.output


def test_batches_are_fixed_in_size_unless_a_smaller_minimum_is_asked_for():
    def sizes(**kw):
        return LabelOptions(inputs=["x"], checkpoint="m.pt", output="o", **kw).batch_sizes()
    assert sizes() == (64, 64) and sizes(device="cuda") == sizes(device="gpu") == (256, 256)
    assert sizes(max_batch_size=16) == (16, 16) and sizes(min_batch_size=8) == (8, 64)


def test_workers_and_torch_threads_follow_the_cores_this_process_may_use():
    """Under taskset or a container's cpuset, os.cpu_count() still counts the machine's cores: threads beyond
    those granted spin-wait on each other."""
    granted = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(granted)})
        opts = LabelOptions(inputs=["x"], checkpoint="m.pt", output="o").validate()
        assert (opts.workers, opts.torch_threads()) == (1, 1)
    finally:
        os.sched_setaffinity(0, granted)
    opts = LabelOptions(inputs=["x"], checkpoint="m.pt", output="o").validate()
    assert opts.workers * opts.torch_threads() == len(granted)


DATAFLOW = ["--runner", "DataflowRunner", "--project", "p", "--region", "r", "--temp-location", "gs://b/tmp"]


@pytest.mark.parametrize("with_input, extra, message", [
    (True, ["--watch", "-1"], "Error: --watch SECONDS must be positive, got -1"),
    (True, ["--watch", "0"], "Error: --watch SECONDS must be positive, got 0"),
    (True, ["--watch", "5", "--input-list", "uris.txt"], "Error: --watch polls the --input patterns for new files; "
     "label an --input-list without --watch"),
    (False, ["--watch", "5", "--input-list", "uris.txt"], "Error: --watch polls the --input patterns for new "
     "files; label an --input-list without --watch"),
    (True, ["--watch", "5", "--streaming", *DATAFLOW], "Error: --watch labels new files locally and --streaming "
     "on Dataflow; give one"),
])
def test_watch_option_mistakes_are_one_line_before_anything_runs(checkpoint, sample_dir, tmp_path, with_input,
                                                                 extra, message):
    out = tmp_path / "out"
    inputs = ["--input", f"{sample_dir}/bucket/*"] if with_input else []
    assert one_line_error(invoke("label", *inputs, "--checkpoint", checkpoint, "--output", out, *extra)) == message
    assert not out.exists()


def test_a_watch_checks_its_checkpoint_before_the_first_new_file(tmp_path, monkeypatch):
    """An empty folder starts no round's run, so without a check first a bad checkpoint would wait unnoticed."""
    import beam_pipeline.launch

    def no_watching(*_):
        raise AssertionError("the watch started")

    monkeypatch.setattr(beam_pipeline.launch, "matched_uris", no_watching)
    (tmp_path / "incoming").mkdir()
    line = one_line_error(invoke("label", "--watch", "1", "--input", tmp_path / "incoming" / "*", "--checkpoint",
                                 tmp_path / "no.pt", "--output", tmp_path / "out"))
    assert "does not exist" in line
