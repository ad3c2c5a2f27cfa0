"""The SPIFFE Workload API (gRPC ``SpiffeWorkloadAPI``) over the agent's cache.

As the Workload API and Workload Endpoint specs say: every call must carry
the metadata ``workload.spiffe.io: true`` (InvalidArgument otherwise); the
caller is identified only from the kernel (see :mod:`idmint.agent.listener`)
and attested on every call, then re-checked (PID reuse); a caller with no
identity gets PermissionDenied. Streams send their first message at once,
then the full set again whenever what this caller sees changes, and stay
open while the agent runs (py-spiffe's X509Source gives up for good on a
stream that ends with OK).

This is the only module that touches the generated protobuf types.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import struct_pb2

from idmint.agent.errors import AgentError
from idmint.agent.listener import PeerProxy
from idmint.agent.manager import Manager
from idmint.agent.proto import workload_pb2 as pb
from idmint.agent.proto import workload_pb2_grpc as pb_grpc
from idmint.agent.state import Snapshot, Store
from idmint.attestation.base import AttestationFailed
from idmint.attestation.unix import Caller
from idmint.ca.jose.jwtsvid import InvalidJWTSVID, validate_jwt_svid
from idmint.ca.spiffe_id import TrustDomain

log = logging.getLogger("idmint.agent")
HEADER = "workload.spiffe.io"
#: How often a waiting stream checks that its client is still there.
POLL_SECONDS = 1.0

WorkloadAttestor = Callable[[Caller], Sequence[str]]


class WorkloadAPI(pb_grpc.SpiffeWorkloadAPIServicer):
    """Serves the snapshot in ``store`` to callers known to ``proxy``."""

    def __init__(
        self,
        store: Store,
        manager: Manager,
        proxy: PeerProxy,
        attestors: Sequence[WorkloadAttestor],
    ) -> None:
        self.store = store
        self.manager = manager
        self.proxy = proxy
        self.attestors = attestors

    # -- who is calling ----------------------------------------------------------

    def _selectors(self, context: grpc.ServicerContext) -> frozenset[str]:
        metadata = dict(context.invocation_metadata() or ())
        if metadata.get(HEADER) != "true":
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"security header missing: {HEADER}: true"
            )
        caller = self.proxy.caller_for(context.peer())
        if caller is None:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "the caller could not be identified")
        assert caller is not None
        try:
            selectors = [s for attestor in self.attestors for s in attestor(caller)]
            # After attesting: is the process we read still the one that connected?
            caller.confirm()
        except AttestationFailed as error:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(error))
        return frozenset(selectors)

    def _snapshot_for(
        self, context: grpc.ServicerContext, selectors: frozenset[str], snapshot: Snapshot
    ) -> Snapshot:
        if not snapshot.ready:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the agent has not synced yet")
        if not snapshot.entries_for(selectors):
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "no identity issued")
        return snapshot

    def _follow(
        self,
        context: grpc.ServicerContext,
        selectors: frozenset[str],
        view: Callable[[Snapshot], Any],
        build: Callable[[Snapshot], Any],
    ) -> Iterator[Any]:
        """Send ``build(snapshot)`` once there is something to send, and again
        whenever ``view(snapshot)`` (what this caller sees) changes.

        ``view`` returns a false value while there is nothing to send yet (an
        SVID not signed yet, or expired during an outage): the stream waits.
        """
        # A cancelled stream frees its worker thread at once, not at the next poll.
        ended = threading.Event()

        def on_end() -> None:
            ended.set()
            self.store.poke()

        context.add_callback(on_end)
        snapshot = self.store.current
        sent: Any = None
        while not ended.is_set() and context.is_active() and not self.store.closed:
            if snapshot.ready:
                if not snapshot.entries_for(selectors):
                    context.abort(grpc.StatusCode.PERMISSION_DENIED, "no identity issued")
                seen = view(snapshot)
                if seen and seen != sent:
                    sent = seen
                    yield build(snapshot)
            snapshot = self.store.wait(snapshot.version, POLL_SECONDS, ended)

    # -- X.509 -------------------------------------------------------------------

    def FetchX509SVID(  # noqa: N802 (the spec's method names)
        self, request: pb.X509SVIDRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.X509SVIDResponse]:
        selectors = self._selectors(context)

        def view(snapshot: Snapshot) -> Any:
            serials = tuple(i.serial for i in snapshot.identities_for(selectors))
            return (serials, snapshot.bundle_der) if serials else None

        def build(snapshot: Snapshot) -> pb.X509SVIDResponse:
            identities = snapshot.identities_for(selectors)
            return pb.X509SVIDResponse(
                svids=[
                    pb.X509SVID(
                        spiffe_id=i.spiffe_id,
                        x509_svid=b"".join(i.chain_der),
                        x509_svid_key=i.key_pkcs8,
                        bundle=snapshot.bundle_der,
                    )
                    for i in identities
                ]
            )

        yield from self._follow(context, selectors, view, build)

    def FetchX509Bundles(  # noqa: N802
        self, request: pb.X509BundlesRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.X509BundlesResponse]:
        selectors = self._selectors(context)
        yield from self._follow(
            context,
            selectors,
            lambda s: s.bundle_der,
            lambda s: pb.X509BundlesResponse(bundles={s.trust_domain_id: s.bundle_der}),
        )

    # -- JWT ---------------------------------------------------------------------

    def FetchJWTSVID(  # noqa: N802
        self, request: pb.JWTSVIDRequest, context: grpc.ServicerContext
    ) -> pb.JWTSVIDResponse:
        selectors = self._selectors(context)
        audiences = tuple(a for a in request.audience if a)
        if not audiences:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
        snapshot = self._snapshot_for(context, selectors, self.store.current)
        entries = snapshot.entries_for(selectors)
        if request.spiffe_id:
            entries = [e for e in entries if e.spiffe_id == request.spiffe_id]
            if not entries:
                context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"no identity issued for {request.spiffe_id}",
                )
        svids = []
        for entry in entries:
            try:
                token = self.manager.jwt_svid(entry, audiences)
            except AgentError as error:
                context.abort(grpc.StatusCode.UNAVAILABLE, f"could not get a JWT-SVID: {error}")
            svids.append(pb.JWTSVID(spiffe_id=entry.spiffe_id, svid=token))
        return pb.JWTSVIDResponse(svids=svids)

    def FetchJWTBundles(  # noqa: N802
        self, request: pb.JWTBundlesRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.JWTBundlesResponse]:
        selectors = self._selectors(context)
        yield from self._follow(
            context,
            selectors,
            lambda s: s.jwt_bundle,
            lambda s: pb.JWTBundlesResponse(bundles={s.trust_domain_id: s.jwt_bundle}),
        )

    def ValidateJWTSVID(  # noqa: N802
        self, request: pb.ValidateJWTSVIDRequest, context: grpc.ServicerContext
    ) -> pb.ValidateJWTSVIDResponse:
        # Verifiers need no identity of their own, but the header and a
        # kernel-identified caller all the same.
        self._selectors(context)
        if not request.audience:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
        if not request.svid:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "svid must be specified")
        snapshot = self.store.current
        if not snapshot.ready:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the agent has not synced yet")
        trust_domain = TrustDomain(snapshot.trust_domain_id.removeprefix("spiffe://"))
        try:
            claims = validate_jwt_svid(
                request.svid,
                request.audience,
                snapshot.jwt_keys,
                trust_domain,
                datetime.now(UTC),
            )
        except InvalidJWTSVID as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        if claims.get("jti") in snapshot.revoked_jtis:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the JWT-SVID was revoked (jti)")
        struct = struct_pb2.Struct()
        struct.update(claims)
        return pb.ValidateJWTSVIDResponse(spiffe_id=str(claims["sub"]), claims=struct)


def add_to_server(api: WorkloadAPI, server: grpc.Server) -> None:
    pb_grpc.add_SpiffeWorkloadAPIServicer_to_server(api, server)
