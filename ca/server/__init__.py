"""The server process: gunicorn workers, the writer process, TLS renewal."""
