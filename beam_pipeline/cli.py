"""`alexlabel label`."""
import json

import click

from beam_pipeline.heap import bound_heap
from beam_pipeline.options import PRECISIONS, RUNNERS, LabelOptions
from common.collector import paused_while_importing
from common.devices import DEVICE_HELP, DEVICE_WORDS
from common.interrupt import exits_130
from common.storage import IMAGE_EXTENSIONS


@click.command("label", context_settings={"ignore_unknown_options": True})
@click.option("--input", "inputs", multiple=True,
              help="Glob pattern of images (local, gs://, ...; '**' recurses). Repeat for more.")
@click.option("--input-list", "input_lists", multiple=True,
              help="File of URIs to label: text (one per line) or Parquet with a uri column. Repeatable.")
@click.option("--checkpoint", required=True, help="Inference checkpoint (model.pt) on any URL.")
@click.option("--output", required=True, help="Folder or bucket URL for the labels/, errors/, runs/ tables.")
@click.option("--runner", default="DirectRunner", show_default=True, metavar="|".join(RUNNERS))
@click.option("--device", default="auto", show_default=True, metavar=DEVICE_WORDS,
              help=DEVICE_HELP + " On Dataflow, auto labels on the workers' GPUs when --gpu-type attaches some.")
@click.option("--precision", default="auto", show_default=True, metavar="|".join(PRECISIONS),
              help="auto: bf16 on GPUs and on CPUs with native bf16, else fp32. int8 (CPUs): about twice as fast, "
                   "top-1 as fp32's on 99%+ of images, with the ranges the checkpoint carries.")
@click.option("--gpu-decode", is_flag=True,
              help="With a GPU: decode JPEGs in batches on the GPU (nvJPEG) instead of on CPU cores; "
                   "other formats, and JPEGs that need rotating or draft mode, still decode on the CPU.")
@click.option("--top-k", type=int, default=5, show_default=True)
@click.option("--embeddings", is_flag=True,
              help="Also write the embeddings table: each image's penultimate activations projected by the "
                   "checkpoint's PCA (float16, 128 values by default), for `alexlabel audit` and --order informative.")
@click.option("--probabilities", is_flag=True,
              help="Also write the probabilities table: each image's whole softmax (float16; 2 KB an image at "
                   "1,000 classes), for the audit's label errors.")
@click.option("--accept-threshold", type=float, default=0.5, show_default=True,
              help="decision is 'accept' at or above this confidence, else 'review'.")
@click.option("--min-batch-size", type=int, default=0,
              help="Below --max-batch-size, Beam sizes batches between the two by throughput. Default: "
                   "equal to it (fixed batches: each new batch size costs the model memory).")
@click.option("--max-batch-size", type=int, default=0, help="Default: 64 on CPUs, 256 on GPUs.")
@click.option("--workers", type=int, default=0,
              help="DirectRunner: bundles labeled in parallel (threads sharing one model, cores/N torch "
                   "threads each). Default: one per core.")
@click.option("--extensions", default=",".join(IMAGE_EXTENSIONS), show_default=True,
              help="Comma-separated file extensions to label (case-insensitive).")
@click.option("--skip-existing", is_flag=True,
              help="Resume: label only inputs with no labels or errors row for this model version under --output.")
@click.option("--retry-errors", is_flag=True, help="With --skip-existing: try inputs that errored before again.")
@click.option("--commit-every", type=int, default=0, metavar="N",
              help="Local runs: label in slices of N inputs, each committed whole, so a killed run loses one slice "
                   "at most and --skip-existing goes on from there. Default: about two minutes of work.")
