"""The `alexlabel` command: one entry point for sample data, training, labeling and queries."""
import importlib
import logging

import click

from alexlabel import __version__
from schemas.errors import UserError
from schemas.redact import redact

# Each command's module is imported only when that command runs: `alexlabel query` needs DuckDB, not the
# seconds of importing torch, torchvision and Beam that training and labeling do.
LAZY_COMMANDS = {"train": "trainer.cli:train_command", "evaluate": "trainer.cli:evaluate_command",
                 "import-weights": "trainer.cli:import_weights_command", "label": "beam_pipeline.cli:label_command",
                 "query": "beam_pipeline.cli:query_command", "report": "beam_pipeline.cli:report_command",
                 "export": "beam_pipeline.cli:export_command", "schema": "beam_pipeline.cli:schema_command"}


class RedactSecrets(logging.Filter):
    """Log records pass through redact(): tokens in URLs or options never reach a terminal or log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), ()
        return True


class Commands(click.Group):
    """Bad input the user can fix prints as one `Error: ...` line with exit status 1, no traceback.

    The LAZY_COMMANDS load when named (or when --help lists them all).
    """

    def list_commands(self, ctx):
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx, name):
        if name not in LAZY_COMMANDS:
            return super().get_command(ctx, name)
        module, attr = LAZY_COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)

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

