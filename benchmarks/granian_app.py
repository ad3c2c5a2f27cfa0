"""idmint's WSGI app for granian, for ``benchmarks/http.py --stacks granian``.

A measurement of another HTTP/TLS front (issue 14), not a supported way to
serve: granian runs the same Flask app in its workers, against the writer
process of an ``idmint server`` running beside it on the same data
directory (``IDMINT_DATA_DIR``, ``IDMINT_WRITER_SOCKET``).
"""

from __future__ import annotations

import os
from pathlib import Path

from idmint.ca.api import create_app
from idmint.ca.config import load

# No rate limits, as the benchmark's gunicorn stacks (idmint server --rate-limit none).
app = create_app(
    load(Path(os.environ["IDMINT_DATA_DIR"])),
    writer_socket=os.environ["IDMINT_WRITER_SOCKET"],
    rate_limit=None,
)