@click.option("--run-id", default="", help="Defaults to a UTC timestamp plus a random suffix.")
@click.option("--project", default="", help="Dataflow: Google Cloud project.")
@click.option("--region", default="", help="Dataflow: region, e.g. us-central1.")
@click.option("--temp-location", default="", help="Dataflow: gs:// folder for temp and staging files.")
@click.option("--machine-type", default="", help="Dataflow: worker machine type (default fits --gpu-type).")
@click.option("--gpu-type", default="", help="Dataflow: GPU per worker, e.g. nvidia-l4.")
@click.option("--gpu-count", type=int, default=1, show_default=True, help="Dataflow: GPUs per worker.")
@click.option("--container-image", default="", help="Dataflow: worker image built by `make image`.")
@click.option("--max-workers", type=int, default=0, help="Dataflow: autoscaling limit (0: Dataflow's default).")
@click.option("--streaming", is_flag=True, help="Unbounded Dataflow job: label new objects as they arrive.")
@click.option("--notifications", default="",
              help="Streaming: GCS Pub/Sub notifications subscription, projects/P/subscriptions/S.")
@click.option("--poll-seconds", type=float, default=60.0, show_default=True,
              help="Streaming: how often to poll --input patterns (without --notifications) and --watch-model.")
@click.option("--window-seconds", type=float, default=60.0, show_default=True,
              help="Streaming: rows are written once per window of this length.")
@click.option("--watch-model", default="", help="Streaming: checkpoint pattern; the newest match replaces the model.")
@click.option("--watch", type=float, metavar="SECONDS",
              help="Local: keep labeling new files, polling every SECONDS (resume-based; Ctrl-C stops).")
@click.option("--dry-run", is_flag=True,
              help="Print the resolved Beam options (and build + translate a Dataflow job) without running.")
@click.argument("beam_args", nargs=-1, type=click.UNPROCESSED)
def label_command(inputs, input_lists, extensions, beam_args, **kw):
    """Label every image the --input patterns match; write Parquet tables under --output.

    Extra arguments after the options go to Beam as they are (e.g. --direct_num_workers=2).
    """
    bound_heap()  # before Beam and torch start threads: glibc never retires an arena once made
    with paused_while_importing():  # torch (validate picks the device), then Beam
        opts = LabelOptions(inputs=list(inputs), input_lists=list(input_lists), beam_args=list(beam_args),
                            extensions=tuple(e.strip() for e in extensions.split(",") if e.strip()), **kw).validate()
        from schemas.checkpoint import announced_checkpoint_file
        from trainer.models import load_model_ahead

        opts.checkpoint = announced_checkpoint_file(opts.checkpoint)
        load_model_ahead(opts.checkpoint)  # for the launcher's check, while Beam imports
        from beam_pipeline.launch import dry_run, launch_streaming, run
    if opts.dry_run:
        flags, transforms = dry_run(opts)
        click.echo(json.dumps({"run_id": opts.run_id, "runner": opts.runner, "beam_options": flags,
                               "translated_transforms": transforms}, indent=2))
        click.echo("dry run: nothing was submitted or written")
        return
    if opts.streaming:
        click.echo(f"streaming job {launch_streaming(opts)} submitted; it runs until drained or cancelled")
        return
    if opts.watch:
        watch_until_ctrl_c(opts)
        return
    with exits_130():
        echo_run(run(opts))


def watch_until_ctrl_c(opts: LabelOptions) -> None:
    """--watch: a line per labeling round; Ctrl-C, its way out, ends it with a summary of the rounds (status 0)."""
    from beam_pipeline.launch import check_watch, watch

    check_watch(opts)
    click.echo(f"watching {' '.join(opts.inputs)} every {opts.watch:g}s; Ctrl-C stops")
    rounds = []

    def on_round(row):
        rounds.append(row)
        if row:
            echo_run(row)

    try:
        watch(opts, on_round=on_round)
    except KeyboardInterrupt as e:  # a round in progress stops as a run does, and says how far it got
        if str(e):
            click.echo(str(e), err=True)
    runs = [row for row in rounds if row]
    click.echo(f"watch stopped after {len(rounds)} round(s): {len(runs)} labeling run(s), labeled "
               f"{sum(r['labeled'] for r in runs)}, errors {sum(r['errored'] for r in runs)}")


def echo_run(row: dict) -> None:
    click.echo(f"run {row['run_id']}: matched {row['matched']}, labeled {row['labeled']}, errors {row['errored']}, "
               f"skipped {row['skipped']} in {row['wall_seconds']:.1f}s ({row['images_per_second']:.1f} images/s)"
               f" -> {row['output']}")
