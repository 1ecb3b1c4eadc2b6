"""`alexlabel demo`: sample data -> train -> label -> query, on the CPU, in a few minutes."""
import os
import time

import click

from alexlabel.sample_data import write_sample_data

# The demo recipe: alexnet_small's own defaults (64 px, AdamW, 20 epochs; trainer/train.py ARCH_DEFAULTS) at width
# 32 reach >= 95% on the sample set in about a minute on 2 cores. A rerun trains its model anew.
DEMO_TRAINING = dict(arch="alexnet_small", arch_kwargs={"width": 32, "dropout": 0.2}, workers=1, overwrite=True)


def run_demo(workdir: str, seed: int = 0, epochs: int | None = None) -> dict:
    """Run every step into `workdir`; returns the paths and figures the summary printed."""
    from beam_pipeline.launch import run as label
    from beam_pipeline.options import LabelOptions
    from output_tools.query import summary
    from trainer.config import TrainConfig
    from trainer.train import train

    data, model, labels = (os.path.join(workdir, d) for d in ("data", "model", "labels"))
    t0 = time.perf_counter()
    step("1/4 writing the sample image set", data)
    counts = write_sample_data(data, seed=seed)
    click.echo(f"    {counts}")
    step("2/4 training", model)
    manifest = train(TrainConfig(data=data, output=model, seed=seed,
                                 **{**DEMO_TRAINING, **({"epochs": epochs} if epochs else {})}))
    click.echo(f"    val top-1 {manifest.metrics['val_top1']:.3f}, temperature {manifest.temperature:.2f}")
    step("3/4 labeling the bucket with Beam (DirectRunner)", labels)
    run = label(LabelOptions(inputs=[os.path.join(data, "bucket", "*")], checkpoint=os.path.join(model, "model.pt"),
                             output=labels, embeddings=True))
    step("4/4 summary", f"alexlabel query {labels} --truth {data}/bucket_truth.csv")
    tables = summary(labels, os.path.join(data, "bucket_truth.csv"))
    for name, relation in tables.items():
        click.echo(f"{name}:")
        click.echo(relation)
    accuracy = tables["accuracy"].fetchall()[0][2]
    click.echo(f"demo done in {time.perf_counter() - t0:.0f}s: val top-1 {manifest.metrics['val_top1']:.3f}, "
               f"bucket accuracy {accuracy:.3f}, {run['errored']} broken files in errors, "
               f"{run['images_per_second']:.1f} images/s. Try: alexlabel query {labels} --sql "
               "\"SELECT uri, label, confidence FROM labels ORDER BY confidence LIMIT 5\", review the "
               f"uncertain ones in your browser: alexlabel review {labels} --model {run['model_version']} --order "
               "informative, or look for "
               f"duplicates and outliers: alexlabel audit {labels} --model {run['model_version']}")
    return {"val_top1": manifest.metrics["val_top1"], "bucket_accuracy": accuracy, "run": run, "labels": labels}


def step(title: str, where: str) -> None:
    click.secho(f"==> {title}: {where}", bold=True)
