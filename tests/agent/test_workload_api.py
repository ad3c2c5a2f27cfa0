"""The Workload API of a real agent, judged by py-spiffe, PyJWT, cryptography and openssl.

Workloads: this test process (root, uid 0) and children under uid 1000 and
65534 (nobody), told apart only by what the kernel says about them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store
from spiffe import WorkloadApiClient
from spiffe._proto import workload_pb2, workload_pb2_grpc
from spiffe.spiffe_id.spiffe_id import SpiffeId, TrustDomain

from tests.agent.conftest import OTHER_UID, TRUST_DOMAIN, AgentProcess, parented_entry, run_as
from tests.server.conftest import Server

ROOT_ID = f"spiffe://{TRUST_DOMAIN}/root-workload"
WEB_ID = f"spiffe://{TRUST_DOMAIN}/web"


@pytest.fixture(scope="module")
def entries(server: Server, agent: AgentProcess) -> dict[str, Any]:
    made = {
        "root": parented_entry(
            server, agent.spiffe_id, "root-workload", ["unix:uid:0"], audiences=["svc", "other"]
        ),
        "web": parented_entry(server, agent.spiffe_id, "web", [f"unix:uid:{OTHER_UID}"]),
    }
    agent.wait_ready(svids=2)
    return made


@pytest.fixture
def client(agent: AgentProcess, entries: dict[str, Any]) -> Any:
    made = WorkloadApiClient(socket_path=agent.address, default_timeout=20)
    yield made
    made.close()


def test_fetch_x509_svid_is_a_verifiable_svid_with_its_key(client: Any, server: Server) -> None:
    svid = client.fetch_x509_svid()
    assert str(svid.spiffe_id) == ROOT_ID
    leaf, *intermediates = svid.cert_chain
    # The key is the leaf's.
    assert svid.private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    roots = x509.load_pem_x509_certificates(server.request("GET", "/v1/bundle?format=pem")[2])
    verifier = PolicyBuilder().store(Store(roots)).build_client_verifier()
    verified = verifier.verify(leaf, intermediates)
    assert [str(u.value) for u in verified.subjects or []] == [ROOT_ID]


def test_chain_verifies_with_openssl(client: Any, tmp_path: Path) -> None:
    context = client.fetch_x509_context()
    svid = context.default_svid
    bundle = context.x509_bundle_set.get_bundle_for_trust_domain(TrustDomain(TRUST_DOMAIN))
    pem = serialization.Encoding.PEM
    (tmp_path / "leaf.pem").write_bytes(svid.leaf.public_bytes(pem))
    (tmp_path / "chain.pem").write_bytes(b"".join(c.public_bytes(pem) for c in svid.cert_chain[1:]))
    (tmp_path / "roots.pem").write_bytes(
        b"".join(c.public_bytes(pem) for c in bundle.x509_authorities)
    )
    done = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(tmp_path / "roots.pem"),
            "-untrusted",
            str(tmp_path / "chain.pem"),
            str(tmp_path / "leaf.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_fetch_x509_bundles_has_the_servers_roots(client: Any, server: Server) -> None:
    bundles = client.fetch_x509_bundles()
    bundle = bundles.get_bundle_for_trust_domain(TrustDomain(TRUST_DOMAIN))
    roots = x509.load_pem_x509_certificates(server.request("GET", "/v1/bundle?format=pem")[2])
    assert set(bundle.x509_authorities) == set(roots)


def test_jwt_svid_fetched_validates_with_pyjwt_and_the_agent(client: Any) -> None:
    svid = client.fetch_jwt_svid(audience={"svc"})
    assert str(svid.spiffe_id) == ROOT_ID
    bundles = client.fetch_jwt_bundles()
    bundle = bundles.get_bundle_for_trust_domain(TrustDomain(TRUST_DOMAIN))
    kid = jwt.get_unverified_header(svid.token)["kid"]
    key = bundle.get_jwt_authority(kid)
    claims = jwt.decode(
        svid.token, key=key, algorithms=["ES256", "ES384", "RS256", "PS256"], audience="svc"
    )
    assert claims["sub"] == ROOT_ID
    validated = client.validate_jwt_svid(svid.token, "svc")
    assert str(validated.spiffe_id) == ROOT_ID
    # Cached per audience set until about half its life: asked again, the same token.
    assert client.fetch_jwt_svid(audience={"svc"}).token == svid.token
    other = client.fetch_jwt_svid(audience={"svc", "other"})
    assert other.token != svid.token


def test_jwt_svid_for_a_named_spiffe_id(client: Any) -> None:
    svid = client.fetch_jwt_svid(audience={"svc"}, subject=SpiffeId(ROOT_ID))
    assert str(svid.spiffe_id) == ROOT_ID


def test_validate_refuses_the_wrong_audience(client: Any) -> None:
    token = client.fetch_jwt_svid(audience={"svc"}).token
    with pytest.raises(Exception, match="audience"):
        client.validate_jwt_svid(token, "somebody-else")


def test_another_uid_gets_its_own_identity(agent: AgentProcess, entries: dict[str, Any]) -> None:
    got = run_as(
        OTHER_UID,
        """
        import json
        from spiffe import WorkloadApiClient
        client = WorkloadApiClient(default_timeout=20)
        svid = client.fetch_x509_svid()
        jwt_svid = client.fetch_jwt_svid(audience={"svc"})
        print(json.dumps({"x509": str(svid.spiffe_id), "jwt": str(jwt_svid.spiffe_id)}))
        """,
        agent.socket,
    )
    assert got == {"x509": WEB_ID, "jwt": WEB_ID}


def test_a_uid_without_an_entry_is_denied(agent: AgentProcess, entries: dict[str, Any]) -> None:
    got = run_as(
        65534,
        """
        import json, os, grpc
        from spiffe._proto import workload_pb2 as pb, workload_pb2_grpc as pb_grpc
        stub = pb_grpc.SpiffeWorkloadAPIStub(
            grpc.insecure_channel(os.environ["SPIFFE_ENDPOINT_SOCKET"])
        )
        header = [("workload.spiffe.io", "true")]
        codes = {}
        try:
            next(stub.FetchX509SVID(pb.X509SVIDRequest(), metadata=header, timeout=20))
        except grpc.RpcError as error:
            codes["x509"] = error.code().name
        try:
            stub.FetchJWTSVID(pb.JWTSVIDRequest(audience=["svc"]), metadata=header, timeout=20)
        except grpc.RpcError as error:
            codes["jwt"] = error.code().name
        print(json.dumps(codes))
        """,
        agent.socket,
    )
    assert got == {"x509": "PERMISSION_DENIED", "jwt": "PERMISSION_DENIED"}


def _stub(agent: AgentProcess) -> Any:
    return workload_pb2_grpc.SpiffeWorkloadAPIStub(grpc.insecure_channel(agent.address))


@pytest.mark.parametrize("metadata", [[], [("workload.spiffe.io", "false")]])
def test_no_security_header_is_invalid_argument(
    agent: AgentProcess, entries: dict[str, Any], metadata: list[tuple[str, str]]
) -> None:
    stub = _stub(agent)
    with pytest.raises(grpc.RpcError) as raised:
        next(stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=metadata, timeout=10))
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as raised:
        stub.FetchJWTSVID(
            workload_pb2.JWTSVIDRequest(audience=["svc"]), metadata=metadata, timeout=10
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_jwt_svid_needs_an_audience(agent: AgentProcess, entries: dict[str, Any]) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        _stub(agent).FetchJWTSVID(
            workload_pb2.JWTSVIDRequest(), metadata=[("workload.spiffe.io", "true")], timeout=10
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_jwt_bundles_have_every_key_with_a_kid(client: Any) -> None:
    bundle = client.fetch_jwt_bundles().get_bundle_for_trust_domain(TrustDomain(TRUST_DOMAIN))
    assert bundle.jwt_authorities
    assert all(kid for kid in bundle.jwt_authorities)


def test_streams_stay_open(agent: AgentProcess, entries: dict[str, Any]) -> None:
    stream = _stub(agent).FetchX509SVID(
        workload_pb2.X509SVIDRequest(), metadata=[("workload.spiffe.io", "true")], timeout=3
    )
    first = next(stream)
    assert first.svids[0].spiffe_id == ROOT_ID
    # Nothing changes in 3 s: the stream is still open when the deadline ends it.
    with pytest.raises(grpc.RpcError) as raised:
        next(stream)
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
