"""Join tokens as users handle them: on command lines and in scripts."""

from __future__ import annotations

import argparse

from idmint.attestation.join_token import TOKEN_PREFIX, new_token


def test_tokens_never_look_like_an_option() -> None:
    # One token in 64 began with "-" before the prefix, and argparse then
    # refused `--join-token <token>` (seen in the examples' test).
    parser = argparse.ArgumentParser()
    parser.add_argument("--join-token", required=True)
    for _ in range(2000):
        token = new_token()
        assert token.startswith(TOKEN_PREFIX)
        assert parser.parse_args(["--join-token", token]).join_token == token


def test_tokens_are_distinct_and_carry_256_bits() -> None:
    tokens = {new_token() for _ in range(1000)}
    assert len(tokens) == 1000
    assert all(len(t) - len(TOKEN_PREFIX) == 43 for t in tokens)
