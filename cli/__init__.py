"""The ``idmint`` command line (click)."""
