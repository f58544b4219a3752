"""Optional encryption of a backup archive, streamed in chunks so memory stays bounded.

Format (``.enc`` after the archive's name)::

    b"appliance-backup-encrypted 1\\n"
    one JSON line: the header (how the key is derived, the chunk size, a nonce prefix)
    chunks: 4-byte big-endian length, then AES-256-GCM ciphertext of at most ``chunk`` bytes

Each chunk's nonce is the 7-byte random prefix, a 4-byte counter and a last-chunk flag (the STREAM
construction): chunks cannot be reordered, dropped or cut off at the end without the reader
noticing, and the header is authenticated as every chunk's associated data.

Two ways to the key, chosen at ``appliance backup`` time:

- ``passphrase``: scrypt (n=2**15, r=8, p=1) over the passphrase and a random salt. Anyone with
  the passphrase can restore.
- ``x25519``: a recipient's public key (``appliance backup keygen``). An ephemeral X25519 key
  agrees a secret with the recipient's key; HKDF-SHA256 turns it into the AES key. Only the holder
  of the private key can restore; the machine that makes backups never holds it.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from pathlib import Path
from typing import IO, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from appliance.errors import ApplianceError

MAGIC = b"appliance-backup-encrypted 1\n"
CHUNK = 1 << 20
"""Plaintext bytes per chunk (1 MiB): the most either side holds in memory at once."""
SCRYPT = {"n": 1 << 15, "r": 8, "p": 1}
HKDF_INFO = b"appliance-backup x25519 v1"
MAX_HEADER = 4096


class EncryptionError(ApplianceError):
    """A wrong passphrase or key, or an encrypted archive that was altered or cut short."""

    exit_code = 2


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


def _scrypt(passphrase: bytes, salt: bytes, params: dict[str, int]) -> bytes:
    return Scrypt(salt=salt, length=32, n=params["n"], r=params["r"], p=params["p"]).derive(passphrase)


def _hkdf(shared: bytes, salt: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt, HKDF_INFO + ephemeral + recipient).derive(shared)


def public_bytes(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_public_key(path: Path) -> X25519PublicKey:
    """A recipient key file as ``keygen`` writes it (one base64 line), or a PEM public key."""
    text = _read_key_file(path, "recipient public key")
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
            if isinstance(key, X25519PublicKey):
                return key
            raise ValueError("not an X25519 key")
        return X25519PublicKey.from_public_bytes(_unb64(text.split()[-1]))
    except ValueError as err:
        raise EncryptionError(
            f"{path} is not an X25519 public key ({err})",
            fix="pass the .pub file written by `appliance backup keygen`",
        ) from err


def load_private_key(path: Path) -> X25519PrivateKey:
    text = _read_key_file(path, "identity (private key)")
    try:
        key = serialization.load_pem_private_key(text.encode(), password=None)
    except ValueError as err:
        raise EncryptionError(
            f"{path} is not a private key ({err})",
            fix="pass the private key file written by `appliance backup keygen` (not the .pub)",
        ) from err
    if not isinstance(key, X25519PrivateKey):
        raise EncryptionError(f"{path} is not an X25519 private key", fix="use `appliance backup keygen`")
    return key


def _read_key_file(path: Path, what: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as err:
        raise EncryptionError(f"cannot read the {what} {path}: {err.strerror}", fix="check the path") from err


def generate_keypair(private_path: Path) -> Path:
    """Write a new X25519 key: the private key at ``private_path`` (0600, PEM) and its public half
    at ``private_path.pub`` (one base64 line). Refuses to overwrite either."""
    public_path = private_path.with_name(private_path.name + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise EncryptionError(f"{path} exists", fix="choose another path, or remove the old key first")
    key = X25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    public_path.write_text(f"appliance-backup-x25519 {_b64(public_bytes(key.public_key()))}\n")
    return public_path


class Secret:
    """What the user gave to encrypt or decrypt: a passphrase or a key."""

    def __init__(
        self,
        passphrase: bytes | None = None,
        recipient: X25519PublicKey | None = None,
        identity: X25519PrivateKey | None = None,
    ) -> None:
        self.passphrase, self.recipient, self.identity = passphrase, recipient, identity

    @classmethod
    def from_passphrase_file(cls, path: Path) -> Secret:
        text = _read_key_file(path, "passphrase file")
        if not text:
            raise EncryptionError(f"{path} is empty", fix="write the passphrase into the file")
        return cls(passphrase=text.encode())


def new_header(secret: Secret, info: dict[str, Any] | None = None) -> tuple[dict[str, Any], bytes]:
    """A fresh header for ``secret`` and the AES key it gives. ``info`` (what wrote the archive,
    when) stays readable without the key, so ``backup list`` can show it; it is authenticated."""
    salt = os.urandom(16)
    header: dict[str, Any] = {"chunk": CHUNK, "nonce_prefix": _b64(os.urandom(7)), "salt": _b64(salt)}
    header["info"] = info or {}
    if secret.passphrase is not None:
        header |= {"kdf": "scrypt", "scrypt": SCRYPT}
        return header, _scrypt(secret.passphrase, salt, SCRYPT)
    if secret.recipient is None:
        raise EncryptionError("no passphrase or recipient key to encrypt with")
    ephemeral = X25519PrivateKey.generate()
    eph_pub, rec_pub = public_bytes(ephemeral.public_key()), public_bytes(secret.recipient)
    header |= {"kdf": "x25519", "ephemeral": _b64(eph_pub), "recipient": _b64(rec_pub)}
    return header, _hkdf(ephemeral.exchange(secret.recipient), salt, eph_pub, rec_pub)


def key_for(header: dict[str, Any], secret: Secret | None, source: str) -> bytes:
    """The AES key ``header`` asks for, from what the user gave."""
    salt = _unb64(header["salt"])
    if header.get("kdf") == "scrypt":
        if secret is None or secret.passphrase is None:
            raise EncryptionError(
                f"{source} is encrypted with a passphrase", fix="pass --passphrase-file FILE"
            )
        return _scrypt(secret.passphrase, salt, header["scrypt"])
    if header.get("kdf") == "x25519":
        if secret is None or secret.identity is None:
            raise EncryptionError(
                f"{source} is encrypted to a recipient key",
                fix="pass --identity KEY (the private key whose .pub was `appliance backup --recipient`)",
            )
        eph_pub, rec_pub = _unb64(header["ephemeral"]), _unb64(header["recipient"])
        if public_bytes(secret.identity.public_key()) != rec_pub:
            raise EncryptionError(
                f"{source} was encrypted to another key", fix="pass the private key of the recipient it names"
            )
        shared = secret.identity.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        return _hkdf(shared, salt, eph_pub, rec_pub)
    raise EncryptionError(f"{source}: unknown key derivation {header.get('kdf')!r}")


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + struct.pack(">I", counter) + (b"\x01" if last else b"\x00")


class EncryptingWriter:
    """A write-only file object: plaintext in, the encrypted format out to ``raw``."""

    def __init__(self, raw: IO[bytes], secret: Secret, info: dict[str, Any] | None = None) -> None:
        header, key = new_header(secret, info)
        self._header = json.dumps(header, sort_keys=True).encode() + b"\n"
        self._aead, self._prefix = AESGCM(key), _unb64(header["nonce_prefix"])
        self._raw, self._buf, self._counter, self._closed = raw, bytearray(), 0, False
        raw.write(MAGIC + self._header)

    def write(self, data: bytes) -> int:
        self._buf += data
        while len(self._buf) > CHUNK:  # keep at least one byte back: the last chunk carries the flag
            self._emit(bytes(self._buf[:CHUNK]), last=False)
            del self._buf[:CHUNK]
        return len(data)

    def _emit(self, plain: bytes, last: bool) -> None:
        if self._counter >= 0xFFFFFFFF:
            raise EncryptionError("archive too large for one encrypted stream (4 PiB)")
        sealed = self._aead.encrypt(_nonce(self._prefix, self._counter, last), plain, self._header)
        self._raw.write(struct.pack(">I", len(sealed)) + sealed)
        self._counter += 1

    def flush(self) -> None:
        self._raw.flush()

    def close(self) -> None:
        if not self._closed:
            self._emit(bytes(self._buf), last=True)
            self._buf.clear()
            self._closed = True


def is_encrypted(head: bytes) -> bool:
    return head.startswith(MAGIC)


def read_header(raw: IO[bytes], source: str) -> tuple[dict[str, Any], bytes]:
    """The header of an encrypted archive (``raw`` just past the magic) and its exact bytes."""
    line = raw.readline(MAX_HEADER)
    try:
        header = json.loads(line)
        if not isinstance(header, dict) or not line.endswith(b"\n"):
            raise ValueError("not a header line")
    except ValueError as err:
        raise EncryptionError(f"{source}: the encryption header is damaged ({err})") from err
    return header, line


class DecryptingReader:
    """A read-only file object over the encrypted format; raises EncryptionError on a wrong key,
    altered bytes or a stream cut short (no chunk carries the last flag)."""

    def __init__(self, raw: IO[bytes], secret: Secret | None, source: str) -> None:
        magic = raw.read(len(MAGIC))
        if magic != MAGIC:
            raise EncryptionError(f"{source} is not an encrypted appliance backup")
        header, self._header = read_header(raw, source)
        self.header = header
        self._aead = AESGCM(key_for(header, secret, source))
        self._prefix, self._chunk = _unb64(header["nonce_prefix"]), int(header["chunk"])
        self._raw, self._source = raw, source
        self._buf, self._pos, self._counter, self._done = b"", 0, 0, False

    def _next_chunk(self) -> None:
        size_bytes = self._raw.read(4)
        if len(size_bytes) < 4:
            raise EncryptionError(f"{self._source} is truncated (the encrypted stream ends early)")
        (size,) = struct.unpack(">I", size_bytes)
        if size > self._chunk + 16:
            raise EncryptionError(f"{self._source} is corrupt (chunk {self._counter} claims {size} bytes)")
        sealed = self._raw.read(size)
        if len(sealed) < size:
            raise EncryptionError(f"{self._source} is truncated (the encrypted stream ends early)")
        for last in (False, True):
            try:
                plain = self._aead.decrypt(_nonce(self._prefix, self._counter, last), sealed, self._header)
            except InvalidTag:
                continue
            self._counter += 1
            self._buf, self._pos = self._buf[self._pos :] + plain, 0
            self._done = last
            return
        what = "wrong passphrase or key" if self._counter == 0 else f"chunk {self._counter} was altered"
        raise EncryptionError(
            f"{self._source} cannot be decrypted: {what}",
            fix="check the passphrase or key; a damaged archive cannot be restored (use another backup)",
        )

    def read(self, n: int = -1) -> bytes:
        while (n < 0 or len(self._buf) - self._pos < n) and not self._done:
            self._next_chunk()
        end = len(self._buf) if n < 0 else min(len(self._buf), self._pos + n)
        out = self._buf[self._pos : end]
        self._pos = end
        return out

    def finish(self) -> None:
        """Read to the end; then check nothing follows the last chunk."""
        while not self._done:
            self._next_chunk()
        if self._raw.read(1):
            raise EncryptionError(f"{self._source} has bytes after its last chunk (altered)")
