"""DKIM signing (RFC 6376) of composed messages, with the keys of ``dkim.keys``.

A message is signed when the domain of its From address has a key (or a parent domain
has one: DMARC's relaxed alignment accepts ``d=example.com`` for mail from
``shop.example.com``). The signature is ``rsa-sha256`` with relaxed/relaxed
canonicalisation, made by dkimpy; it covers the headers a verifier looks at, each
signed one extra time ("over-signed") so that nobody can add a second From or Subject
below it without breaking the signature. RFC 5322 allows each of them at most once.

Keys are read and checked when the settings are turned into a :class:`DkimSigner`
(:func:`load_signer`, at start-up): a file that cannot be read, or text that is not an
RSA private key, stops start-up with one line that never shows the key.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from email.utils import getaddresses

import dkim
import dkim.crypto
import idna

from notifier.errors import ComposeError, SettingsError
from notifier.settings import DkimKey, DkimSettings

__all__ = ["SIGNED_HEADERS", "DkimSigner", "SigningKey", "load_signer"]

#: Headers signed when the message has them, in this order (lower case, as in h=).
SIGNED_HEADERS = (
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
)
#: RFC 8301: verifiers refuse RSA keys shorter than this.
MIN_KEY_BITS = 1024
_HEADER_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.MULTILINE)
_FOLD = re.compile(rb"\r?\n(?=[ \t])")


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One key as dkimpy takes it; ``domain`` is lower case, in its ASCII (IDNA) form."""

    domain: str
    selector: str
    #: The PEM text: a secret, so neither shown by repr nor ever logged.
    pem: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class DkimSigner:
    """Signs messages whose From domain has a key; picklable (render processes get one)."""

    #: Domain (ASCII, lower case) -> its key.
    keys: dict[str, SigningKey]

    def key_for_domain(self, domain: str) -> SigningKey | None:
        """The key for mail from ``domain``: its own, else the nearest parent's."""
        labels = domain.lower().rstrip(".").split(".")
        for start in range(len(labels) - 1):
            key = self.keys.get(".".join(labels[start:]))
            if key is not None:
                return key
        return None

    def key_for(self, data: bytes) -> SigningKey | None:
        """The key that :meth:`sign` would use for the message ``data``, if any."""
        domain = _from_domain(_header_block(data))
        return None if domain is None else self.key_for_domain(domain)

    def sign(self, data: bytes) -> bytes:
        """``data`` with a DKIM-Signature header in front, or unchanged when its From
        domain has no key. ``data`` is a whole message with CRLF line ends.

        Costs about 12 ms of CPU per signature with a 2048-bit key (dkimpy does RSA in
        pure Python; docs/benchmarks.md): callers on the event loop hand it to a render
        process.
        """
        head = _header_block(data)
        domain = _from_domain(head)
        key = None if domain is None else self.key_for_domain(domain)
        if key is None:
            return data
        present = {match.lower().decode() for match in _HEADER_NAME.findall(_FOLD.sub(b"", head))}
        # Each header twice: the second, absent instance signs "no more of these".
        signed = [name.encode() for name in SIGNED_HEADERS if name in present for _ in (1, 2)]
        try:
            signature: bytes = dkim.sign(
                data,
                key.selector.encode("ascii"),
                key.domain.encode("ascii"),
                key.pem,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=signed,
                linesep=b"\r\n",
            )
        except dkim.DKIMException as exc:
            # The key was tried at start-up: what dkimpy refuses here is the message.
            raise ComposeError(f"the message cannot be DKIM-signed: {exc}") from None
        return signature + data


def load_signer(settings: DkimSettings) -> DkimSigner | None:
    """Read and check every key of ``dkim.keys``; None when there are none.

    Raises :class:`SettingsError` naming the entry (never showing the key) when a key
    file cannot be read, a key is not an RSA private key in PEM form (PKCS#1 or PKCS#8),
    is shorter than 1024 bits or does not sign, or a domain is listed twice.
    """
    if not settings.keys:
        return None
    keys: dict[str, SigningKey] = {}
    for position, entry in enumerate(settings.keys):
        label = f"settings: dkim.keys[{position}] ({entry.domain})"
        domain = _ascii_domain(entry.domain, label)
        if domain in keys:
            raise SettingsError(f"{label}: the domain has a key already")
        pem = _read_key(entry, label)
        key = SigningKey(domain=domain, selector=entry.selector, pem=pem)
        _check_key(key, label)
        keys[domain] = key
    return DkimSigner(keys=keys)


def _from_domain(head: bytes) -> str | None:
    """The domain of the (first) From address in the header block ``head``, in lower
    case ASCII; None when there is no From address."""
    value = None
    for line in _FOLD.sub(b"", head).split(b"\n"):
        if line[:5].lower() == b"from:":
            value = line[5:].decode("utf-8", "replace").strip()
            break
    if value is None:
        return None
    for _, address in getaddresses([value]):
        domain = address.rpartition("@")[2]
        if "@" in address and domain:
            try:
                return idna.encode(domain.rstrip("."), uts46=True).decode("ascii").lower()
            except idna.IDNAError:
                return None
    return None


def _header_block(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 2]


def _ascii_domain(domain: str, label: str) -> str:
    try:
        return idna.encode(domain.rstrip("."), uts46=True).decode("ascii").lower()
    except idna.IDNAError:
        raise SettingsError(f"{label}: domain is not a valid domain name") from None


def _read_key(entry: DkimKey, label: str) -> bytes:
    if entry.private_key is not None:
        pem = entry.private_key.get_secret_value().encode("utf-8", "replace")
    else:
        assert entry.private_key_file is not None  # the settings allow one or the other
        try:
            pem = entry.private_key_file.read_bytes()
        except OSError as exc:
            raise SettingsError(
                f"{label}: cannot read private_key_file {entry.private_key_file}: {exc.strerror}"
            ) from None
    # dkimpy finds the base64 between the PEM lines by "\n" alone.
    return pem.replace(b"\r\n", b"\n")


def _check_key(key: SigningKey, label: str) -> None:
    malformed = f"{label}: the private key is not an RSA private key in PEM form"
    try:
        parsed = dkim.crypto.parse_pem_private_key(key.pem)
    except Exception:
        # dkimpy's own ASN.1 parser raises many kinds of errors on bad input; whichever,
        # its text may quote the key, so only this line is shown.
        raise SettingsError(malformed) from None
    bits = int(parsed["modulus"]).bit_length()
    if bits < MIN_KEY_BITS:
        raise SettingsError(f"{label}: the key has {bits} bits; verifiers need at least 1024")
    # Sign something and check it with the key's public half: a damaged key (parts that
    # do not belong together) parses, but its signatures would fail every verifier.
    digest = hashlib.sha256(b"notifier start-up check")
    try:
        signature = dkim.crypto.RSASSA_PKCS1_v1_5_sign(digest, parsed)
        valid = dkim.crypto.RSASSA_PKCS1_v1_5_verify(digest, signature, parsed)
    except Exception:
        valid = False
    if not valid:
        raise SettingsError(f"{label}: the private key is damaged (its signatures do not verify)")
