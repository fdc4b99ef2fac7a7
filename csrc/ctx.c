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
 *  - A throwaway self-signed certificate for `python -m uvssl serve` when no certificate is
 *    given, made with the OpenSSL uvssl already links (no extra dependency at run time).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>
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

/* ---- a throwaway self-signed certificate (python -m uvssl serve without --cert) ------------ */

/* Make a P-256 key and a self-signed certificate for `cn` (also localhost, 127.0.0.1 and ::1 as
 * subject alternative names), valid from now for `days`, and install both in ctx. The SHA-256
 * fingerprint of the certificate goes to fp (32 bytes). Returns 1, or 0 with the OpenSSL error
 * queue saying why. */
int uvs_ctx_use_self_signed(SSL_CTX *ctx, const char *cn, int days, unsigned char *fp) {
    int ok = 0;
    unsigned int fplen = 0;
    char san[320];
    X509V3_CTX v3;
    X509_EXTENSION *ext = NULL;
    EVP_PKEY *pkey = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    if (pkey == NULL || x == NULL || strlen(cn) > 200)
        goto done;
    snprintf(san, sizeof(san), "DNS:%s,DNS:localhost,IP:127.0.0.1,IP:::1", cn);
    X509_NAME *name = X509_get_subject_name(x);
    if (!X509_set_version(x, 2) || !ASN1_INTEGER_set(X509_get_serialNumber(x), 1) ||
        X509_gmtime_adj(X509_getm_notBefore(x), -60) == NULL ||
        X509_gmtime_adj(X509_getm_notAfter(x), (long)days * 86400L) == NULL ||
        !X509_set_pubkey(x, pkey) ||
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1,
                                    -1, 0) ||
        !X509_set_issuer_name(x, name))
        goto done;
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
    if (ext == NULL || !X509_add_ext(x, ext, -1) || !X509_sign(x, pkey, EVP_sha256()) ||
        !X509_digest(x, EVP_sha256(), fp, &fplen) || SSL_CTX_use_certificate(ctx, x) != 1 ||
        SSL_CTX_use_PrivateKey(ctx, pkey) != 1)
        goto done;
    ok = 1;
done:
    X509_EXTENSION_free(ext);
    X509_free(x);
    EVP_PKEY_free(pkey);
    return ok;
}
