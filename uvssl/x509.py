"""X.509 certificates as seen by uvssl (``SslSocket.peer_certificate``)."""

from __future__ import annotations

import datetime
import hashlib
import ssl as _stdlib_ssl
from typing import Any, Optional

from ._uvssl import ffi, lib

__all__ = ["X509Certificate"]


_SUBJECT, _ISSUER, _SERIAL = lib.UVS_X509_SUBJECT, lib.UVS_X509_ISSUER, lib.UVS_X509_SERIAL
_NOT_BEFORE, _NOT_AFTER = lib.UVS_X509_NOT_BEFORE, lib.UVS_X509_NOT_AFTER
_SAN, _VERSION = lib.UVS_X509_SAN, lib.UVS_X509_VERSION


def _field(x509: Any, what: int) -> str:
    size = 1024
    while True:
        buf = ffi.new("char[]", size)
        n = lib.uvs_x509_field(x509, what, buf, size)
        if n >= 0:
            return str(ffi.string(buf, n).decode("utf-8", "replace"))
        if n == -1:
            raise ValueError("the certificate has no readable field of that kind")
        size = -n  # -(needed + 2): room for the text and its NUL


def _parse_name(text: str) -> tuple[tuple[str, str], ...]:
    out = []
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out.append((key.strip(), value.strip()))
    return tuple(out)


def _parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=datetime.timezone.utc)


class X509Certificate:
    """A certificate, held as its DER bytes.

    Fields: ``subject`` and ``issuer`` (tuples of (attribute, value) pairs such as
    ``("CN", "localhost")``, most specific first), ``serial_number`` (int), ``not_before`` and
    ``not_after`` (aware UTC datetimes), ``subject_alt_names`` (pairs such as
    ``("DNS", "localhost")`` and ``("IP Address", "127.0.0.1")``), ``version`` (3 for X.509v3).
    ``to_der()``, ``to_pem()`` and ``fingerprint(digest)`` give it back in other forms.
    """

    __slots__ = ("_der", "_fields")

    def __init__(self, der: bytes) -> None:
        """Wrap DER-encoded certificate bytes (ValueError if they are not a certificate)."""
        if not isinstance(der, bytes) or not der:
            raise TypeError("der must be non-empty bytes")
        self._der = der
        self._fields: Optional[dict[str, Any]] = None
        self._parse()

    @classmethod
    def from_pem(cls, pem: str) -> X509Certificate:
        """Make one from PEM text."""
        return cls(_stdlib_ssl.PEM_cert_to_DER_cert(pem))

    def _parse(self) -> dict[str, Any]:
        if self._fields is not None:
            return self._fields
        buf = ffi.new("unsigned char[]", self._der)
        pp = ffi.new("const unsigned char **", buf)
        x = lib.d2i_X509(ffi.NULL, pp, len(self._der))
        if x == ffi.NULL:
            lib.ERR_clear_error()
            raise ValueError("not a DER-encoded X.509 certificate")
        try:
            sans = []
            for line in _field(x, _SAN).splitlines():
                kind, _, value = line.partition(":")
                sans.append((kind, value))
            self._fields = {
                "subject": _parse_name(_field(x, _SUBJECT)),
                "issuer": _parse_name(_field(x, _ISSUER)),
                "serial_number": int(_field(x, _SERIAL), 16),
                "not_before": _parse_time(_field(x, _NOT_BEFORE)),
                "not_after": _parse_time(_field(x, _NOT_AFTER)),
                "subject_alt_names": tuple(sans),
                "version": int(_field(x, _VERSION)),
            }
        finally:
            lib.X509_free(x)
        return self._fields

    @property
    def subject(self) -> tuple[tuple[str, str], ...]:
        """The subject's (attribute, value) pairs, e.g. (("CN", "localhost"), ("O", "Acme"))."""
        return self._parse()["subject"]  # type: ignore[no-any-return]

    @property
    def issuer(self) -> tuple[tuple[str, str], ...]:
        """The issuer's (attribute, value) pairs."""
        return self._parse()["issuer"]  # type: ignore[no-any-return]

    @property
    def serial_number(self) -> int:
        """The serial number."""
        return int(self._parse()["serial_number"])

    @property
    def not_before(self) -> datetime.datetime:
        """Start of validity (UTC)."""
        return self._parse()["not_before"]  # type: ignore[no-any-return]

    @property
    def not_after(self) -> datetime.datetime:
        """End of validity (UTC)."""
        return self._parse()["not_after"]  # type: ignore[no-any-return]

    @property
    def subject_alt_names(self) -> tuple[tuple[str, str], ...]:
        """Subject alternative names as (type, value) pairs: DNS, IP Address, email, URI."""
        return self._parse()["subject_alt_names"]  # type: ignore[no-any-return]

    @property
    def version(self) -> int:
        """The X.509 version (1-based: 3 for v3 certificates)."""
        return int(self._parse()["version"])

    @classmethod
    def _from_x509(cls, x509: Any) -> X509Certificate:
        """Copy an ``X509*`` (the caller keeps its reference)."""
        n = lib.i2d_X509(x509, ffi.NULL)
        if n <= 0:
            raise ValueError("certificate could not be encoded")
        buf = ffi.new("unsigned char[]", n)
        p = ffi.new("unsigned char **", buf)
        lib.i2d_X509(x509, p)
        return cls(ffi.buffer(buf, n)[:])

    @classmethod
    def _peer_of(cls, ssl: Any) -> Optional[X509Certificate]:
        """The peer certificate of an ``SSL*``, or None."""
        x = lib.SSL_get1_peer_certificate(ssl)
        if x == ffi.NULL:
            return None
        try:
            return cls._from_x509(x)
        finally:
            lib.X509_free(x)

    def to_der(self) -> bytes:
        """The certificate in DER form."""
        return self._der

    def to_pem(self) -> str:
        """The certificate in PEM form."""
        return _stdlib_ssl.DER_cert_to_PEM_cert(self._der)

    def fingerprint(self, digest: str = "sha256") -> str:
        """The hex digest of the DER bytes, colon-separated upper case (``AB:CD:...``)."""
        try:
            h = hashlib.new(digest, self._der)
        except (ValueError, TypeError):
            raise ValueError(f"unknown digest {digest!r}") from None
        return ":".join(f"{b:02X}" for b in h.digest())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, X509Certificate) and other._der == self._der

    def __hash__(self) -> int:
        return hash(self._der)

    def __repr__(self) -> str:
        subj = ",".join(f"{k}={v}" for k, v in self.subject)
        return f"<X509Certificate {subj} sha256={self.fingerprint()[:23]}...>"
