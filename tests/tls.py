"""Throwaway TLS material for tests: a CA and the certificates it signs, made with `openssl`."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    """A certificate authority and a certificate it signed, as PEM files."""

    ca_cert: Path
    cert: Path
    key: Path
    ca_key: Path


def _openssl(*args: object) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def _signed(ca_cert: Path, ca_key: Path, folder: Path, role: str, usage: str) -> TlsFiles:
    """A key and a certificate for 127.0.0.1 and localhost that the CA signed."""
    key, csr, cert = folder / f"{role}.key", folder / f"{role}.csr", folder / f"{role}.crt"
    ext = folder / f"{role}.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage={usage}\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        *("req", "-new", "-nodes", "-newkey", "rsa:2048"),
        *("-keyout", key, "-out", csr, "-subj", f"/CN={role}"),
    )
    _openssl(
        *("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial"),
        *("-days", "2", "-extfile", ext, "-out", cert),
    )
    return TlsFiles(ca_cert=ca_cert, cert=cert, key=key, ca_key=ca_key)


def make_tls_files(folder: str | os.PathLike[str], name: str = "Test") -> TlsFiles:
    """A throwaway CA (`name`) and a server certificate it signed for 127.0.0.1 and localhost,
    made with the `openssl` command (what an operator would run; see
    docs/operations/security.md)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = folder / "ca.key", folder / "ca.crt"
    _openssl(
        *("req", "-x509", "-new", "-nodes", "-newkey", "rsa:2048", "-days", "2"),
        *("-keyout", ca_key, "-out", ca_cert, "-subj", f"/CN={name} CA"),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
    )
    return _signed(ca_cert, ca_key, folder, "server", "serverAuth")


def make_client_cert(tls: TlsFiles, folder: str | os.PathLike[str]) -> TlsFiles:
    """A client certificate signed by the same CA, for a server with --tls-auth-clients yes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return _signed(tls.ca_cert, tls.ca_key, folder, "client", "clientAuth")
