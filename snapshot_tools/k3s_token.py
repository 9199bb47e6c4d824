"""K3s/RKE2 server tokens: normalised the way K3s does, hashed the way it names its records, read
from ``--k3s-token TOKEN|@FILE``. Messages never repeat a token.

References: ``spec/k3s-rke2-bootstrap.md`` section 4; k3s-io/k3s ``pkg/util/token.go``
(``ShortHash``, ``NormalizeToken``, ``ReadTokenFromFile``), ``pkg/clientaccess/token.go``
(``parseToken``).
"""

from __future__ import annotations

import hashlib
import re

from snapshot_tools.errors import InputError, TokenError
from snapshot_tools.small_files import read_regular

__all__ = ["HASH_LENGTH", "normalize_token", "read_token", "short_hash", "token_hash"]

HASH_LENGTH = 12  # keyHash / util.ShortHash(s, 12)
MAX_TOKEN_FILE = 64 * 1024  # a token file is ~100 bytes
# kubeadm-style bootstrap token: never a server passphrase (parseToken).
_BOOTSTRAP_TOKEN = re.compile(r"[a-z0-9]{6}\.[a-z0-9]{16}")
_EXPECTED_FORMAT = "must be K10<CA-HASH>::<USERNAME>:<PASSWORD> or <PASSWORD>"


def short_hash(text: str, length: int = HASH_LENGTH) -> str:
    """``util.ShortHash``: the first ``length`` lowercase hex characters of sha256(text)."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def normalize_token(token: str) -> str:
    """The passphrase K3s derives from a server token: its password part (``NormalizeToken``).

    ``K10<64 hex>::server:pw`` -> ``pw``; a bare ``pw`` -> ``pw``; a bare value with a colon is kept
    whole (``a:b`` -> ``a:b``, because K3s reads it as ``K10:::a:b``).

    Raises:
        TokenError: empty, a kubeadm bootstrap token, a CA hash that is not 64 characters, or no
            password; the message never repeats the token.
    """
    if not token:
        raise TokenError("the K3s token is empty")
    text = token
    if not text.startswith("K10"):
        text = ("K10::" if _BOOTSTRAP_TOKEN.fullmatch(text) else "K10:::") + text
    ca_hash, sep, creds = text[3:].partition("::")
    if not sep:
        creds = ca_hash
    elif ca_hash and len(ca_hash) != 64:
        raise TokenError(f"the K3s token is malformed (its CA hash is not 64 characters); it {_EXPECTED_FORMAT}")
    if _BOOTSTRAP_TOKEN.fullmatch(creds):
        raise TokenError(f"the K3s token is a bootstrap (join) token, not a server token; it {_EXPECTED_FORMAT}")
    _user, colon, password = creds.partition(":")
    if not colon or not password:
        raise TokenError(f"the K3s token is malformed (no password part); it {_EXPECTED_FORMAT}")
    return password


def token_hash(token: str) -> str:
    """The 12-hex hash K3s shows for ``token`` (``/bootstrap/<hash>``, S3 ``K3s-Token-Hash``)."""
    return short_hash(normalize_token(token))


def read_token(value: str) -> str:
    """A ``--k3s-token`` value: the token itself, or ``@FILE`` read and whitespace-trimmed as K3s
    reads its token file (``bytes.TrimSpace``).

    Raises:
        TokenError: the file is missing, not a regular file, too large, not UTF-8 or empty; the
            message names the file, never its content.
    """
    if not value.startswith("@"):
        return value
    path = value[1:]
    shown = path or "''"
    try:
        raw = read_regular(path, MAX_TOKEN_FILE, label=f"token file {shown}")
    except InputError as exc:  # a token problem (exit 2) that names the file, never its content
        raise TokenError(str(exc)) from None
    try:
        token = raw.strip().decode("utf-8")
    except UnicodeDecodeError:
        raise TokenError(f"token file {shown}: not a text file (invalid UTF-8)") from None
    if not token:
        raise TokenError(f"token file {shown}: empty")
    return token
