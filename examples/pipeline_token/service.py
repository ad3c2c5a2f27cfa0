"""A service that accepts JWT-SVIDs, trusting idmint through OIDC discovery.

    python service.py --issuer https://idmint:8443 --ca bundle.pem --trust-domain TD \
        --audience https://deploy.example --allow spiffe://TD/ci/deploy --port 8080

GET / with ``Authorization: Bearer <JWT-SVID>`` answers 200 for an allowed
SPIFFE ID, 401 otherwise. It prints its port on the first line of stdout.
"""

from __future__ import annotations

import argparse
import http.server
import json
import ssl
import sys
import urllib.request
from datetime import UTC, datetime
from typing import Any

from idmint.ca.jose.jwtsvid import InvalidJWTSVID, jwks_keys, validate_jwt_svid
from idmint.ca.spiffe_id import TrustDomain


def fetch(url: str, context: ssl.SSLContext) -> Any:
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        return json.loads(response.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--ca", required=True, help="CA bundle for the issuer's HTTPS")
    parser.add_argument("--trust-domain", required=True)
    parser.add_argument("--audience", required=True)
    parser.add_argument("--allow", action="append", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    context = ssl.create_default_context(cafile=args.ca)
    discovery = fetch(f"{args.issuer.rstrip('/')}/.well-known/openid-configuration", context)
    if discovery["issuer"] != args.issuer.rstrip("/"):
        sys.exit(f"discovery names issuer {discovery['issuer']}, expected {args.issuer}")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            # OIDC JWKS keys carry use=sig; re-read each time so rotations are picked up.
            jwks = fetch(discovery["jwks_uri"], context)
            keys = jwks_keys(jwks, use="sig")
            try:
                claims = validate_jwt_svid(
                    token, args.audience, keys, TrustDomain(args.trust_domain), datetime.now(UTC)
                )
                allowed = claims["sub"] in args.allow and claims.get("iss") == discovery["issuer"]
            except InvalidJWTSVID as exc:
                self._answer(401, f"refused: {exc}")
                return
            if allowed:
                self._answer(200, f"deploy accepted from {claims['sub']}")
            else:
                self._answer(403, f"{claims['sub']} may not deploy")

        def _answer(self, status: int, text: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(text.encode() + b"\n")

        def log_message(self, *args: object) -> None:
            pass  # keep stderr for our own output

    httpd = http.server.HTTPServer(("127.0.0.1", args.port), Handler)
    print(httpd.server_port, flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
