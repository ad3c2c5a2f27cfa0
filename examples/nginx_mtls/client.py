"""Call the nginx example over mTLS with an SVID kept current in a directory.

    python client.py --svid DIR --url https://localhost:PORT/ [--seconds N] [--every S]

DIR is what ``idmint svid x509 --watch --out DIR`` keeps current; the
contexts of ``idmint.workload.from_directory`` follow its files, so each
request presents the SVID of the moment and trusts the bundle of the moment.
Prints one JSON line: requests made and failed (with the first errors).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import time
from urllib.parse import urlsplit

from idmint.workload import from_directory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--svid", required=True, help="directory with svid.pem, svid.key, bundle.pem"
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=0.05, help="pause between requests")
    parser.add_argument("--until-file", help="stop early once this file exists")
    args = parser.parse_args()
    target = urlsplit(args.url)
    workload = from_directory(args.svid, poll_seconds=0.2)
    # One context for every request: it follows the files as the helper rewrites them.
    context = workload.client_context()
    made = failed = 0
    errors: list[str] = []
    deadline = time.monotonic() + args.seconds
    try:
        while time.monotonic() < deadline:
            if args.until_file and made and os.path.exists(args.until_file):
                break
            made += 1
            connection = http.client.HTTPSConnection(
                target.hostname or "localhost",
                target.port or 443,
                context=context,
                timeout=10,
            )
            try:
                connection.request("GET", target.path or "/")
                response = connection.getresponse()
                body = response.read()
                if response.status != 200 or b"client certificate SUCCESS" not in body:
                    raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
            except Exception as error:  # counted and reported: that is the point
                failed += 1
                if len(errors) < 5:
                    errors.append(f"{type(error).__name__}: {error}")
            finally:
                connection.close()
            time.sleep(args.every)
    finally:
        workload.close()
    print(json.dumps({"requests": made, "failed": failed, "errors": errors}))
    return 1 if failed or not made else 0


if __name__ == "__main__":
    raise SystemExit(main())
