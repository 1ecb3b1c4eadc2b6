"""The `alexlabel` command: one entry point for sample data, training, labeling and queries."""
import importlib
import logging

import click
from click.utils import make_default_short_help

from alexlabel import __version__
from common.collector import paused_while_importing
from common.errors import UserError
from common.redact import redact

# Each command's module is imported only when that command runs: `alexlabel query` needs DuckDB, not the
# seconds of importing torch, torchvision and Beam that training and labeling do. `alexlabel --help` lists
# them by these summaries, which a test keeps equal to each command's own.
LAZY_COMMANDS = {
    "train": ("trainer.cli:train_command",
              "Train an AlexNet classifier and export an inference checkpoint (OUTPUT/model.pt)."),
    "evaluate": ("trainer.cli:evaluate_command", "Top-1, top-5, per-class accuracy and the confusion matrix of a "
                 "checkpoint on labelled images or shards."),
    "import-weights": ("trainer.cli:import_weights_command", "Wrap a state dict file (e.g. torchvision's "
                       "ImageNet AlexNet weights) into a checkpoint to label with."),
    "refit": ("trainer.cli:refit_command", "Fit a checkpoint's embedding projection and int8 ranges anew, on a "
              "folder of images, into a new checkpoint."),
    "shards": ("trainer.cli:shards_command", "Pack an image folder or manifest into shuffled WebDataset tar "
               "shards that `alexlabel train --data` reads."),
    "label": ("beam_pipeline.cli:label_command",
              "Label every image the --input patterns match; write Parquet tables under --output."),
    "query": ("output_tools.cli:query_command", "Query an output folder or bucket: DuckDB SQL or built-in analyses."),
    "report": ("output_tools.cli:report_command", "Write one self-contained HTML page: label counts, confidence "
               "histograms, review queue, errors."),
    "export": ("output_tools.cli:export_command", "Export labeled images as training data the trainer reads: an "
               "ImageFolder tree, a manifest or shards."),
    "import-reviews": ("output_tools.cli:import_reviews_command",
                       "Bring people's decisions made in Label Studio into the reviews table."),
    "review": ("output_tools.cli:review_command", "Review labels in a local web app: confirm, correct or reject "
               "each, into the reviews table."),
    "audit": ("output_tools.cli:audit_command", "Find duplicates, near-duplicates, outliers, likely label errors "
              "and low confidence; write the issues table."),
    "schema": ("output_tools.cli:schema_command", "Print the output table schemas (all tables, or one)."),
}


class RedactSecrets(logging.Filter):
    """Log records pass through redact(): tokens in URLs or options never reach a terminal or log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), ()
        return True


class Commands(click.Group):
    """Bad input the user can fix prints as one `Error: ...` line with exit status 1, no traceback.

    The LAZY_COMMANDS load when named; --help lists them by their summaries.
    """

    def list_commands(self, ctx):
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx, name):
        if name not in LAZY_COMMANDS:
            return super().get_command(ctx, name)
        module, attr = LAZY_COMMANDS[name][0].split(":")
        with paused_while_importing():
            return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        """Click's listing, with the lazy commands' summaries taken from LAZY_COMMANDS (no imports)."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))
        rows = [(name, make_default_short_help(LAZY_COMMANDS[name][1], limit) if name in LAZY_COMMANDS
                 else self.get_command(ctx, name).get_short_help_str(limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

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

