"""Options shared by several commands."""

from __future__ import annotations

import click

data_dir_option = click.option(
    "--data-dir",
    "data_dir",
    envvar="IDMINT_DATA_DIR",
    type=click.Path(file_okay=False, path_type=str),
    help="The data directory (or IDMINT_DATA_DIR).",
)
