"""A service that accepts JWT-SVIDs, trusting idmint through OIDC discovery.

    python service.py --issuer https://idmint:8443 --ca bundle.pem --trust-domain TD \
        --audience https://deploy.example --allow spiffe://TD/ci/deploy --port 8080

GET / with ``Authorization: Bearer <JWT-SVID>`` answers 200 for an allowed
SPIFFE ID, 401 otherwise. It prints its port on the first line of stdout.

It uses nothing of idmint's: PyJWT (``pip install 'pyjwt[crypto]'``) fetches
the JWKS named by discovery and checks signature, audience, issuer and
expiry, as any OIDC consumer would.
"""

from __future__ import annotations

import argparse
import http.server
import json
import ssl
import sys
import urllib.request
from typing import Any

import jwt

#: The algorithms a JWT-SVID may use (SPIFFE JWT-SVID section 3).
ALGORITHMS = ["ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]


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

    # Caches the keys; a token with an unknown kid (after a rotation) re-reads the JWKS.
    keys = jwt.PyJWKClient(discovery["jwks_uri"], ssl_context=context, lifespan=60)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            try:
                claims = jwt.decode(
                    token,
                    keys.get_signing_key_from_jwt(token).key,
                    algorithms=ALGORITHMS,
                    audience=args.audience,
                    issuer=discovery["issuer"],
                    options={"require": ["sub", "aud", "exp", "iat"]},
                )
            except jwt.PyJWTError as exc:
                self._answer(401, f"refused: {exc}")
                return
            subject = str(claims["sub"])
            if not subject.startswith(f"spiffe://{args.trust_domain}/"):
                self._answer(401, f"refused: {subject} is not in trust domain {args.trust_domain}")
            elif subject in args.allow:
                self._answer(200, f"deploy accepted from {subject}")
            else:
                self._answer(403, f"{subject} may not deploy")

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
