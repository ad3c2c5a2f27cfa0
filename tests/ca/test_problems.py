"""Every error class of the tree has its own HTTP status and problem type URI.

The classes are found by importing every module of the installed package,
so a new error class without an entry in ca/api/problems.py fails here.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import idmint
from idmint.attestation import errors as attestation
from idmint.ca import errors as ca
from idmint.ca.api.problems import PROBLEMS, TYPE_BASE, Problem, problem_for
from idmint.errors import ClientError, IdmintError
from idmint.hsm import errors as hsm

SERVER_SIDE = ("idmint.ca.", "idmint.hsm.", "idmint.attestation.", "idmint.errors")


def _tree() -> list[type[IdmintError]]:
    for module in pkgutil.walk_packages(idmint.__path__, "idmint."):
        importlib.import_module(module.name)
    found: list[type[IdmintError]] = []
    pending: list[type[IdmintError]] = [IdmintError]
    while pending:
        cls = pending.pop()
        if cls.__module__.startswith("idmint.") and cls not in found:
            found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


TREE = _tree()


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def test_the_tree_was_found() -> None:
    # A walk that imported nothing would make the checks below pass vacuously.
    names = {_name(cls) for cls in TREE}
    assert len(TREE) >= 40
    assert "idmint.ca.errors.InvalidCSR" in names
    assert "idmint.client.WorkloadError" in names


def test_every_server_side_class_has_its_own_entry() -> None:
    missing = [
        _name(cls)
        for cls in TREE
        if cls not in PROBLEMS and not (issubclass(cls, ClientError) and cls is not ClientError)
    ]
    assert missing == []


def test_client_errors_are_raised_on_the_client_side_only() -> None:
    # ClientError's subclasses are exempt from the table only because no
    # server code raises them: none may live in a server-side package.
    client = [cls for cls in TREE if issubclass(cls, ClientError) and cls is not ClientError]
    assert client, "the CLI and the workload client have error classes"
    for cls in client:
        assert not cls.__module__.startswith(SERVER_SIDE), _name(cls)
        assert cls not in PROBLEMS, _name(cls)


def test_every_class_has_its_own_code_and_type_uri() -> None:
    codes: dict[str, str] = {}
    for cls in TREE:
        assert "code" in vars(cls), f"{_name(cls)} inherits its code"
        code = vars(cls)["code"]
        assert code not in codes, f"{_name(cls)} and {codes[code]} share the code {code!r}"
        codes[code] = _name(cls)
    for cls, found in PROBLEMS.items():
        assert found.type == TYPE_BASE + vars(cls)["code"], _name(cls)
    assert len({p.type for p in PROBLEMS.values()}) == len(PROBLEMS)


def test_statuses_are_errors() -> None:
    for cls, found in PROBLEMS.items():
        assert 400 <= found.status < 600, _name(cls)


@pytest.mark.parametrize(
    ("cls", "status"),
    [
        # Server faults: never blamed on the caller.
        (IdmintError, 500),
        (ca.CAError, 500),
        (hsm.HSMError, 503),
        (hsm.UnsupportedMechanism, 500),
        (hsm.CryptokiError, 503),
        (ca.WriterUnavailable, 503),
        (ca.AuditChainBroken, 500),
        (ca.CRLBuildError, 500),
        (attestation.AttestationError, 500),
        (attestation.AttestationUnavailable, 503),
        # The caller's input or rights.
        (ca.InvalidSpiffeID, 400),
        (ca.InvalidCSR, 400),
        (ca.InvalidRevocationReason, 400),
        (attestation.AttestationFailed, 401),
        (attestation.EvidenceReplayed, 401),
        (ca.CredentialNotFound, 404),
        (ca.JoinTokenNotFound, 404),
        (ca.RateLimited, 429),
    ],
)
def test_faults_are_5xx_and_bad_input_4xx(cls: type[IdmintError], status: int) -> None:
    assert problem_for(cls).status == status


def test_the_tree_has_one_root() -> None:
    from idmint.hsm.errors import CryptokiError

    assert issubclass(CryptokiError, hsm.HSMError)
    assert issubclass(ca.InvalidSpiffeID, ca.CAError)
    assert not issubclass(CryptokiError, RuntimeError)


def test_a_subclass_takes_its_nearest_base_entry() -> None:
    class Narrower(ca.InvalidCSR):
        """A narrower CSR refusal."""

    class Deeper(hsm.SessionLost):
        """A deeper session loss."""

    assert problem_for(Narrower) == PROBLEMS[ca.InvalidCSR]
    assert problem_for(Deeper) == Problem(503, TYPE_BASE + "hsm-session-lost")
