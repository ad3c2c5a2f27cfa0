"""A stand-in CI OIDC issuer, to try the pipeline example without a CI.

    python fake_ci.py --data-dir DIR [--repository org/app] > ci-token

Makes (once) an RSA key in DIR/fake-ci-key.pem and its JWKS in
DIR/fake-ci-jwks.json, prints a GitHub-Actions-shaped OIDC token
(aud idmint, 5 minutes) on stdout and, on stderr, the idmint.toml section
that makes the server trust this issuer. A real pipeline gets its token from
the CI instead (`idmint svid jwt --ci github|gitlab`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "https://fake-ci.idmint.test"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="the idmint data directory")
    parser.add_argument("--repository", default="org/app")
    parser.add_argument("--ref", default="refs/heads/main")
    args = parser.parse_args()
    directory = Path(args.data_dir)
    key_file, jwks_file = directory / "fake-ci-key.pem", directory / "fake-ci-jwks.json"
    if key_file.exists():
        key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_file.chmod(0o600)
    assert isinstance(key, rsa.RSAPrivateKey)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks_file.write_text(json.dumps({"keys": [{**public, "kid": "fake-ci", "alg": "RS256"}]}))
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": "idmint",
        "sub": f"repo:{args.repository}:ref:{args.ref}",
        "repository": args.repository,
        "ref": args.ref,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": str(uuid.uuid4()),
    }
    print(jwt.encode(claims, key, algorithm="RS256", headers={"kid": "fake-ci"}))
    print(
        f"# add to {directory / 'idmint.toml'} (then restart the server):\n"
        f'[attestation.oidc.ci]\nissuer = "{ISSUER}"\naudience = "idmint"\n'
        f'jwks_file = "{jwks_file.name}"\nclaims = ["sub", "repository", "ref"]',
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
