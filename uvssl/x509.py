"""X.509 certificates as seen by uvssl (``SslSocket.peer_certificate``)."""

from __future__ import annotations

import hashlib
import ssl as _stdlib_ssl
from typing import Any

from ._uvssl import ffi, lib

__all__ = ["X509Certificate"]


class X509Certificate:
    """A certificate, held as its DER bytes.

    ``to_der()``, ``to_pem()`` and ``fingerprint(digest)`` give it back in those forms.
    """

    __slots__ = ("_der",)

    def __init__(self, der: bytes) -> None:
        """Wrap DER-encoded certificate bytes."""
        if not isinstance(der, bytes) or not der:
            raise TypeError("der must be non-empty bytes")
        self._der = der

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
        return f"<X509Certificate sha256={self.fingerprint()[:23]}...>"
