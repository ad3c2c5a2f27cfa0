"""What an administrator with write access to the database can do to the audit log.

The chain's hash is recomputed here independently (SHA-256 over the compact
JSON list of the row's fields, as ca/storage/audit.py documents), as an
attacker who read the code would.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

from sqlalchemy import Engine, text


def _hash(row: tuple[object, ...], at: datetime, subject: str, prev: str) -> str:
    seq, _at, actor, action, _subject, outcome, detail = row
    material = [
        seq,
        at.astimezone(UTC).isoformat(timespec="microseconds"),
        actor,
        action,
        subject,
        outcome,
        detail,
        prev,
    ]
    return hashlib.sha256(json.dumps(material, separators=(",", ":")).encode()).hexdigest()


def rewrite_from(engine: Engine, seq: int, subject: str) -> None:
    """Edit event ``seq``'s subject and re-hash it, every row after it and the head."""
    with engine.begin() as connection:
        rows = connection.execute(
            text(
                "SELECT seq, at, actor, action, subject, outcome, detail FROM audit_events "
                "WHERE seq >= :s ORDER BY seq"
            ),
            {"s": seq},
        ).all()
        prev = connection.execute(
            text("SELECT hash FROM audit_events WHERE seq = :s"), {"s": seq - 1}
        ).scalar_one()
        for row in rows:
            at = row.at if isinstance(row.at, datetime) else datetime.fromisoformat(row.at)
            at = at.replace(tzinfo=UTC) if at.tzinfo is None else at
            new_subject = subject if row.seq == seq else row.subject
            digest = _hash(tuple(row), at, new_subject, prev)
            connection.execute(
                text(
                    "UPDATE audit_events SET subject = :subj, prev_hash = :p, hash = :h "
                    "WHERE seq = :s"
                ),
                {"subj": new_subject, "p": prev, "h": digest, "s": row.seq},
            )
            prev = digest
        connection.execute(text("UPDATE audit_head SET hash = :h"), {"h": prev})


def truncate_to(engine: Engine, seq: int) -> None:
    """Cut every event after ``seq`` and make the head point at ``seq``."""
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_events WHERE seq > :s"), {"s": seq})
        keep = connection.execute(
            text("SELECT hash FROM audit_events WHERE seq = :s"), {"s": seq}
        ).scalar_one()
        connection.execute(text("UPDATE audit_head SET seq = :s, hash = :h"), {"s": seq, "h": keep})
