"""Options shared by several commands."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click

data_dir_option = click.option(
    "--data-dir",
    "data_dir",
    envvar="IDMINT_DATA_DIR",
    type=click.Path(file_okay=False, path_type=str),
    help="The data directory (or IDMINT_DATA_DIR).",
)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Duration(click.ParamType):
    """``30s``, ``10m``, ``1h``, ``90d`` -> timedelta."""

    name = "duration"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            return value
        text = str(value).strip().lower()
        number, unit = text[:-1], text[-1:]
        if unit not in _UNITS or not number.isdigit():
            self.fail(f"{value!r} is not a duration like 30s, 10m, 1h or 90d", param, ctx)
        # Zero is a duration; the command that takes it says which range it allows.
        return timedelta(seconds=int(number) * _UNITS[unit])


class Moment(click.ParamType):
    """An ISO 8601 time with zone (``2027-01-01T00:00:00Z``) or a duration from now (``90d``)."""

    name = "time"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        if text and text[-1:].lower() in _UNITS and text[:-1].isdigit():
            return datetime.now(UTC) + Duration().convert(text, param, ctx)
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            self.fail(
                f"{value!r} is not an ISO 8601 time (2027-01-01T00:00:00Z) or 90d", param, ctx
            )
        if moment.tzinfo is None:
            self.fail(f"{value!r} has no time zone; add Z for UTC", param, ctx)
        return moment


def invoking_user() -> str:
    """The local user running this command, as getpass finds it.

    getpass reads LOGNAME, USER, LNAME and USERNAME, then the password
    database, so a root shell or a container without $USER still has a name;
    a uid with no passwd entry (common in containers) is named by its number.
    """
    import getpass
    import os

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # OSError from Python 3.13 on, KeyError before
        return f"uid:{os.getuid()}"


def cli_actor() -> str:
    """Who runs this command, for the audit log: the local user and host."""
    import socket

    return f"cli:{invoking_user()}@{socket.gethostname()}"
