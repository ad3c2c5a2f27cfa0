"""``idmint hsm``: look at the keys on the data directory's token."""

from __future__ import annotations

import click

from idmint.ca.config import load, resolve_data_dir
from idmint.cli.options import data_dir_option
from idmint.cli.output import emit_json, emit_table, output_option
from idmint.hsm import KeyStore


@click.group()
def hsm() -> None:
    """Inspect the PKCS#11 token."""


@hsm.command("keys")
@data_dir_option
@output_option
def keys(data_dir: str | None, output: str) -> None:
    """List the private keys on the token with their security attributes."""
    config = load(resolve_data_dir(data_dir))
    with KeyStore(config.hsm) as store:
        infos = store.list_keys()
    if output == "json":
        emit_json(
            [
                {
                    "label": i.label,
                    "id": i.key_id.hex(),
                    "type": i.key_type.value,
                    "uri": i.uri,
                    "token": i.token,
                    "private": i.private,
                    "sensitive": i.sensitive,
                    "extractable": i.extractable,
                    "always_sensitive": i.always_sensitive,
                    "never_extractable": i.never_extractable,
                }
                for i in infos
            ]
        )
        return
    emit_table(
        ["LABEL", "TYPE", "SENSITIVE", "EXTRACTABLE", "NEVER_EXTRACTABLE", "URI"],
        [
            [i.label, i.key_type.value, i.sensitive, i.extractable, i.never_extractable, i.uri]
            for i in infos
        ],
    )
