"""``idmint agent``: everything wired together, until SIGTERM or SIGINT.

The Workload API gRPC server listens on a private socket behind
:class:`~idmint.agent.listener.PeerProxy`; ``/healthz`` and ``/metrics``
(Prometheus) are served on ``health_listen`` when one is given.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from idmint.agent.listener import PeerProxy
from idmint.agent.manager import Evidence, Manager
from idmint.agent.server_client import ServerClient
from idmint.agent.state import Store
from idmint.agent.workload_api import WorkloadAPI, WorkloadAttestor, add_to_server
from idmint.attestation.systemd import SystemdAttestor
from idmint.attestation.unix import UnixAttestor
from idmint.signals import SignalFlag

log = logging.getLogger("idmint.agent")
DEFAULT_SOCKET = "/run/idmint/agent.sock"
#: One thread per open stream: py-spiffe keeps two streams per X509Source+JwtSource.
MAX_WORKERS = 128


@dataclass(frozen=True)
class AgentOptions:
    server: str
    bundle: str
    socket: Path
    sync_interval: float = 1.0
    unix_path: bool = False
    unix_sha256: bool = False
    health_listen: tuple[str, int] | None = None


def _attestors(options: AgentOptions) -> Sequence[WorkloadAttestor]:
    unix = UnixAttestor(with_path=options.unix_path, with_sha256=options.unix_sha256)
    return (unix.attest, SystemdAttestor().attest)


class Agent:
    """A running agent (also used by tests and benchmarks in a subprocess)."""

    def __init__(self, options: AgentOptions, evidence: Evidence) -> None:
        self.options = options
        self.store = Store()
        self.client = ServerClient(options.server, options.bundle)
        self.manager = Manager(self.client, evidence, self.store, options.sync_interval)
        self.proxy = PeerProxy(options.socket)
        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="idmint-wl"),
            maximum_concurrent_rpcs=MAX_WORKERS - 8,
        )
        add_to_server(
            WorkloadAPI(self.store, self.manager, self.proxy, _attestors(options)), self.grpc
        )
        self.grpc.add_generic_rpc_handlers([_ping_handler()])
        self._health: ThreadingHTTPServer | None = None

    def start(self) -> None:
        self.grpc.add_insecure_port(self.proxy.grpc_address)
        self.grpc.start()
        self.proxy.start()
        self.manager.start()
        if self.options.health_listen is not None:
            self._health = _health_server(self, self.options.health_listen)
        log.info("Workload API on unix://%s", self.options.socket)

    def stop(self) -> None:
        self.manager.stop()
        self.store.close()
        self.proxy.stop()
        self.grpc.stop(grace=1).wait()
        if self._health is not None:
            self._health.shutdown()

    def run_until_signalled(self) -> None:
        done = SignalFlag()
        done.set_on(signal.SIGTERM, signal.SIGINT)
        self.start()
        while not done.wait(1.0):
            thread = self.manager._thread
            if thread is not None and not thread.is_alive():
                self.stop()
                raise SystemExit("idmint agent: the sync loop failed (see the log)")
        self.stop()

    def health(self) -> tuple[int, dict[str, Any]]:
        snapshot = self.store.current
        body = {
            "ready": snapshot.ready,
            "server_reachable": not self.manager.down,
            "agent_id": self.client.svid.spiffe_id if self.client.svid else None,
            "svids": len(snapshot.identities),
            "entries": len(snapshot.entries),
        }
        return (200 if snapshot.ready else 503), body


PING_METHOD = "/idmint.agent.v1.Agent/Ping"


def _ping_handler() -> grpc.GenericRpcHandler:
    """``Ping``: bytes in, nothing out, no attestation: a liveness probe over the
    socket, and the baseline that benchmarks/agent.py sets Workload API calls beside."""
    return grpc.method_handlers_generic_handler(
        "idmint.agent.v1.Agent",
        {"Ping": grpc.unary_unary_rpc_method_handler(lambda request, context: b"")},
    )


def _health_server(agent: Agent, listen: tuple[str, int]) -> ThreadingHTTPServer:
    registry = CollectorRegistry()
    svids = Gauge("idmint_agent_svids", "X509-SVIDs held", registry=registry)
    entries = Gauge("idmint_agent_entries", "Entries served", registry=registry)
    reachable = Gauge(
        "idmint_agent_server_reachable", "1 if the last sync worked", registry=registry
    )
    svids.set_function(lambda: len(agent.store.current.identities))
    entries.set_function(lambda: len(agent.store.current.entries))
    reachable.set_function(lambda: 0 if agent.manager.down else 1)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                status, body = agent.health()
                data, kind = json.dumps(body).encode(), "application/json"
            elif self.path == "/metrics":
                status, data, kind = 200, generate_latest(registry), CONTENT_TYPE_LATEST
            else:
                status, data, kind = 404, b"not found\n", "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes every few seconds would flood the log

    server = ThreadingHTTPServer(listen, Handler)
    threading.Thread(target=server.serve_forever, name="idmint-agent-health", daemon=True).start()
    return server
