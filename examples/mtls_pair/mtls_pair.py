"""Two services that fetch SVIDs at startup and talk over mTLS (see README.md)."""

from __future__ import annotations

import argparse
import socket
import sys
import threading

from idmint.workload import peer_spiffe_id, start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", required=True)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--api-token", required=True)
    parser.add_argument("--web-token", required=True)
    parser.add_argument("--allow", action="append", required=True, help="SPIFFE IDs api serves")
    args = parser.parse_args()

    api = start(args.server, args.bundle, {"type": "join_token", "token": args.api_token})
    web = start(args.server, args.bundle, {"type": "join_token", "token": args.web_token})
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server_context = api.server_context()
    assert api.svid is not None  # start() attested
    api_id = api.svid.spiffe_id

    def serve_one() -> None:
        connection, _ = listener.accept()
        with server_context.wrap_socket(connection, server_side=True) as tls:
            caller = peer_spiffe_id(tls)
            if caller in args.allow:
                tls.sendall(f"hello {caller}, this is {api_id}".encode())
            else:
                tls.sendall(f"denied: {caller} is not allowed".encode())

    thread = threading.Thread(target=serve_one)
    thread.start()
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with web.client_context().wrap_socket(raw) as tls:
            server_id = peer_spiffe_id(tls)
            answer = tls.recv(200).decode()
    thread.join()
    listener.close()
    print(f"web called {server_id}: {answer}")
    api.close()
    web.close()
    return 0 if answer.startswith("hello") else 1


if __name__ == "__main__":
    sys.exit(main())
