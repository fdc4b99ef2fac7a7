"""Fixtures shared by the whole suite: one set of trustme certificates per session and the
contexts built from them. Helpers (the loop harness, peers) live in tests/helpers.py and
tests/tls_support.py and are imported from there, never from this file."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from tls_support import Certs, make_certs

import uvssl


@pytest.fixture(scope="session", autouse=True)
def _free_cached_contexts() -> Iterator[None]:
    """At the end of the session (this fixture is set up first, so it is torn down last),
    free the contexts uvssl caches for tcp_ssl_connect's keywords, and everything else no
    longer referenced: under tools/asan.sh, what is still allocated at exit then is a leak,
    not a cache."""
    yield
    uvssl.tls._client_contexts.clear()
    gc.collect()


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A CA, a server certificate for localhost/127.0.0.1, a client certificate, an unrelated
    CA with a server certificate it signed, and an encrypted copy of the server key."""
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def server_cert_kw(certs: Certs) -> dict[str, str]:
    """The server certificate and key as keyword arguments, for ``Context.server`` and
    ``tcp_ssl_server`` (a fresh dict per test: callers may add to it)."""
    return {"certificate": str(certs.server_cert), "key": str(certs.server_key)}


@pytest.fixture(scope="session")
def server_ctx(certs: Certs) -> uvssl.Context:
    """A server context with the test certificate, shared by the tests that only use it."""
    return uvssl.Context.server(certificate=str(certs.server_cert), key=str(certs.server_key))


@pytest.fixture(scope="session")
def client_ctx(certs: Certs) -> uvssl.Context:
    """A client context trusting the test CA, shared by the tests that only use it."""
    return uvssl.Context.client(ca_file=str(certs.ca))
