"""The `alexlabel` command: one entry point for sample data, training, labeling and queries."""
import logging

import click

from alexlabel import __version__
from beam_pipeline.cli import export_command, label_command, query_command, report_command, schema_command
from schemas.errors import UserError
from schemas.redact import redact
from trainer.cli import evaluate_command, import_weights_command, train_command


class RedactSecrets(logging.Filter):
    """Log records pass through redact(): tokens in URLs or options never reach a terminal or log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), ()
        return True


class Commands(click.Group):
    """Bad input the user can fix prints as one `Error: ...` line with exit status 1, no traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            raise click.ClickException(redact(str(e))) from None


@click.group(cls=Commands)
@click.version_option(__version__)
@click.option("-v", "--verbose", is_flag=True, help="Show Beam's and torch's own log messages.")
def main(verbose):
    """Train AlexNet image classifiers, then label whole image buckets with them."""
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactSecrets())


@main.command("sample-data")
@click.argument("directory")
@click.option("--seed", type=int, default=0, show_default=True)
def sample_data_command(directory, seed):
    """Write the built-in sample image set: train/, val/, bucket/ (with broken files), bucket_truth.csv."""
    from alexlabel.sample_data import write_sample_data

    click.echo(f"wrote {write_sample_data(directory, seed=seed)} under {directory}")


@main.command("demo")
@click.option("--workdir", default="alexlabel-demo", show_default=True, help="Where data, model and labels go.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epochs", type=int, help="Override the demo recipe's training epochs.")
def demo_command(workdir, seed, epochs):
    """Sample data -> train a checkpoint -> label the bucket with Beam -> query summary, all on the CPU."""
    from alexlabel.demo import run_demo

    run_demo(workdir, seed, epochs)


for command in (train_command, evaluate_command, label_command, query_command, report_command, export_command,
                schema_command, import_weights_command):
    main.add_command(command)
