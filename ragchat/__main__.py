"""Command line: `ragchat` (or `python -m ragchat`) `ingest [--rebuild]`, `eval`,
`convert-smart`, `users`, `migrate --to postgresql://...`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from ragchat.config import ConfigError, load_settings
from ragchat.logs import setup_logging
from ragchat.users_cli import users


@click.group()
def cli() -> None:
    """ragchat's command line tools."""


cli.add_command(users)


@cli.command()
@click.option("--rebuild", is_flag=True, help="Drop the index and build it again from DATA_DIR.")
def ingest(rebuild: bool) -> None:
    """Bring the index in step with DATA_DIR: add, replace and remove what changed."""
    setup_logging()
    logging.getLogger("ragchat").setLevel(logging.WARNING)  # the summary below says it all
    from ragchat.backends import BackendUnavailable, backend_kind

    try:
        settings = load_settings()
        knowledge = backend_kind(settings).open_knowledge(settings)  # no LLM loaded
        report = knowledge.sync(rebuild=rebuild, progress=True)
    except (ConfigError, BackendUnavailable) as error:
        raise click.ClickException(str(error)) from None
    click.echo(
        ("Rebuilt the index. " if report.rebuilt else "")
        + f"{settings.data_dir}: "
        + report.summary()
    )


@cli.command()
@click.option(
    "--to",
    "target",
    metavar="POSTGRESQL_URL",
    help="An empty PostgreSQL database with pgvector, e.g. postgresql://user:pw@host:5432/name "
    "(default: DATABASE_URL, or on Upsun the postgresql relationship's).",
)
@click.option(
    "--replace",
    is_flag=True,
    help="Delete what the target holds of ragchat first (what a first start made there).",
)
def migrate(target: str | None, replace: bool) -> None:
    """Copy the accounts, conversations and index kept in local files into PostgreSQL, and
    compare the counts. Nothing is deleted from the files."""
    setup_logging()
    logging.getLogger("ragchat").setLevel(logging.WARNING)
    # A copy the server stops ends psycopg's batch with "error ignored terminating Pipeline
    # ... pipeline aborted", a second line about the error the command reports.
    logging.getLogger("psycopg").setLevel(logging.ERROR)
    from ragchat.history import HistorySchemaError
    from ragchat.migrate import MigrationRefused, check, migrate

    try:
        settings = load_settings()
        target = target or settings.database_url
        if not target:
            raise MigrationRefused("name the PostgreSQL to copy into: --to postgresql://...")
        counts = migrate(settings, target, say=click.echo, replace=replace)
        for count in counts:
            click.echo(f"  {count.what}: {count.source} here, {count.target} in PostgreSQL")
        check(counts)
    except (ConfigError, HistorySchemaError, MigrationRefused) as error:
        raise click.ClickException(str(error)) from None
    click.echo(
        "Done. With DATABASE_URL pointing at it (on Upsun: the relationship), restart the app; "
        "the files stay as they were."
    )


@cli.command(name="eval")
@click.option(
    "--docs", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True
)
@click.option(
    "--queries", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True
)
@click.option(
    "--qrels", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True
)
@click.option(
    "--storage",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the index in this folder, to measure other modes on it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def evaluate_retrieval(
    docs: Path, queries: Path, qrels: Path, storage: Path | None, as_json: bool
) -> None:
    """Retrieval quality on a test collection, with the current settings (RETRIEVAL_MODE...)."""
    setup_logging()
    logging.getLogger("ragchat").setLevel(logging.WARNING)
    from ragchat.evaluate import evaluate, read_qrels, read_queries

    try:
        settings = load_settings()
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    judged = read_qrels(qrels)
    results = evaluate(settings, docs, read_queries(queries), judged, storage)
    if as_json:
        click.echo(json.dumps(results))
        return
    click.echo(f"{results['queries']} judged queries, retrieval mode {settings.retrieval_mode}")
    for name, value in results.items():
        if name != "queries":
            click.echo(f"{name:>16}  {value:.3f}")


@cli.command(name="convert-smart")
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("target", type=click.Path(file_okay=False, path_type=Path))
def convert_smart_collection(source: Path, target: Path) -> None:
    """Turn a SMART collection (such as Cranfield) into docs/, queries.tsv and qrels.tsv."""
    from ragchat.evaluate import convert_smart

    documents, judged = convert_smart(source, target)
    click.echo(f"{documents} documents in {target / 'docs'}, {judged} judged queries")


if __name__ == "__main__":
    cli()
