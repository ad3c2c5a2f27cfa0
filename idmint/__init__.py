"""idmint: short-lived workload identity with CA keys behind PKCS#11."""

__version__ = "0.1.0"
