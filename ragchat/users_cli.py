"""`ragchat users`: the accounts in DATABASE_URL's PostgreSQL when set, otherwise in DB_PATH
(default database/auth.db).

    ragchat users                              print a new password and its argon2id hash
    ragchat users add alice [--admin] [--password-stdin]
    ragchat users reset alice [--password-stdin]
    ragchat users disable alice | enable alice | delete alice
    ragchat users list

Without --password-stdin a strong password is generated and printed once. Every error exits
non-zero. create_password.py at the repository root runs this same group.
"""

from __future__ import annotations

import sys

import click

from ragchat.auth import AccountError, UserStore, generate_password, hash_password, user_store
from ragchat.config import ConfigError, Settings, load_settings


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as error:
        raise click.ClickException(str(error)) from None


def _store(settings: Settings | None = None) -> UserStore:
    try:
        return user_store(settings or _settings())
    except ConfigError as error:
        raise click.ClickException(str(error)) from None


def _new_password(from_stdin: bool) -> tuple[str, bool]:
    """The password to set, and whether it was generated (and so must be shown)."""
    if not from_stdin:
        return generate_password(), True
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise click.ClickException("--password-stdin was given but standard input was empty.")
    return password, False


def _run(action, *args):
    try:
        return action(*args)
    except AccountError as error:
        raise click.ClickException(str(error)) from None


@click.group(invoke_without_command=True)
@click.pass_context
def users(context: click.Context) -> None:
    """Manage ragchat's accounts (in DATABASE_URL, or DB_PATH: default database/auth.db).

    Without a command: print a new password and its argon2id hash.
    """
    if context.invoked_subcommand is None:
        password = generate_password()
        click.echo(f"Password: {password}")
        click.echo(f"Hash:     {hash_password(password)}")


@users.command(help="Create an account.")
@click.argument("username")
@click.option("--admin", is_flag=True, help="Give the account the admin role.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def add(username: str, admin: bool, password_stdin: bool) -> None:
    password, generated = _new_password(password_stdin)
    user = _run(_store().add, username, password, "admin" if admin else "user")
    click.echo(f"Created {user.role} {user.username}.")
    if generated:
        click.echo(f"Password (shown only now): {password}")


@users.command(help="Give an account a new password.")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def reset(username: str, password_stdin: bool) -> None:
    password, generated = _new_password(password_stdin)
    _run(_store().set_password, username, password)
    click.echo(f"Changed the password of {username}.")
    if generated:
        click.echo(f"Password (shown only now): {password}")


@users.command(help="Stop an account from signing in; its open sessions stop working.")
@click.argument("username")
def disable(username: str) -> None:
    _run(_store().set_disabled, username, True)
    click.echo(f"Disabled {username}.")


@users.command(help="Let a disabled account sign in again.")
@click.argument("username")
def enable(username: str) -> None:
    _run(_store().set_disabled, username, False)
    click.echo(f"Enabled {username}.")


@users.command(help="Delete an account and its conversations.")
@click.argument("username")
def delete(username: str) -> None:
    from ragchat.history import HistorySchemaError, delete_conversations  # loads Chainlit

    settings = _settings()
    _run(_store(settings).delete, username)
    try:
        threads = delete_conversations(settings, username)
    except HistorySchemaError as error:
        raise click.ClickException(
            f"Deleted {username}, but not their conversations: {error}"
        ) from None
    plural = "" if threads == 1 else "s"
    click.echo(
        f"Deleted {username}" + (f" and {threads} conversation{plural}." if threads else ".")
    )


@users.command(name="list", help="List the accounts.")
def list_users() -> None:
    accounts = _store().list()
    if not accounts:
        click.echo("No accounts yet.")
    for user in accounts:
        state = "  (disabled)" if user.disabled else ""
        click.echo(f"{user.username:32} {user.role:6}{state}")
