"""Key handling without any server: generation, import, parsing, fingerprints."""

from __future__ import annotations

import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from hpcwaas.errors import InvalidKey
from hpcwaas.ssh import generate_keypair, import_private_key, load_pkey, parse_public_key


def test_fingerprint_matches_ssh_keygen(tmp_path) -> None:
    pair = generate_keypair()
    (tmp_path / "k.pub").write_text(pair.public.line + "\n")
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "k.pub")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[1] == pair.public.fingerprint


def test_generated_keys_load_in_paramiko() -> None:
    for kind in ("ed25519", "rsa"):
        pair = generate_keypair(kind)  # type: ignore[arg-type]
        pkey = load_pkey(pair.private_key)
        assert f"{pkey.get_name()} {pkey.get_base64()}".split()[1] == pair.public.blob_b64


def test_repr_hides_the_private_key() -> None:
    pair = generate_keypair()
    assert "PRIVATE" not in repr(pair) and pair.private_key not in str(pair)


def test_import_pkcs1_rsa_pem_normalises_to_openssh() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption()).decode()
    pair = import_private_key(pem)
    assert pair.private_key.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert pair.public.key_type == "ssh-rsa"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "could not be read"),
        ("hello", "could not be read"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----", "could not be read"),
    ],
)
def test_import_rejects_garbage(text: str, needle: str) -> None:
    with pytest.raises(InvalidKey, match=needle):
        import_private_key(text)


def test_small_rsa_is_refused() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    with pytest.raises(InvalidKey, match="2048"):
        import_private_key(pem)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "ssh-ed25519",
        "ssh-dss AAAAB3NzaC1kc3MAAACBAP",
        "ssh-ed25519 ***",
        "ssh-ed25519 QUFBQUFB",
        "ssh-rsa " + generate_keypair().public.blob_b64,  # an ed25519 body declared as RSA
    ],
)
def test_parse_public_key_rejects(line: str) -> None:
    with pytest.raises(InvalidKey):
        parse_public_key(line)


def test_parse_public_key_keeps_comment() -> None:
    pair = generate_keypair()
    parsed = parse_public_key(pair.public.line + " alice@laptop")
    assert parsed.comment == "alice@laptop" and parsed.line == pair.public.line
