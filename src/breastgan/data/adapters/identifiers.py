"""One identifier policy for every adapter: what a prepared manifest records as ``patient_id``.

Adapters report the patient identifier their dataset gives (a CSV column, a DICOM-derived name, a
study id, a synthetic per-image id); :func:`breastgan.data.prepare.prepare` passes every one through
:class:`IdentifierPolicy` before anything is written, so no adapter can leak one in clear text.

- ``keyed_hash`` (default): HMAC-SHA256 under a secret key, 16 hex digits. The same patient maps to
  the same pseudonym under one key (splits, DP units and centre comparisons keep working); without
  the key a pseudonym cannot be checked against a guessed identifier (an unkeyed hash of a short
  id like ``P_00001`` can, by hashing every candidate).
- ``clear``: the identifier as the dataset gives it, only when a config asks for it.

The key: ``identifiers.key_file`` in the config, else ``$BREASTGAN_ID_KEY`` (the key text itself),
else a per-user key file (``$XDG_CONFIG_HOME/breastgan/identifier.key``, created with 32 random bytes
and mode 0600 on first use). Only a fingerprint of the key is recorded in the prepared set.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

KEY_ENV = "BREASTGAN_ID_KEY"
KEY_FILE_NAME = "identifier.key"


def default_key_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "breastgan" / KEY_FILE_NAME


class IdentifierPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["keyed_hash", "clear"] = "keyed_hash"
    key_file: Path | None = None  # None: $BREASTGAN_ID_KEY, else the per-user key file

    def key(self) -> bytes:
        if self.key_file is not None:
            f = Path(self.key_file).expanduser()
            if not f.is_file():
                raise FileNotFoundError(f"identifiers.key_file: {f} not found (a file holding the secret key for patient pseudonyms)")
            data = f.read_bytes().strip()
            if len(data) < 16:
                raise ValueError(f"identifiers.key_file: {f} holds {len(data)} bytes; a key needs at least 16")
            return data
        env = os.environ.get(KEY_ENV, "")
        if env:
            if len(env.encode()) < 16:
                raise ValueError(f"${KEY_ENV}: {len(env.encode())} bytes; a key needs at least 16")
            return env.encode()
        return _per_user_key()

    def describe(self) -> dict[str, str]:
        """What the prepared set records about the policy (never the key)."""
        if self.mode == "clear":
            return {"mode": "clear"}
        return {"mode": "keyed_hash", "algorithm": "hmac-sha256/16hex", "key_fingerprint": key_fingerprint(self.key())}

    def pseudonymiser(self):
        """A function identifier -> what the manifest records (the key is read once)."""
        if self.mode == "clear":
            return lambda value: value
        key = self.key()
        return lambda value: pseudonym(value, key) if value else value


def pseudonym(value: str, key: bytes) -> str:
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def key_fingerprint(key: bytes) -> str:
    """Tells two prepared sets made with the same key apart from others; reveals nothing usable about it."""
    return hashlib.sha256(b"breastgan-identifier-key\x00" + key).hexdigest()[:12]


def _per_user_key() -> bytes:
    f = default_key_file()
    if not f.is_file():
        import tempfile

        f.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".identifier.", dir=f.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
            try:  # link, not rename: two prepares starting at once agree on the first key written
                os.link(tmp, f)
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    return f.read_bytes().strip()
