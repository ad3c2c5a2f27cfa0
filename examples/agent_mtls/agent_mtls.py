"""Two services on one host, told apart by the kernel, talking mutual TLS with no secret.

Run each side as its own unix user, beside ``idmint agent`` (see README.md):

    SPIFFE_ENDPOINT_SOCKET=unix:///run/idmint/agent.sock python agent_mtls.py serve \
        --port 9443 --allow spiffe://TD/web          # as the api's user
    SPIFFE_ENDPOINT_SOCKET=unix:///run/idmint/agent.sock python agent_mtls.py call \
        --port 9443 --expect spiffe://TD/api         # as the web's user

Neither side holds a join token, a key file or any idmint setting: each asks
the agent's Workload API, which identifies the process by its uid. The api
answers only callers whose SPIFFE ID is on its allow-list; the caller checks
it reached the api's SPIFFE ID. Each prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys

from idmint.workload import from_workload_api, peer_spiffe_id


def serve(port: int, allow: list[str], connections: int) -> int:
    workload = from_workload_api()
    context = workload.server_context()
    assert workload.svid is not None
    with socket.create_server(("127.0.0.1", port)) as listener:
        print(json.dumps({"listening": port, "spiffe_id": workload.svid.spiffe_id}), flush=True)
        for _ in range(connections):
            raw, _ = listener.accept()
            with context.wrap_socket(raw, server_side=True) as tls:
                caller = peer_spiffe_id(tls)
                allowed = caller in allow
                answer = f"hello {caller}" if allowed else f"denied: {caller}"
                tls.sendall(answer.encode())
                print(json.dumps({"caller": caller, "allowed": allowed}), flush=True)
    workload.close()
    return 0


def call(port: int, expect: str) -> int:
    workload = from_workload_api()
    context = workload.client_context()
    assert workload.svid is not None
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with context.wrap_socket(raw) as tls:
            server = peer_spiffe_id(tls)
            if server != expect:
                print(json.dumps({"error": f"reached {server}, not {expect}"}))
                return 1
            reply = tls.recv(4096).decode()
    workload.close()
    print(json.dumps({"me": workload.svid.spiffe_id, "server": server, "reply": reply}))
    return 0 if reply.startswith("hello ") else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sides = parser.add_subparsers(dest="side", required=True)
    serving = sides.add_parser("serve")
    serving.add_argument("--port", type=int, required=True)
    serving.add_argument("--allow", action="append", default=[], help="A SPIFFE ID to answer.")
    serving.add_argument("--connections", type=int, default=1)
    calling = sides.add_parser("call")
    calling.add_argument("--port", type=int, required=True)
    calling.add_argument("--expect", required=True, help="The api's SPIFFE ID.")
    options = parser.parse_args()
    if options.side == "serve":
        return serve(options.port, options.allow, options.connections)
    return call(options.port, options.expect)


if __name__ == "__main__":
    sys.exit(main())
