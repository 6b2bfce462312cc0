"""ORCH_SIGNING_KEY / _CERT / _CERT_STORE: all three or none, each one a file Celery can use.

The key and certificates are made with the openssl commands docs/operations/security.md
shows; the settings read them with Celery's own classes, so a configuration that passes here
is one every signing role and every verifying worker accepts.
"""

from __future__ import annotations

import datetime
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from orchestrator.config import SIGNING_VARIABLES, load_settings
from orchestrator.errors import ConfigError
from orchestrator.runtime.celeryconf import celery_config

URL = "redis://127.0.0.1:1/0"  # never connected to: settings only


@dataclass(frozen=True)
class Identity:
    """A signer: its private key, its certificate, and a store (directory) trusting it."""

    key: Path
    cert: Path
    store: Path

    def settings(self) -> dict[str, str]:
        return {
            "signing_key": str(self.key),
            "signing_cert": str(self.cert),
            "signing_cert_store": str(self.store),
        }

    def env(self) -> dict[str, str]:
        return dict(zip(SIGNING_VARIABLES, self.settings().values(), strict=True))


def openssl_identity(directory: Path, name: str) -> Identity:
    """A test key and self-signed certificate, exactly as docs/operations/security.md makes them:

        openssl req -x509 -newkey rsa:2048 -sha256 -days 365 -nodes \\
          -keyout NAME.key -out NAME.crt -subj "/CN=NAME"
        mkdir -p certs && cp NAME.crt certs/
    """
    directory.mkdir(parents=True, exist_ok=True)
    key, cert, store = directory / f"{name}.key", directory / f"{name}.crt", directory / "certs"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-sha256",
            "-days",
            "365",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            f"/CN={name}",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    store.mkdir(exist_ok=True)
    (store / cert.name).write_bytes(cert.read_bytes())
    return Identity(key, cert, store)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    root = tmp_path_factory.mktemp("pki")
    return {name: openssl_identity(root / name, name) for name in ("hive", "stranger")}


def refusal(**fields: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(redis_url=URL, **fields)
    return str(info.value)


def test_signing_is_off_by_default_and_the_wire_stays_json() -> None:
    settings = load_settings(redis_url=URL)
    assert not settings.signing_enabled
    conf = celery_config(settings)
    assert (conf["task_serializer"], conf["accept_content"]) == ("json", ["json"])
    assert not any(name.startswith("security_") for name in conf)


def test_all_three_set_turn_signing_on_for_tasks_and_remote_control(
    pki: dict[str, Identity],
) -> None:
    hive = pki["hive"]
    settings = load_settings(redis_url=URL, **hive.settings())
    assert settings.signing_enabled
    conf = celery_config(settings)
    # Tasks and (through the task serializer) remote control are signed; results and
    # events stay JSON.
    assert (conf["task_serializer"], conf["accept_content"]) == ("auth", ["auth"])
    assert (conf["result_serializer"], conf["result_accept_content"]) == ("json", ["json"])
    assert conf["event_serializer"] == "json"
    assert (conf["security_key"], conf["security_certificate"], conf["security_cert_store"]) == (
        str(hive.key),
        str(hive.cert),
        str(hive.store),
    )
    assert conf["security_digest"] == "sha256"


def test_the_variables_are_read_from_the_environment(
    pki: dict[str, Identity], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in pki["hive"].env().items():
        monkeypatch.setenv(name, value)
    assert load_settings(redis_url=URL).signing_enabled
    monkeypatch.delenv("ORCH_SIGNING_CERT_STORE")
    assert "missing: ORCH_SIGNING_CERT_STORE" in refusal()


def test_a_store_may_be_one_pem_file(pki: dict[str, Identity]) -> None:
    hive = pki["hive"]
    fields = {**hive.settings(), "signing_cert_store": str(hive.cert)}
    assert load_settings(redis_url=URL, **fields).signing_enabled


@pytest.mark.parametrize(
    "given",
    [
        ("signing_key",),
        ("signing_cert",),
        ("signing_cert_store",),
        ("signing_key", "signing_cert"),
        ("signing_key", "signing_cert_store"),
        ("signing_cert", "signing_cert_store"),
    ],
)
def test_a_partial_set_is_refused_naming_what_is_missing(
    pki: dict[str, Identity], given: tuple[str, ...]
) -> None:
    fields = {k: v for k, v in pki["hive"].settings().items() if k in given}
    message = refusal(**fields)
    missing = [f"ORCH_{k.upper()}" for k in pki["hive"].settings() if k not in given]
    assert f"missing: {', '.join(missing)})" in message
    assert "must be set together" in message


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("signing_key", "ORCH_SIGNING_KEY: no such file"),
        ("signing_cert", "ORCH_SIGNING_CERT: no such file"),
        ("signing_cert_store", "ORCH_SIGNING_CERT_STORE: no such file or directory"),
    ],
)
def test_a_path_that_does_not_exist_is_refused_naming_the_variable(
    pki: dict[str, Identity], tmp_path: Path, field: str, expected: str
) -> None:
    fields = {**pki["hive"].settings(), field: str(tmp_path / "nowhere.pem")}
    message = refusal(**fields)
    assert expected in message and "nowhere.pem" in message


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("signing_key", "ORCH_SIGNING_KEY: not an unencrypted PEM RSA private key"),
        ("signing_cert", "ORCH_SIGNING_CERT: not a PEM RSA certificate"),
        ("signing_cert_store", "ORCH_SIGNING_CERT_STORE: not a store of PEM RSA certificates"),
    ],
)
def test_a_file_that_does_not_parse_is_refused_naming_the_variable(
    pki: dict[str, Identity], tmp_path: Path, field: str, expected: str
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"\x00\xff not a pem file")
    assert expected in refusal(**{**pki["hive"].settings(), field: str(junk)})


