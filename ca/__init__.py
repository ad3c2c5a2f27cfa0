"""Trust domain, authorities and SVID issuance."""
