"""Issuance anomaly response: per-identity baselines that observe, throttle, step up or deny.

- :mod:`baseline`: what an entry's issuance usually looks like (EWMA rate
  per minute with a deviation band, renewal cadence, seen source networks,
  audiences and attestation sources), as plain statistics an operator can
  read;
- :mod:`policy`: signals from a request against its baseline, and the
  action they call for (observe < throttle < step-up < deny), per entry or
  trust-domain default;
- :mod:`store`: the baselines in the database (table ``anomaly_baselines``)
  so every replica shares one;
- :mod:`monitor`: the one call the issuer makes before it signs.
"""
