"""Fetching the CI platform's own OIDC token inside a pipeline job.

GitHub Actions: a job with ``permissions: id-token: write`` has
``ACTIONS_ID_TOKEN_REQUEST_URL`` and ``ACTIONS_ID_TOKEN_REQUEST_TOKEN``; a GET
on the URL (plus ``&audience=``) with the request token as bearer returns
``{"value": "<JWT>"}``. GitLab CI: the job declares an ``id_tokens`` entry
with its ``aud``; the token arrives in the environment variable it names.
No static secret is involved either way.
"""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request

from idmint.errors import ClientError

GITHUB_URL = "ACTIONS_ID_TOKEN_REQUEST_URL"
GITHUB_TOKEN = "ACTIONS_ID_TOKEN_REQUEST_TOKEN"
GITLAB_DEFAULT_VARIABLE = "IDMINT_ID_TOKEN"


class CITokenUnavailable(ClientError):
    """The CI platform's OIDC token could not be obtained."""

    code = "ci-token-unavailable"


def github_token(audience: str) -> str:
    url, bearer = os.environ.get(GITHUB_URL), os.environ.get(GITHUB_TOKEN)
    if not url or not bearer:
        raise CITokenUnavailable(
            f"{GITHUB_URL} / {GITHUB_TOKEN} are not set: give the job "
            "'permissions: id-token: write'"
        )
    separator = "&" if "?" in url else "?"
    request = urllib.request.Request(
        f"{url}{separator}audience={urllib.parse.quote(audience)}",
        headers={"Authorization": f"Bearer {bearer}", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            value = json.loads(response.read()).get("value")
    except (OSError, ValueError) as exc:
        raise CITokenUnavailable(f"GitHub's OIDC token endpoint failed: {exc}") from None
    if not isinstance(value, str) or not value:
        raise CITokenUnavailable("GitHub's OIDC token endpoint returned no token")
    return value


def gitlab_token(variable: str = GITLAB_DEFAULT_VARIABLE) -> str:
    value = os.environ.get(variable)
    if not value:
        raise CITokenUnavailable(
            f"${variable} is empty: declare it under id_tokens in the job with "
            "the aud idmint expects"
        )
    return value
