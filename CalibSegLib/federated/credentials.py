"""TLS certificates for the SuperLink and authentication keys for SuperNodes (``cryptography``).

What a federation needs, and who keeps what:

* ``ca.crt`` / ``ca.key`` — a private certificate authority. The coordinator keeps
  ``ca.key``; every site gets ``ca.crt`` to verify the SuperLink (``--root-certificates``).
* ``server.pem`` / ``server.key`` — the SuperLink's certificate (signed by the CA, valid for
  the host names and IP addresses the sites connect to) and its private key.
* ``<site>.key`` / ``<site>.pub`` — one P-384 key pair per site in OpenSSH format, the
  form ``flower-supernode --auth-supernode-private-key`` and
  ``flwr supernode register`` read. The site keeps ``<site>.key``; the coordinator
  registers ``<site>.pub`` under the site's name.

Private keys are written with mode 0600; nothing here is ever committed.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from CalibSegLib.errors import CalibSegError
from CalibSegLib.federated.sites import check_site_name

#: Default names the SuperLink certificate is valid for (a local test federation).
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class TLSFiles:
    """Paths of the files :func:`create_certificates` wrote."""

    ca_certificate: str
    ca_key: str
    server_certificate: str
    server_key: str


@dataclass(frozen=True)
class NodeKeys:
    """Paths of one site's key pair (:func:`create_supernode_keys`)."""

    site: str
    private_key: str
    public_key: str


def _write(path: str, data: bytes, private: bool) -> str:
    """Write ``data`` atomically; private files get mode 0600 from the start."""
    tmp = f"{path}.tmp{os.getpid()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(tmp, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
    return path


def _refuse_overwrite(paths: Sequence[str], overwrite: bool) -> None:
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not overwrite:
        raise CalibSegError(
            f"{existing[0]} already exists; keep the existing credentials or pass --overwrite "
            "to replace them (sites must then get the new files)."
        )


def _subject_alt_names(hosts: Sequence[str]):
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def create_certificates(folder: str, hosts: Sequence[str] = LOCAL_HOSTS, *,
                        days: int = 365, overwrite: bool = False) -> TLSFiles:
    """Create a CA and a SuperLink certificate for ``hosts`` in ``folder``.

    ``hosts`` are the DNS names and IP addresses SuperNodes use to reach the
    SuperLink (the certificate's subject alternative names). Keys are ECDSA P-384.
    """
    hosts = [h.strip() for h in hosts if h.strip()]
    if not hosts:
        raise CalibSegError("Name at least one host the SuperLink is reached by (--host).")
    os.makedirs(folder, exist_ok=True)
    files = TLSFiles(*(os.path.join(folder, n) for n in ("ca.crt", "ca.key", "server.pem",
                                                           "server.key")))
    _refuse_overwrite(list(files.__dict__.values()), overwrite)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CalibSeg federation CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(server_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(_subject_alt_names(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA384())
    )

    def key_pem(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    _write(files.ca_key, key_pem(ca_key), private=True)
    _write(files.server_key, key_pem(server_key), private=True)
    _write(files.ca_certificate, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(files.server_certificate, server_cert.public_bytes(serialization.Encoding.PEM),
           private=False)
    return files


def create_supernode_keys(folder: str, sites: Sequence[str], *,
                          overwrite: bool = False) -> list[NodeKeys]:
    """One ECDSA P-384 key pair per site (OpenSSH format) in ``folder``."""
    if not sites:
        raise CalibSegError("Name at least one site (--site NAME) to create keys for.")
    if len(set(sites)) != len(sites):
        raise CalibSegError("Two sites share a name; give every site its own name.")
    for name in sites:
        check_site_name(name)
    os.makedirs(folder, exist_ok=True)
    out = [NodeKeys(s, os.path.join(folder, f"{s}.key"), os.path.join(folder, f"{s}.pub"))
           for s in sites]
    _refuse_overwrite([p for k in out for p in (k.private_key, k.public_key)], overwrite)
    for keys in out:
        key = ec.generate_private_key(ec.SECP384R1())
        _write(keys.private_key, key.private_bytes(serialization.Encoding.PEM,
                                                   serialization.PrivateFormat.OpenSSH,
                                                   serialization.NoEncryption()), private=True)
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH)
        _write(keys.public_key, public + f" {keys.site}\n".encode(), private=False)
    return out
