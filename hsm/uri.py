"""PKCS#11 URIs (RFC 7512).

Only the attributes idmint uses are interpreted: ``token``, ``manufacturer``,
``serial``, ``model`` and ``slot-id`` select the token; ``object``, ``id`` and
``type`` select a key. Query attributes ``pin-source`` and ``pin-value`` are
refused on purpose: a PIN never travels inside a URI here (RFC 7512 section
7.5 warns that URIs get logged).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes

from idmint.hsm.errors import InvalidURI

_PATH_ATTRIBUTES = frozenset(
    {
        "token",
        "manufacturer",
        "serial",
        "model",
        "slot-id",
        "object",
        "id",
        "type",
        "library-manufacturer",
        "library-description",
        "library-version",
        "slot-description",
        "slot-manufacturer",
    }
)
_OBJECT_TYPES = frozenset({"private", "public", "cert", "secret-key", "data"})
# Unreserved characters plus the few RFC 7512 allows unescaped in path values.
_SAFE = "-._~:[]@!$'()*+,="


@dataclass(frozen=True)
class PKCS11URI:
    """A parsed ``pkcs11:`` URI naming a token and, optionally, an object."""

    token: str | None = None
    manufacturer: str | None = None
    serial: str | None = None
    model: str | None = None
    slot_id: int | None = None
    object: str | None = None
    id: bytes | None = None
    type: str | None = None

    @classmethod
    def parse(cls, uri: str) -> PKCS11URI:
        """Parse ``uri``; raise :class:`InvalidURI` naming the bad part."""
        if not uri.startswith("pkcs11:"):
            raise InvalidURI(f"PKCS#11 URI {uri!r} must start with 'pkcs11:'")
        body = uri[len("pkcs11:") :]
        path, _, query = body.partition("?")
        if query:
            for item in query.split("&"):
                name = item.partition("=")[0]
                if name in ("pin-value", "pin-source"):
                    raise InvalidURI(
                        f"PKCS#11 URI may not carry a PIN ({name}); "
                        "give the PIN with IDMINT_HSM_PIN or a PIN file"
                    )
        values: dict[str, bytes] = {}
        for item in filter(None, path.split(";")):
            name, sep, raw = item.partition("=")
            if not sep:
                raise InvalidURI(f"PKCS#11 URI attribute {item!r} has no '=' value")
            if name not in _PATH_ATTRIBUTES:
                raise InvalidURI(f"PKCS#11 URI attribute {name!r} is not known (RFC 7512)")
            if name in values:
                raise InvalidURI(f"PKCS#11 URI attribute {name!r} appears twice")
            values[name] = unquote_to_bytes(raw)

        def text(name: str) -> str | None:
            value = values.get(name)
            if value is None:
                return None
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidURI(f"PKCS#11 URI attribute {name!r} is not UTF-8") from exc

        slot_text = text("slot-id")
        slot_id: int | None = None
        if slot_text is not None:
            if not slot_text.isdigit():
                raise InvalidURI(f"PKCS#11 URI slot-id {slot_text!r} is not a decimal number")
            slot_id = int(slot_text)
        object_type = text("type")
        if object_type is not None and object_type not in _OBJECT_TYPES:
            raise InvalidURI(
                f"PKCS#11 URI type {object_type!r} must be one of {sorted(_OBJECT_TYPES)}"
            )
        return cls(
            token=text("token"),
            manufacturer=text("manufacturer"),
            serial=text("serial"),
            model=text("model"),
            slot_id=slot_id,
            object=text("object"),
            id=values.get("id"),
            type=object_type,
        )

    def __str__(self) -> str:
        parts: list[str] = []
        for name, value in (
            ("token", self.token),
            ("manufacturer", self.manufacturer),
            ("serial", self.serial),
            ("model", self.model),
            ("slot-id", None if self.slot_id is None else str(self.slot_id)),
            ("object", self.object),
        ):
            if value is not None:
                parts.append(f"{name}={quote(value, safe=_SAFE)}")
        if self.id is not None:
            # RFC 7512 section 2.3: ids are percent-encoded byte by byte.
            parts.append("id=" + "".join(f"%{b:02x}" for b in self.id))
        if self.type is not None:
            parts.append(f"type={self.type}")
        return "pkcs11:" + ";".join(parts)
