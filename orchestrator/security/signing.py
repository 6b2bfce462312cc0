"""Message signing's files (ORCH_SIGNING_*), loaded and checked as Celery will read them.

This role's key and certificate, and the store of certificates it trusts: what passes here is
what Celery's `auth` serializer accepts."""

from __future__ import annotations

import os
from typing import Any

#: The signing variables, all set or none (Celery's `auth` serializer, see celeryconf).
SIGNING_VARIABLES = ("ORCH_SIGNING_KEY", "ORCH_SIGNING_CERT", "ORCH_SIGNING_CERT_STORE")
#: Digest of the signatures (Celery's security_digest).
SIGNING_DIGEST = "sha256"


def load_signing_key(path: str) -> Any:
    """This role's private key as Celery's `auth` serializer reads it (celery.security), so
    what passes here is what `app.setup_security()` accepts: an unencrypted PEM RSA key."""
    from celery.exceptions import SecurityError
    from celery.security.key import PrivateKey

    if not os.path.isfile(path):
        raise ValueError("no such file")
    try:
        with open(path) as f:
            return PrivateKey(f.read())
    except (SecurityError, OSError, TypeError, ValueError) as exc:
        raise ValueError(f"not an unencrypted PEM RSA private key ({exc})") from None


def load_signing_cert(path: str) -> Any:
    """This role's certificate (PEM, RSA, not expired), as Celery reads it."""
    from celery.exceptions import SecurityError
    from celery.security.certificate import Certificate

    if not os.path.isfile(path):
        raise ValueError("no such file")
    try:
        with open(path) as f:
            cert = Certificate(f.read())
    except (SecurityError, OSError, TypeError, ValueError) as exc:
        raise ValueError(f"not a PEM RSA certificate ({exc})") from None
    if cert.has_expired():
        raise ValueError("the certificate has expired")
    return cert


def load_cert_store(path: str) -> Any:
    """The certificates this role trusts: a PEM file, or a directory of them, as Celery's
    FSCertStore reads it (none expired, no two of one issuer and serial)."""
    from celery.exceptions import SecurityError
    from celery.security.certificate import FSCertStore

    if not os.path.exists(path):
        raise ValueError("no such file or directory")
    try:
        store = FSCertStore(path)
    except (SecurityError, OSError, TypeError, ValueError) as exc:
        raise ValueError(f"not a store of PEM RSA certificates ({exc})") from None
    if not list(store.itercerts()):
        raise ValueError("holds no certificate")
    return store


def check_signing_identity(key: str, cert: str, store: str) -> str | None:
    """Why this key, certificate and store would not sign and verify messages, or None: the
    key must be the certificate's, and the store must trust the certificate (a role verifies
    what it signs itself: tasks it sends itself, the replies to its remote-control
    requests)."""
    from celery.exceptions import SecurityError
    from celery.security.utils import get_digest_algorithm

    digest = get_digest_algorithm(SIGNING_DIGEST)
    own = load_signing_cert(cert)
    probe = b"hive-orchestrator signing probe"
    signature = load_signing_key(key).sign(probe, digest)
    # A signature that does not verify surfaces as TypeError in Celery 5.7 (its
    # reraise_errors is handed the cryptography.exceptions module, not a class).
    try:
        own.verify(probe, signature, digest)
    except (SecurityError, TypeError):
        return "ORCH_SIGNING_KEY is not the key of ORCH_SIGNING_CERT"
    try:
        load_cert_store(store)[own.get_id()].verify(probe, signature, digest)
    except (SecurityError, TypeError):
        return "ORCH_SIGNING_CERT_STORE does not hold ORCH_SIGNING_CERT"
    return None


#: Each signing variable's loader: what its file must hold.
LOADERS = dict(
    zip(SIGNING_VARIABLES, (load_signing_key, load_signing_cert, load_cert_store), strict=True)
)
