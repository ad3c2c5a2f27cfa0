"""Many threads signing at once on one token: no errors, every signature good.

Before the key store initialised the module with CKF_OS_LOCKING_OK, SoftHSM
ran without its mutexes and this test failed with CKR_GENERAL_ERROR from
C_SignInit or a segmentation fault.
"""

from __future__ import annotations

import hashlib
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256
from pkcs11 import Mechanism

from idmint.hsm import KeyStore, KeyType

THREADS = 8
SIGNATURES_PER_THREAD = 2000


@pytest.mark.slow  # a soak: 16,000 signatures
def test_eight_threads_sign_two_thousand_times_each(keystore: KeyStore) -> None:
    key = keystore.generate(KeyType.EC_P256, "concurrent")
    public = key.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    errors: list[BaseException] = []
    results: list[list[tuple[bytes, bytes]]] = [[] for _ in range(THREADS)]
    start = threading.Barrier(THREADS)

    def work(index: int) -> None:
        start.wait()
        for n in range(SIGNATURES_PER_THREAD):
            message = f"thread {index} message {n}".encode()
            digest = hashlib.sha256(message).digest()
            try:
                raw = keystore.sign(key.key_id, digest, Mechanism.ECDSA)
            except BaseException as exc:  # collected: every failure counts
                errors.append(exc)
                continue
            results[index].append((message, raw))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    signed = [pair for per_thread in results for pair in per_thread]
    assert len(signed) == THREADS * SIGNATURES_PER_THREAD
    for message, raw in signed:
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        public.verify(der, message, ec.ECDSA(SHA256()))
    assert keystore.max_sessions == 8


def test_pool_never_opens_more_than_max_sessions(token, no_pin_env) -> None:
    store = KeyStore(token.hsm_config(max_sessions=2))
    try:
        key = store.generate(KeyType.EC_P256, "bounded")
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        barrier = threading.Barrier(6)
        errors: list[BaseException] = []

        def work() -> None:
            barrier.wait()
            try:
                for _ in range(200):
                    key.sign(b"m", ec.ECDSA(SHA256()))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len(list(store.iter_pool())) <= 2
    finally:
        store.close()
