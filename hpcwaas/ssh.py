"""SSH to a site: key generation and parsing, host-key scanning and pinning, remote commands.

Every connection verifies the site's pinned host key (paramiko ``RejectPolicy``): there is no
trust-on-first-use path here. Private keys are handled as in-memory strings, never written to
disk and never passed on a command line. Remote commands are built from argument lists with
``shlex.join`` so user values never reach a shell unquoted.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import shlex
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from hpcwaas.errors import (
    AuthenticationFailed,
    HostKeyMismatch,
    InvalidKey,
    RemoteCommandFailed,
    SiteUnreachable,
    SSHError,
)

log = logging.getLogger(__name__)
# Scanning offers one host-key algorithm per handshake; a server lacking one makes paramiko log a
# full traceback at ERROR. Those handshakes go to this channel, which only shows real failures.
_SCAN_LOG = "hpcwaas.ssh.scan"
logging.getLogger(_SCAN_LOG).setLevel(logging.CRITICAL)

KeyKind = Literal["ed25519", "rsa"]
_PUBLIC_TYPES = {
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
}
# Host-key algorithms offered when scanning, one handshake each (paramiko picks one per handshake).
_SCAN_ALGORITHMS = ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512")
_MAX_OUTPUT = 16 * 1024 * 1024


def fingerprint_of_blob(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob (``SHA256:...``)."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


@dataclass(frozen=True)
class PublicKey:
    """An OpenSSH public key (``<type> <base64> [comment]``)."""

    key_type: str
    blob_b64: str
    comment: str = ""

    @property
    def line(self) -> str:
        """The key as an authorized_keys / known_hosts line, without a comment."""
        return f"{self.key_type} {self.blob_b64}"

    @property
    def fingerprint(self) -> str:
        """SHA256 fingerprint, as ``ssh-keygen -l`` prints it."""
        return fingerprint_of_blob(base64.b64decode(self.blob_b64))

    def to_paramiko(self) -> paramiko.PKey:
        """The key as a paramiko object (for host-key pinning)."""
        return paramiko.PKey.from_type_string(self.key_type, base64.b64decode(self.blob_b64))


def parse_public_key(text: str) -> PublicKey:
    """Parse and validate one OpenSSH public key line; raises InvalidKey naming the problem."""
    parts = text.strip().split(None, 2)
    if len(parts) < 2:
        raise InvalidKey("a public key must look like '<type> <base64> [comment]'", field="public_key")
    key_type, blob_b64 = parts[0], parts[1]
    comment = parts[2] if len(parts) == 3 else ""
    if key_type not in _PUBLIC_TYPES:
        raise InvalidKey(
            f"unsupported public key type {key_type!r}; expected one of {sorted(_PUBLIC_TYPES)}",
            field="public_key",
        )
    try:
        blob = base64.b64decode(blob_b64, validate=True)
        key = paramiko.PKey.from_type_string(key_type, blob)
    except Exception as exc:  # paramiko raises several unrelated types for bad blobs
        raise InvalidKey("the public key's base64 body is not a valid key", field="public_key") from exc
    if key.get_name() != key_type and not (key_type == "ssh-rsa" and key.get_name().startswith("rsa")):
        raise InvalidKey("the key body does not match its declared type", field="public_key")
    return PublicKey(key_type, blob_b64, comment)


@dataclass(frozen=True)
class KeyPair:
    """A private key (OpenSSH PEM, unencrypted: Vault protects it) and its public half."""

    private_key: str
    public: PublicKey

    def __repr__(self) -> str:  # keep the private half out of logs and tracebacks
        return f"KeyPair(public={self.public.line!r})"


@dataclass(frozen=True)
class SSHCredential:
    """What a login uses: a private key and, on sites that trust the gateway's SSH CA, a short-lived
    certificate for it (whose key id names the run)."""

    private_key: str
    certificate: str | None = None

    def __repr__(self) -> str:  # keep the private half out of logs and tracebacks
        return f"SSHCredential(certificate={'yes' if self.certificate else 'no'})"


def _public_of(private: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> PublicKey:
    line = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    return parse_public_key(line)


def _serialize(private: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()


def generate_keypair(kind: KeyKind = "ed25519", rsa_bits: int = 4096) -> KeyPair:
    """Generate a new key pair (ed25519 by default, RSA on request)."""
    private: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    if kind == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
    elif kind == "rsa":
        if rsa_bits < 3072:
            raise InvalidKey("RSA keys must have at least 3072 bits", field="bits")
        private = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    else:
        raise InvalidKey(f"unknown key type {kind!r}; use ed25519 or rsa", field="type")
    return KeyPair(_serialize(private), _public_of(private))


def import_private_key(text: str, passphrase: str | None = None) -> KeyPair:
    """Parse an existing private key (OpenSSH, PKCS#1 or PKCS#8 PEM) and normalise it.

    The key is stored unencrypted in OpenSSH form: Vault is its protection, and every later use
    would otherwise need the passphrase.
    """
    data = text.strip().encode() + b"\n"
    password = passphrase.encode() if passphrase else None
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            private = serialization.load_ssh_private_key(data, password=password)
        else:
            private = serialization.load_pem_private_key(data, password=password)  # type: ignore[assignment]
    except (ValueError, TypeError) as exc:
        text = str(exc).lower()
        if "password" in text or "encrypted" in text:
            reason = "it is encrypted: give its passphrase"
        elif passphrase and ("checksum" in text or "decrypt" in text or "bad decrypt" in text):
            reason = "the passphrase is wrong"
        else:
            reason = "it is not a PEM or OpenSSH private key"
        raise InvalidKey(f"the private key could not be read: {reason}", field="private_key") from exc
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm and others
        raise InvalidKey(f"the private key could not be read: {type(exc).__name__}", field="private_key") from exc
    if isinstance(private, rsa.RSAPrivateKey) and private.key_size < 2048:
        raise InvalidKey("RSA keys must have at least 2048 bits", field="private_key")
    if not isinstance(private, ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise InvalidKey("only ed25519, RSA and ECDSA keys are supported", field="private_key")
    return KeyPair(_serialize(private), _public_of(private))


def load_pkey(private_key: str) -> paramiko.PKey:
    """A paramiko key object from a normalised OpenSSH private key string."""
    private = serialization.load_ssh_private_key(private_key.encode(), password=None)
    cls: type[paramiko.PKey]
    if isinstance(private, ed25519.Ed25519PrivateKey):
        cls = paramiko.Ed25519Key
    elif isinstance(private, rsa.RSAPrivateKey):
        cls = paramiko.RSAKey
    elif isinstance(private, ec.EllipticCurvePrivateKey):
        cls = paramiko.ECDSAKey
    else:
        raise InvalidKey("unsupported private key type", field="private_key")
    return cls.from_private_key(io.StringIO(private_key))


def _known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def scan_host_keys(host: str, port: int = 22, timeout: float = 10.0) -> list[PublicKey]:
    """Fetch the host keys a server offers (one handshake per algorithm), for an admin to pin."""
    found: dict[str, PublicKey] = {}
    last_error: Exception | None = None
    for algorithm in _SCAN_ALGORITHMS:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise SiteUnreachable(
                f"cannot connect to {host}:{port}: {exc.strerror or exc}",
                hint="check the login host and port, and that sshd runs there",
                host=host,
                port=port,
            ) from exc
        transport = paramiko.Transport(sock)
        transport.set_log_channel(_SCAN_LOG)
        try:
            transport.get_security_options().key_types = (algorithm,)
            transport.start_client(timeout=timeout)
            key = transport.get_remote_server_key()
            line = f"{key.get_name()} {key.get_base64()}"
            pub = parse_public_key(line)
            found.setdefault(pub.key_type, pub)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            last_error = exc  # the server does not offer this algorithm
        finally:
            transport.close()
    if not found:
        raise SiteUnreachable(
            f"{host}:{port} did not complete an SSH handshake: {last_error}",
            hint="is this an SSH server?",
            host=host,
            port=port,
        )
    return list(found.values())


@dataclass(frozen=True)
class SiteEndpoint:
    """Where a site's login node is and the host key pinned for it."""

    host: str
    port: int
    host_key: str  # "<type> <base64>" as registered

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class CommandResult:
    """The outcome of one remote command."""

    command: str
    exit_code: int
    stdout: str
    stderr: str

    def check(self) -> CommandResult:
        """Raise RemoteCommandFailed unless the command exited 0."""
        if self.exit_code != 0:
            raise RemoteCommandFailed(
                f"remote command exited {self.exit_code}: {self.stderr.strip()[-2000:] or self.stdout.strip()[-500:]}",
                command=self.command,
                exit_code=self.exit_code,
                stderr=self.stderr[-4000:],
            )
        return self


class SSHSession:
    """An open, host-key-verified SSH connection to a site as one login."""

    def __init__(self, client: paramiko.SSHClient, endpoint: SiteEndpoint, username: str,
                 umask: int | None = None) -> None:
        self._client = client
        self.endpoint = endpoint
        self.username = username
        self.umask = umask

    def run(
        self,
        argv: Sequence[str] | str,
        *,
        input: bytes | str | None = None,
        timeout: float | None = 600.0,
        check: bool = False,
        on_output: Callable[[str], None] | None = None,
    ) -> CommandResult:
        """Run a command on the site.

        ``argv`` is an argument list (quoted with ``shlex.join``); a plain string is taken as a
        shell line written by hpcwaas itself and must never contain unquoted user values.
        """
        command = argv if isinstance(argv, str) else shlex.join(argv)
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise SSHError("the SSH connection is closed", host=self.endpoint.label)
        chan = transport.open_session(timeout=30)
        try:
            # A private session: what it makes on the site (folders; job output, as sbatch hands
            # its umask on to the job) is the account's alone.
            chan.exec_command(command if self.umask is None else f"umask {self.umask:03o}; {command}")
            if input is not None:
                chan.sendall(input.encode() if isinstance(input, str) else input)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                idle = True
                while chan.recv_ready():
                    chunk = chan.recv(65536)
                    idle = False
                    if on_output is not None:
                        on_output(chunk.decode(errors="replace"))
                    if len(out) < _MAX_OUTPUT:
                        out += chunk
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)[: max(0, _MAX_OUTPUT - len(err))]
                    idle = False
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise SSHError(
                        f"remote command timed out after {timeout:.0f} s",
                        host=self.endpoint.label,
                        command=command,
                    )
                if idle:
                    time.sleep(0.005)
            result = CommandResult(command, chan.recv_exit_status(), out.decode(errors="replace"),
                                   err.decode(errors="replace"))
        finally:
            chan.close()
        return result.check() if check else result

    def sftp(self) -> paramiko.SFTPClient:
        """An SFTP client on this connection."""
        return self._client.open_sftp()

    def close(self) -> None:
        """Close the connection."""
        self._client.close()