def test_a_certificate_given_as_the_key_is_refused(pki: dict[str, Identity]) -> None:
    hive = pki["hive"]
    message = refusal(**{**hive.settings(), "signing_key": str(hive.cert)})
    assert "ORCH_SIGNING_KEY: not an unencrypted PEM RSA private key" in message


def test_an_encrypted_key_is_refused_not_a_traceback(
    pki: dict[str, Identity], tmp_path: Path
) -> None:
    locked = tmp_path / "locked.key"
    done = subprocess.run(
        [
            "openssl",
            "pkey",
            "-in",
            str(pki["hive"].key),
            "-aes256",
            "-passout",
            "pass:secret",
            "-out",
            str(locked),
        ],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    message = refusal(**{**pki["hive"].settings(), "signing_key": str(locked)})
    assert "ORCH_SIGNING_KEY: not an unencrypted PEM RSA private key" in message


def test_a_key_that_is_not_rsa_is_refused(pki: dict[str, Identity], tmp_path: Path) -> None:
    ec = tmp_path / "ec.key"
    subprocess.run(
        [
            "openssl",
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            str(ec),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    message = refusal(**{**pki["hive"].settings(), "signing_key": str(ec)})
    assert "ORCH_SIGNING_KEY: not an unencrypted PEM RSA private key" in message
    assert "Non-RSA" in message


def test_a_key_of_another_certificate_is_refused(pki: dict[str, Identity]) -> None:
    fields = {**pki["hive"].settings(), "signing_key": str(pki["stranger"].key)}
    assert "ORCH_SIGNING_KEY is not the key of ORCH_SIGNING_CERT" in refusal(**fields)


def test_a_store_that_does_not_trust_the_own_certificate_is_refused(
    pki: dict[str, Identity],
) -> None:
    fields = {**pki["hive"].settings(), "signing_cert_store": str(pki["stranger"].store)}
    assert "ORCH_SIGNING_CERT_STORE does not hold ORCH_SIGNING_CERT" in refusal(**fields)


def test_an_empty_store_is_refused(pki: dict[str, Identity], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    fields = {**pki["hive"].settings(), "signing_cert_store": str(empty)}
    assert "ORCH_SIGNING_CERT_STORE: holds no certificate" in refusal(**fields)


def test_a_store_with_two_signers_trusts_both(pki: dict[str, Identity], tmp_path: Path) -> None:
    both = tmp_path / "both"
    both.mkdir()
    for identity in pki.values():
        (both / identity.cert.name).write_bytes(identity.cert.read_bytes())
    for identity in pki.values():
        fields = {**identity.settings(), "signing_cert_store": str(both)}
        assert load_settings(redis_url=URL, **fields).signing_enabled


def test_an_expired_certificate_is_refused(pki: dict[str, Identity], tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pki["hive"].key.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=30))
        .not_valid_after(now - datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    expired = tmp_path / "expired.crt"
    expired.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    message = refusal(**{**pki["hive"].settings(), "signing_cert": str(expired)})
    assert "ORCH_SIGNING_CERT: the certificate has expired" in message
    store = tmp_path / "expired-store"
    store.mkdir()
    (store / "expired.crt").write_bytes(expired.read_bytes())
    message = refusal(**{**pki["hive"].settings(), "signing_cert_store": str(store)})
    assert "ORCH_SIGNING_CERT_STORE: not a store of PEM RSA certificates" in message
    assert "Expired certificate" in message
