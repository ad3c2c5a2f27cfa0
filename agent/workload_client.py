"""A Workload API client for idmint's own commands (``idmint svid x509 --socket``).

Follows ``FetchX509SVID`` on the agent's socket and hands out each update as
PEM (what servers such as nginx read from files). It reconnects with
back-off when the stream breaks. Uses the generated stubs of
:mod:`idmint.agent.proto` (in a descriptor pool of their own, so py-spiffe
may be imported beside it).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from idmint.agent.errors import AgentError
from idmint.agent.proto import workload_pb2 as pb
from idmint.agent.proto import workload_pb2_grpc as pb_grpc

HEADER = (("workload.spiffe.io", "true"),)
#: Errors worth waiting out (the agent restarting, or not synced yet).
RETRY = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True)
class X509Update:
    """The default X509-SVID of one stream message, as PEM."""

    spiffe_id: str
    chain_pem: str
    key_pem: bytes
    bundle_pem: str


def split_der(data: bytes) -> list[bytes]:
    """Concatenated DER certificates (the Workload API's chains and bundles), one by one.

    cryptography reads one DER certificate at a time, so this only finds where
    each ends: an ASN.1 SEQUENCE header gives its length.
    """
    found = []
    offset = 0
    while offset < len(data):
        if data[offset] != 0x30 or offset + 2 > len(data):
            raise AgentError("the agent sent a malformed DER certificate list")
        first = data[offset + 1]
        if first < 0x80:
            header, length = 2, first
        else:
            count = first & 0x7F
            header = 2 + count
            length = int.from_bytes(data[offset + 2 : offset + header], "big")
        end = offset + header + length
        if end > len(data):
            raise AgentError("the agent sent a truncated DER certificate list")
        found.append(data[offset:end])
        offset = end
    return found


def _pem_chain(der: bytes) -> str:
    certificates = [x509.load_der_x509_certificate(part) for part in split_der(der)]
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certificates)


def _update(message: pb.X509SVIDResponse, spiffe_id: str | None) -> X509Update:
    svids = [s for s in message.svids if spiffe_id is None or s.spiffe_id == spiffe_id]
    if not svids:
        raise AgentError(f"the agent holds no X509-SVID for {spiffe_id or 'this process'}")
    svid = svids[0]
    key = serialization.load_der_private_key(svid.x509_svid_key, None)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return X509Update(svid.spiffe_id, _pem_chain(svid.x509_svid), key_pem, _pem_chain(svid.bundle))


def x509_updates(
    socket_path: str, spiffe_id: str | None = None, follow: bool = True
) -> Iterator[X509Update]:
    """The caller's X509-SVID now, then (``follow``) again on every change."""
    target = socket_path if socket_path.startswith("unix:") else f"unix://{socket_path}"
    backoff = 0.5
    while True:
        channel = grpc.insecure_channel(target)
        try:
            stub = pb_grpc.SpiffeWorkloadAPIStub(channel)
            for message in stub.FetchX509SVID(pb.X509SVIDRequest(), metadata=HEADER):
                yield _update(message, spiffe_id)
                backoff = 0.5
                if not follow:
                    return
        except grpc.RpcError as error:
            code = error.code()
            if code not in RETRY:
                raise AgentError(
                    f"the Workload API refused: {code.name}: {error.details()}"
                ) from None
            if not follow and backoff > 8:
                raise AgentError(
                    f"the agent at {socket_path} is not answering ({code.name})"
                ) from None
        finally:
            channel.close()
        time.sleep(backoff)
        backoff = min(backoff * 2, 30)
