"""Command line: `python -m ragchat ingest [--rebuild]`."""

from __future__ import annotations

import logging

import click

from ragchat.config import ConfigError, load_settings
from ragchat.logs import setup_logging


@click.group()
def cli() -> None:
    """ragchat's command line tools."""


@cli.command()
@click.option("--rebuild", is_flag=True, help="Drop the index and build it again from DATA_DIR.")
def ingest(rebuild: bool) -> None:
    """Bring the index in step with DATA_DIR: add, replace and remove what changed."""
    setup_logging()
    logging.getLogger("ragchat").setLevel(logging.WARNING)  # the summary below says it all
    try:
        settings = load_settings()
        if settings.rag_backend != "llama_index":
            raise ConfigError("Invalid setting RAG_BACKEND='assistant': ingest indexes for llama_index only")
        from ragchat.ingest import Library
        from ragchat.models import build_embed_model

        library = Library(settings, build_embed_model(settings))
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    report = library.sync(rebuild=rebuild, progress=True)
    click.echo(("Rebuilt the index. " if report.rebuilt else "") + f"{settings.data_dir}: " + report.summary())


if __name__ == "__main__":
    cli()