@contextmanager
def connect(
    endpoint: SiteEndpoint,
    username: str,
    private_key: str | SSHCredential,
    *,
    timeout: float = 10.0,
    umask: int | None = None,
) -> Iterator[SSHSession]:
    """Open an SSH session that verifies the pinned host key; close it on exit.

    ``private_key`` is a key, or an :class:`SSHCredential` whose certificate is presented with it.
    ``umask`` (e.g. ``0o077``) applies to every command the session runs."""
    credential = private_key if isinstance(private_key, SSHCredential) else SSHCredential(private_key)
    pkey = load_pkey(credential.private_key)
    if credential.certificate:
        pkey.load_certificate(credential.certificate)
    pinned = parse_public_key(endpoint.host_key)
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.get_host_keys().add(
        _known_hosts_name(endpoint.host, endpoint.port), pinned.key_type, pinned.to_paramiko()
    )
    try:
        client.connect(
            endpoint.host,
            port=endpoint.port,
            username=username,
            pkey=pkey,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            look_for_keys=False,
            allow_agent=False,
        )
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyMismatch(
            f"the host key of {endpoint.label} changed since the site was registered "
            f"(pinned {pinned.fingerprint}, offered {fingerprint_of_blob(exc.key.asbytes())}): refused",
            hint="if the site really changed its key, an admin must confirm the new fingerprint",
            host=endpoint.label,
        ) from exc
    except paramiko.AuthenticationException as exc:
        client.close()
        raise AuthenticationFailed(
            f"{endpoint.label} refused the {'certificate' if credential.certificate else 'key'} for login "
            f"{username!r}",
            hint=(f"the site's sshd must trust the gateway's SSH CA (TrustedUserCAKeys) and accept the principal "
                  f"{username!r} for this account (see docs/security.md)"
                  if credential.certificate else
                  f"append the public key to ~{username}/.ssh/authorized_keys on the site"),
            host=endpoint.label,
            login=username,
        ) from exc
    except paramiko.SSHException as exc:
        client.close()
        if "known_hosts" in str(exc) or "not found in" in str(exc):
            raise HostKeyMismatch(
                f"{endpoint.label} did not offer the pinned {pinned.key_type} host key: refused",
                hint="an admin must re-scan and confirm the site's host key",
                host=endpoint.label,
            ) from exc
        raise SiteUnreachable(f"SSH handshake with {endpoint.label} failed: {exc}", host=endpoint.label) from exc
    except (OSError, EOFError) as exc:
        client.close()
        raise SiteUnreachable(
            f"cannot connect to {endpoint.label}: {getattr(exc, 'strerror', None) or exc}",
            hint="check that the site's login host is up and reachable",
            host=endpoint.label,
        ) from exc
    session = SSHSession(client, endpoint, username, umask)
    try:
        yield session
    finally:
        session.close()
