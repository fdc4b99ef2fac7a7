/*
 * ctx.c: SSL_CTX helpers that need C callbacks.
 *
 * Theory of operation
 * -------------------
 * Contexts are built from Python through cffi calls into OpenSSL (uvssl/context.py); only the
 * parts that need a C function pointer live here:
 *
 *  - Key loading with a password. OpenSSL asks a password callback for encrypted keys; left
 *    unset it would prompt on the terminal, which a server must never do. uvs__pw_cb answers
 *    with the password given for this one load, or refuses when there is none, so a missing or
 *    wrong password is an error at the call.
 *  - Server-side ALPN. The select callback picks the first of the server's protocols that the
 *    client offered (RFC 7301 server preference); when nothing matches the extension is
 *    ignored (no ALPN on the connection) rather than failing the handshake. The protocol list is
 *    a copy owned by the SSL_CTX through ex_data, freed with the context.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "tls.h"

static int uvs__pw_cb(char *buf, int size, int rwflag, void *u) {
    const char *pw = u;
    (void)rwflag;
    if (pw == NULL || size <= 0)
        return -1;
    size_t n = strlen(pw);
    if (n > (size_t)size)
        return -1;
    memcpy(buf, pw, n);
    return (int)n;
}

int uvs_ctx_use_key_file(SSL_CTX *ctx, const char *path, int filetype, const char *password) {
    SSL_CTX_set_default_passwd_cb(ctx, uvs__pw_cb);
    SSL_CTX_set_default_passwd_cb_userdata(ctx, (void *)password);
    int r = SSL_CTX_use_PrivateKey_file(ctx, path, filetype);
    SSL_CTX_set_default_passwd_cb_userdata(ctx, NULL);
    return r;
}

int uvs_ctx_use_cert_file(SSL_CTX *ctx, const char *path, int filetype, const char *password) {
    SSL_CTX_set_default_passwd_cb(ctx, uvs__pw_cb);
    SSL_CTX_set_default_passwd_cb_userdata(ctx, (void *)password);
    int r = filetype == SSL_FILETYPE_PEM ? SSL_CTX_use_certificate_chain_file(ctx, path)
                                         : SSL_CTX_use_certificate_file(ctx, path, filetype);
    SSL_CTX_set_default_passwd_cb_userdata(ctx, NULL);
    return r;
}

/* ---- ALPN --------------------------------------------------------------------------------- */

typedef struct {
    unsigned len;
    unsigned char wire[];
} uvs__alpn_t;

static int uvs__alpn_index = -1;
static CRYPTO_ONCE uvs__alpn_once = CRYPTO_ONCE_STATIC_INIT;

static void uvs__alpn_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                           void *argp) {
    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    free(ptr);
}

static void uvs__alpn_init(void) {
    uvs__alpn_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, uvs__alpn_free);
}

static int uvs__alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                            const unsigned char *in, unsigned int inlen, void *arg) {
    const uvs__alpn_t *a = arg;
    unsigned char *chosen = NULL;
    (void)ssl;
    if (SSL_select_next_proto(&chosen, outlen, a->wire, a->len, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = chosen;
    return SSL_TLSEXT_ERR_OK;
}

int uvs_ctx_set_alpn_select(SSL_CTX *ctx, const unsigned char *wire, unsigned len) {
    if (!CRYPTO_THREAD_run_once(&uvs__alpn_once, uvs__alpn_init) || uvs__alpn_index < 0)
        return 0;
    uvs__alpn_t *a = malloc(sizeof(*a) + len);
    if (a == NULL)
        return 0;
    a->len = len;
    memcpy(a->wire, wire, len);
    void *old = SSL_CTX_get_ex_data(ctx, uvs__alpn_index);
    if (!SSL_CTX_set_ex_data(ctx, uvs__alpn_index, a)) {
        free(a);
        return 0;
    }
    free(old);
    SSL_CTX_set_alpn_select_cb(ctx, uvs__alpn_select, a);
    return 1;
}
