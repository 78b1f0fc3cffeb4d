"""``cityops audit ...``: tamper evidence (verify, signed checkpoints) and rule backtests."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cityops.cli.backtest import backtest_command
from infra.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

# Exit codes: 0 the log verifies, 1 it does not (tampering), 2 the check could not run.
TAMPERED = 1
CANNOT_CHECK = 2

CheckpointsOption = Annotated[
    Path | None,
    typer.Option(help="signed checkpoints (default: CITYOPS_AUDIT_CHECKPOINT_FILE)"),
]


def _settings() -> Settings:
    from pydantic import ValidationError

    from infra.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        typer.echo(f"configuration error:\n{exc}", err=True)
        raise typer.Exit(CANNOT_CHECK) from None


def _verification_key(settings: Settings, public_key: Path | None) -> Ed25519PublicKey:
    """The given public key; else the signing key's public half, else the signing key."""
    from infra.audit_chain import load_public_key, public_key_path

    candidates = (
        [public_key]
        if public_key
        else [public_key_path(settings.audit_key_file), settings.audit_key_file]
    )
    for path in candidates:
        if path.exists():
            return load_public_key(path)
    typer.echo(
        f"cannot check the signed checkpoints: no key at {', '.join(map(str, candidates))}",
        err=True,
    )
    raise typer.Exit(CANNOT_CHECK)


@app.command()
def verify(
    checkpoints: CheckpointsOption = None,
    public_key: Annotated[
        Path | None,
        typer.Option(help="PEM public key of the checkpoints (default: <audit key file>.pub)"),
    ] = None,
    batch: Annotated[int, typer.Option(min=100, help="rows per fetch")] = 10_000,
) -> None:
    """Recompute the log's hash chain; exit 1 at the first position the history differs."""
    import psycopg

    from infra.audit_chain import read_checkpoints
    from infra.audit_chain import verify as verify_log

    settings = _settings()
    path = checkpoints or settings.audit_checkpoint_file
    try:
        signed = read_checkpoints(path)
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(CANNOT_CHECK) from None
    key = _verification_key(settings, public_key) if signed else None
    with psycopg.connect(settings.database_url) as conn:
        result = verify_log(conn, signed, public_key=key, batch=batch)
    typer.echo(str(result))
    if not result.ok:
        raise typer.Exit(TAMPERED)


@app.command()
def checkpoint(
    checkpoints: CheckpointsOption = None,
    trust_head: Annotated[
        bool, typer.Option(help="sign the stored head without verifying the log first")
    ] = False,
) -> None:
    """Append a signed checkpoint of the chain's head (verified first) to the file."""
    import psycopg

    from infra.audit_chain import (
        append_checkpoint,
        load_or_create_key,
        read_checkpoints,
        sign_checkpoint,
    )
    from infra.audit_chain import checkpoint as sign_stored_head
    from infra.audit_chain import verify as verify_log

    settings = _settings()
    path = checkpoints or settings.audit_checkpoint_file
    key = load_or_create_key(settings.audit_key_file)
    with psycopg.connect(settings.database_url) as conn:
        if trust_head:
            try:
                signed = sign_stored_head(conn, key, path)
            except ValueError as exc:
                typer.echo(str(exc), err=True)
                raise typer.Exit(CANNOT_CHECK) from None
        else:
            # Sign only what was just recomputed: a checkpoint must never bless tampering.
            result = verify_log(conn, read_checkpoints(path), public_key=key.public_key())
            if not result.ok:
                typer.echo(f"not signed: {result}")
                raise typer.Exit(TAMPERED)
            if not result.head_position or result.head_recorded_at is None:
                typer.echo("the city log is empty: nothing to checkpoint", err=True)
                raise typer.Exit(CANNOT_CHECK)
            signed = sign_checkpoint(
                key, result.head_position, result.head_hash, result.head_recorded_at
            )
            append_checkpoint(path, signed)
    typer.echo(
        f"checkpoint: position {signed.position}, hash {signed.hash.hex()},"
        f" key {signed.key_id} -> {path}"
    )


app.command("backtest")(backtest_command)
