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
 *  - SNI: the servername callback asks the embedding (on_sni) which SSL_CTX serves the name
 *    and switches to it with SSL_set_SSL_CTX; a failing callback refuses the handshake with
 *    an unrecognized_name alert.
 *  - CRL files loaded into the context's X509_STORE, and certificate fields rendered as text
 *    for uvssl.X509Certificate (names in RFC 2253 form, one attribute per line).
 *  - Certificates, keys and CA certificates from memory (certificate_data, key_data, ca_data),
 *    for keys that come from a secret store rather than a file. A memory BIO over the caller's
 *    bytes is read the way SSL_CTX_use_certificate_chain_file reads a file: the first PEM
 *    certificate is the leaf, the others go to the chain; a buffer that starts with an ASN.1
 *    SEQUENCE byte (0x30) is one DER certificate instead (PEM text never starts so). Every
 *    object read is freed or handed to the SSL_CTX on every path; on failure the error queue
 *    says why and the caller drains it (nothing of the data is ever put in a message).
 *  - Live reload (Context.reload): everything is read into a uvs_reload_t first (the chain,
 *    the key, checked against the certificate, and a new X509_STORE with the CA files, CRLs
 *    and in-memory CAs), and nothing touches the live SSL_CTX until all of it loaded; so a
 *    broken file leaves the certificate in service alone. uvs_reload_install then puts it in
 *    place in one step, under the engine's exclusive certificate lock (tls.c: SSL_new holds it
 *    shared): SSL_CTX_use_cert_and_key replaces the certificate, key and chain (override), and
 *    the new store becomes the context's verify store (SSL_CTX_set1_verify_cert_store). SSL*s
 *    made before keep what they copied (their own references), so open connections and
 *    handshakes under way are untouched. A certificate whose key type differs from the one in
 *    service (RSA and ECDSA) would sit beside it rather than replace it: refused.
 *  - The NSS key log (keylog_file): the file is opened once, O_APPEND and mode 0600 when it is
 *    created, and its descriptor kept in the SSL_CTX's ex_data, closed by the ex_data free
 *    callback when the context is freed. OpenSSL's keylog callback writes each line and its
 *    newline with one write(2), so lines from connections in several threads never interleave;
 *    no Python runs per handshake.
 */
#ifndef _GNU_SOURCE
#define _POSIX_C_SOURCE 200809L /* open's O_CLOEXEC under -std=c99 */
#endif
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>
#include <openssl/err.h>
#include <openssl/pem.h>
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

/* ---- certificates, keys and CAs from memory ------------------------------------------- */

/* A DER certificate or key is an ASN.1 SEQUENCE: its first byte is 0x30. PEM starts with its
 * armour (or blank space before it), never with '0'. */
static int uvs__is_der(const char *data, size_t len) {
    return len > 0 && (unsigned char)data[0] == 0x30;
}

static BIO *uvs__mem_bio(const char *data, size_t len) {
    if (len > INT_MAX) {
        ERR_raise(ERR_LIB_BIO, BIO_R_INVALID_ARGUMENT);
        return NULL;
    }
    return BIO_new_mem_buf(data, (int)len);
}

/* One DER certificate filling the whole buffer, or NULL (error queued). */
static X509 *uvs__der_cert(const char *data, size_t len) {
    if (len > LONG_MAX) {
        ERR_raise(ERR_LIB_X509, ERR_R_PASSED_INVALID_ARGUMENT);
        return NULL;
    }
    const unsigned char *p = (const unsigned char *)data;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    if (x != NULL && p != (const unsigned char *)data + len) {
        X509_free(x); /* something follows the certificate: not one DER certificate */
        ERR_raise(ERR_LIB_X509, ERR_R_PASSED_INVALID_ARGUMENT);
        return NULL;
    }
    return x;
}

/* The PEM reader ran out of certificates: true when that is all that happened (the last error
 * is "no start line", which the loop below expects and drops). */
static int uvs__pem_end(void) {
    unsigned long e = ERR_peek_last_error();
    if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
        ERR_clear_error();
        return 1;
    }
    return 0;
}

/* Install the certificate in data (a PEM chain: leaf first; or one DER certificate) in ctx.
 * Returns 1, or 0 with the error queue saying why. */
int uvs_ctx_use_cert_mem(SSL_CTX *ctx, const char *data, size_t len) {
    ERR_clear_error();
    if (uvs__is_der(data, len)) {
        X509 *x = uvs__der_cert(data, len);
        if (x == NULL)
            return 0;
        int r = SSL_CTX_use_certificate(ctx, x) == 1 && SSL_CTX_clear_chain_certs(ctx) == 1;
        X509_free(x);
        return r;
    }
    BIO *b = uvs__mem_bio(data, len);
    if (b == NULL)
        return 0;
    int ok = 0;
    X509 *x = PEM_read_bio_X509_AUX(b, NULL, uvs__pw_cb, NULL);
    if (x == NULL || SSL_CTX_use_certificate(ctx, x) != 1 || SSL_CTX_clear_chain_certs(ctx) != 1)
        goto done;
    for (;;) {
        X509 *ca = PEM_read_bio_X509(b, NULL, uvs__pw_cb, NULL);
        if (ca == NULL) {
            ok = uvs__pem_end();
            break;
        }
        if (SSL_CTX_add0_chain_cert(ctx, ca) != 1) { /* takes ca only when it succeeds */
            X509_free(ca);
            break;
        }
    }
done:
    X509_free(x);
    BIO_free(b);
    return ok;
}

/* Install the private key in data (PEM, possibly encrypted with password; or DER with
 * filetype SSL_FILETYPE_ASN1) in ctx. OpenSSL checks it against the certificate already
 * installed. Returns 1, or 0 with the error queue saying why. */
int uvs_ctx_use_key_mem(SSL_CTX *ctx, const char *data, size_t len, int filetype,
                        const char *password) {
    ERR_clear_error();
    BIO *b = uvs__mem_bio(data, len);
    if (b == NULL)
        return 0;
    EVP_PKEY *k = filetype == SSL_FILETYPE_ASN1
                      ? d2i_PrivateKey_bio(b, NULL)
                      : PEM_read_bio_PrivateKey(b, NULL, uvs__pw_cb, (void *)password);
    int ok = k != NULL && SSL_CTX_use_PrivateKey(ctx, k) == 1;
    EVP_PKEY_free(k);
    BIO_free(b);
    return ok;
}

static int uvs__store_add_ca_mem(X509_STORE *store, const char *data, size_t len);

/* Add the CA certificates in data (PEM, one or more; or one DER certificate) to ctx's trust
 * store. Returns how many, or 0 with the error queue saying why. */
int uvs_ctx_add_ca_mem(SSL_CTX *ctx, const char *data, size_t len) {
    ERR_clear_error();
    X509_STORE *store = SSL_CTX_get_cert_store(ctx);
    if (store == NULL)
        return 0;
    return uvs__store_add_ca_mem(store, data, len);
}

/* The same into any store. */
static int uvs__store_add_ca_mem(X509_STORE *store, const char *data, size_t len) {
    if (uvs__is_der(data, len)) {
        X509 *x = uvs__der_cert(data, len);
        int r = x != NULL && X509_STORE_add_cert(store, x) == 1;
        X509_free(x);
        return r;
    }
    BIO *b = uvs__mem_bio(data, len);
    if (b == NULL)
        return 0;
    int n = 0;
    for (;;) {
        X509 *x = PEM_read_bio_X509(b, NULL, uvs__pw_cb, NULL);
        if (x == NULL) {
            if (!uvs__pem_end() || n == 0)
                n = 0; /* a broken certificate, or none at all */
            break;
        }
        int r = X509_STORE_add_cert(store, x); /* takes its own reference */
        X509_free(x);
        if (r != 1) {
            n = 0;
            break;
        }
        n++;
    }
    BIO_free(b);
    return n;
}

/* ---- NSS key log ------------------------------------------------------------------------- */

typedef struct {
    int fd;
} uvs__keylog_t;

static int uvs__keylog_index = -1;
static CRYPTO_ONCE uvs__keylog_once = CRYPTO_ONCE_STATIC_INIT;

static void uvs__keylog_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                             void *argp) {
    uvs__keylog_t *k = ptr;
    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    if (k == NULL)
        return;
    if (k->fd >= 0)
        (void)close(k->fd); /* nothing is left to report a failed close to */
    free(k);
}

static void uvs__keylog_init(void) {
    uvs__keylog_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, uvs__keylog_free);
}

static void uvs__keylog_cb(const SSL *ssl, const char *line) {
    const uvs__keylog_t *k = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), uvs__keylog_index);
    if (k == NULL || k->fd < 0)
        return;
    size_t n = strlen(line);
    char small[512];
    char *buf = n + 1 <= sizeof(small) ? small : malloc(n + 1);
    if (buf == NULL)
        return; /* out of memory: this line is lost, the handshake goes on */
    memcpy(buf, line, n);
    buf[n] = '\n';
    ssize_t w;
    do { /* one write: O_APPEND puts the whole line at the end, never between others */
        w = write(k->fd, buf, n + 1);
    } while (w < 0 && errno == EINTR);
    /* a failed or short write (disk full) loses key log lines only, never the connection */
    if (buf != small)
        free(buf);
}

/* Append the NSS key log lines of every connection of ctx to the file at path (created with
 * mode 0600). Returns 0, or a negative errno when the file cannot be opened, or -ENOMEM. */
int uvs_ctx_set_keylog_file(SSL_CTX *ctx, const char *path) {
    if (!CRYPTO_THREAD_run_once(&uvs__keylog_once, uvs__keylog_init) || uvs__keylog_index < 0)
        return -ENOMEM;
    uvs__keylog_t *k = malloc(sizeof(*k));
    if (k == NULL)
        return -ENOMEM;
    do {
        k->fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    } while (k->fd < 0 && errno == EINTR);
    if (k->fd < 0) {
        int e = errno;
        free(k);
        return -e;
    }
    uvs__keylog_t *old = SSL_CTX_get_ex_data(ctx, uvs__keylog_index);
    if (!SSL_CTX_set_ex_data(ctx, uvs__keylog_index, k)) {
        ERR_clear_error();
        (void)close(k->fd);
        free(k);
        return -ENOMEM;
    }
    uvs__keylog_free(NULL, old, NULL, 0, 0, NULL);
    SSL_CTX_set_keylog_callback(ctx, uvs__keylog_cb);
    return 0;
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

/* ---- SNI: let the embedding choose a context per requested name ---------------------------- */

static int uvs__sni_cb(SSL *ssl, int *alert, void *arg) {
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (uvs__cb.on_sni == NULL || arg == NULL)
        return SSL_TLSEXT_ERR_OK;
    int verdict = 0;
    SSL_CTX *chosen = uvs__cb.on_sni(arg, ssl, name, &verdict);
    if (verdict != 0) {
        *alert = SSL_AD_UNRECOGNIZED_NAME; /* the callback failed or refused the name */
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    if (chosen != NULL && chosen != SSL_get_SSL_CTX(ssl) && SSL_set_SSL_CTX(ssl, chosen) == NULL) {
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}

/* Route the ClientHello's server name to the embedding (arg identifies the context there).
 * The context may already serve handshakes in other threads (loops in several threads share
 * it): the argument is set before the callback that reads it, and the callback ignores a NULL
 * one, so a handshake that runs meanwhile never hands the embedding a NULL handle. */
int uvs_ctx_set_sni(SSL_CTX *ctx, void *arg) {
    if (SSL_CTX_set_tlsext_servername_arg(ctx, arg) != 1)
        return 0;
    return SSL_CTX_set_tlsext_servername_callback(ctx, uvs__sni_cb) == 1;
}

/* ---- CRLs ------------------------------------------------------------------------------- */

/* Load every CRL in a PEM file into a store. Returns how many, 0 on error. */
static int uvs__store_load_crl_file(X509_STORE *store, const char *path) {
    X509_LOOKUP *lookup = store ? X509_STORE_add_lookup(store, X509_LOOKUP_file()) : NULL;
    if (lookup == NULL)
        return 0;
    return X509_load_crl_file(lookup, path, X509_FILETYPE_PEM);
}

/* Load every CRL in a PEM file into the context's store. Returns how many, 0 on error. */
int uvs_ctx_load_crl_file(SSL_CTX *ctx, const char *path) {
    return uvs__store_load_crl_file(SSL_CTX_get_cert_store(ctx), path);
}

/* ---- live reload -------------------------------------------------------------------------- */

struct uvs_reload_s {
    X509 *cert;            /* the new leaf, or NULL: the certificate is not reloaded */
    STACK_OF(X509) *chain; /* what follows it in its file (possibly nothing) */
    EVP_PKEY *key;
    X509_STORE *store;     /* the new trust store, or NULL: the trust store is not reloaded */
};

uvs_reload_t *uvs_reload_new(void) { return calloc(1, sizeof(uvs_reload_t)); }

void uvs_reload_free(uvs_reload_t *r) {
    if (r == NULL)
        return;
    X509_free(r->cert);
    sk_X509_pop_free(r->chain, X509_free);
    EVP_PKEY_free(r->key);
    X509_STORE_free(r->store);
    free(r);
}

X509 *uvs_reload_cert(uvs_reload_t *r) { return r->cert; }

/* Read the certificate file at path: a PEM chain (leaf first) or, with SSL_FILETYPE_ASN1, one
 * DER certificate, as SSL_CTX_use_certificate_chain_file / _use_certificate_file read it.
 * Returns 1, or 0 with the error queue saying why. */
int uvs_reload_cert_file(uvs_reload_t *r, const char *path, int filetype, const char *password) {
    ERR_clear_error();
    X509_free(r->cert);
    r->cert = NULL;
    sk_X509_pop_free(r->chain, X509_free);
    r->chain = sk_X509_new_null();
    if (r->chain == NULL)
        return 0;
    BIO *b = BIO_new_file(path, "rb");
    if (b == NULL)
        return 0;
    int ok = 0;
    if (filetype != SSL_FILETYPE_PEM) {
        r->cert = d2i_X509_bio(b, NULL);
        ok = r->cert != NULL;
        goto done;
    }
    r->cert = PEM_read_bio_X509_AUX(b, NULL, uvs__pw_cb, (void *)password);
    if (r->cert == NULL)
        goto done;
    for (;;) {
        X509 *ca = PEM_read_bio_X509(b, NULL, uvs__pw_cb, (void *)password);
        if (ca == NULL) {
            ok = uvs__pem_end();
            break;
        }
        if (!sk_X509_push(r->chain, ca)) { /* takes ca only when it succeeds */
            X509_free(ca);
            break;
        }
    }
done:
    BIO_free(b);
    return ok;
}

/* Read the private key file at path (PEM, possibly encrypted with password; or DER with
 * SSL_FILETYPE_ASN1). Returns 1, or 0 with the error queue saying why. */
int uvs_reload_key_file(uvs_reload_t *r, const char *path, int filetype, const char *password) {
    ERR_clear_error();
    EVP_PKEY_free(r->key);
    r->key = NULL;
    BIO *b = BIO_new_file(path, "rb");
    if (b == NULL)
        return 0;
    r->key = filetype == SSL_FILETYPE_ASN1
                 ? d2i_PrivateKey_bio(b, NULL)
                 : PEM_read_bio_PrivateKey(b, NULL, uvs__pw_cb, (void *)password);
    BIO_free(b);
    return r->key != NULL;
}

/* Whether the key read belongs to the certificate read. Returns 1, or 0 with the error queue
 * saying why ("key values mismatch"). */
int uvs_reload_check_key(uvs_reload_t *r) {
    ERR_clear_error();
    if (r->cert == NULL || r->key == NULL) {
        ERR_raise(ERR_LIB_SSL, ERR_R_PASSED_NULL_PARAMETER);
        return 0;
    }
    return X509_check_private_key(r->cert, r->key) == 1;
}

static X509_STORE *uvs__reload_store(uvs_reload_t *r) {
    if (r->store == NULL)
        r->store = X509_STORE_new();
    return r->store;
}

/* Add CA certificates (and CRLs) from a PEM file and/or a hashed directory (either may be
 * NULL) to the new trust store. Returns 1, or 0 with the error queue saying why. */
int uvs_reload_ca_files(uvs_reload_t *r, const char *file, const char *dir) {
    ERR_clear_error();
    X509_STORE *store = uvs__reload_store(r);
    if (store == NULL)
        return 0;
    if (file != NULL && X509_STORE_load_file(store, file) != 1)
        return 0;
    if (dir != NULL && X509_STORE_load_path(store, dir) != 1)
        return 0;
    return 1;
}

/* Add the CA certificates in data (as uvs_ctx_add_ca_mem) to the new trust store. Returns how
 * many, or 0 with the error queue saying why. */
int uvs_reload_ca_mem(uvs_reload_t *r, const char *data, size_t len) {
    ERR_clear_error();
    X509_STORE *store = uvs__reload_store(r);
    return store != NULL ? uvs__store_add_ca_mem(store, data, len) : 0;
}

/* Add the system trust store (OpenSSL's default paths) to the new trust store. Returns 1, or
 * 0 with the error queue saying why. */
int uvs_reload_default_paths(uvs_reload_t *r) {
    ERR_clear_error();
    X509_STORE *store = uvs__reload_store(r);
    return store != NULL && X509_STORE_set_default_paths(store) == 1;
}

/* Add the CRLs of a PEM file to the new trust store. Returns how many, 0 on error. */
int uvs_reload_crl_file(uvs_reload_t *r, const char *path) {
    ERR_clear_error();
    return uvs__store_load_crl_file(uvs__reload_store(r), path);
}

/* A certificate of ctx whose key type is not `type`, or NULL. Moves ctx's current
 * certificate: the caller holds the exclusive lock and puts it back. */
static X509 *uvs__other_key_type(SSL_CTX *ctx, int type) {
    long step = SSL_CERT_SET_FIRST;
    while (SSL_CTX_set_current_cert(ctx, step) == 1) {
        step = SSL_CERT_SET_NEXT;
        X509 *x = SSL_CTX_get0_certificate(ctx);
        EVP_PKEY *k = x != NULL ? X509_get0_pubkey(x) : NULL;
        if (k != NULL && EVP_PKEY_get_base_id(k) != type)
            return x;
    }
    ERR_clear_error(); /* the walk's end is not an error */
    return NULL;
}

/* Put what r holds in service on ctx, all of it or (on failure) none of it: the certificate,
 * its chain and key (when r read a certificate), and the trust store (when r has one).
 * Returns 1; 0 with the error queue saying why; UVS_RELOAD_EKEYTYPE when the context serves a
 * certificate with another key type; UVS_RELOAD_ELOCK when the lock failed. */
int uvs_reload_install(uvs_reload_t *r, SSL_CTX *ctx) {
    ERR_clear_error();
    if (r->cert != NULL && (r->key == NULL || r->chain == NULL)) {
        ERR_raise(ERR_LIB_SSL, ERR_R_PASSED_NULL_PARAMETER);
        return 0;
    }
    if (uvs__engine_certs_lock(1) != 1)
        return UVS_RELOAD_ELOCK;
    int rc = 1;
    if (r->cert != NULL) {
        X509 *current = SSL_CTX_get0_certificate(ctx);
        if (uvs__other_key_type(ctx, EVP_PKEY_get_base_id(r->key)) != NULL)
            rc = UVS_RELOAD_EKEYTYPE;
        else if (SSL_CTX_use_cert_and_key(ctx, r->cert, r->key, r->chain, 1) != 1)
            rc = 0;
        if (rc != 1 && current != NULL && SSL_CTX_select_current_cert(ctx, current) != 1)
            ERR_clear_error(); /* cannot fail: current is one of ctx's own */
    }
    /* set1 takes its own reference; cannot fail once the certificate went in */
    if (rc == 1 && r->store != NULL && SSL_CTX_set1_verify_cert_store(ctx, r->store) != 1)
        rc = 0;
    if (uvs__engine_certs_unlock() != 1 && rc == 1)
        rc = UVS_RELOAD_ELOCK;
    return rc;
}

/* ---- certificate fields as text ---------------------------------------------------------- */

/* Write field `what` (UVS_X509_*, see uvssl_api.h) of x into buf as NUL-terminated UTF-8
 * text. Returns the text length, or -1 (or the length needed, when buf is too small, as a
 * negative number below -1: -(needed + 1)). */
int uvs_x509_field(X509 *x, int what, char *buf, int len) {
    BIO *b = BIO_new(BIO_s_mem());
    int ok = 0;
    if (b == NULL)
        return -1;
    switch (what) {
    case UVS_X509_SUBJECT:
    case UVS_X509_ISSUER: {
        const unsigned long flags =
            (XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB & ~XN_FLAG_SEP_MASK) | XN_FLAG_SEP_MULTILINE;
        X509_NAME *name =
            what == UVS_X509_SUBJECT ? X509_get_subject_name(x) : X509_get_issuer_name(x);
        ok = X509_NAME_print_ex(b, name, 0, flags) >= 0;
        break;
    }
    case UVS_X509_SERIAL: {
        BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
        char *hex = bn ? BN_bn2hex(bn) : NULL;
        ok = hex != NULL && BIO_puts(b, hex) >= 0;
        OPENSSL_free(hex);
        BN_free(bn);
        break;
    }
    case UVS_X509_NOT_BEFORE:
    case UVS_X509_NOT_AFTER: {
        const ASN1_TIME *t =
            what == UVS_X509_NOT_BEFORE ? X509_get0_notBefore(x) : X509_get0_notAfter(x);
        struct tm tm;
        ok = t != NULL && ASN1_TIME_to_tm(t, &tm) == 1 &&
             BIO_printf(b, "%04d%02d%02d%02d%02d%02dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                        tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec) > 0;
        break;
    }
    case UVS_X509_SAN: {
        GENERAL_NAMES *names = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
        ok = 1;
        for (int i = 0; names != NULL && i < sk_GENERAL_NAME_num(names); i++) {
            const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
            if (g->type == GEN_DNS || g->type == GEN_EMAIL || g->type == GEN_URI) {
                const char *tag = g->type == GEN_DNS ? "DNS" : g->type == GEN_EMAIL ? "email" : "URI";
                const ASN1_IA5STRING *s = g->d.ia5;
                ok = ok && BIO_printf(b, "%s:%.*s\n", tag, ASN1_STRING_length(s),
                                      (const char *)ASN1_STRING_get0_data(s)) > 0;
            } else if (g->type == GEN_IPADD) {
                const unsigned char *p = ASN1_STRING_get0_data(g->d.ip);
                int n = ASN1_STRING_length(g->d.ip);
                if (n == 4) {
                    ok = ok && BIO_printf(b, "IP Address:%d.%d.%d.%d\n", p[0], p[1], p[2], p[3]) > 0;
                } else if (n == 16) {
                    ok = ok && BIO_puts(b, "IP Address:") > 0;
                    for (int k = 0; k < 16; k += 2)
                        ok = ok && BIO_printf(b, k ? ":%x" : "%x", (p[k] << 8) | p[k + 1]) > 0;
                    ok = ok && BIO_puts(b, "\n") > 0;
                }
            }
        }
        GENERAL_NAMES_free(names);
        break;
    }
    case UVS_X509_VERSION:
        ok = BIO_printf(b, "%ld", X509_get_version(x) + 1) > 0;
        break;
    default:
        break;
    }
    char *data = NULL;
    long n = BIO_get_mem_data(b, &data);
    int r;
    if (!ok || n < 0) {
        ERR_clear_error();
        r = -1;
    } else if (n >= len) {
        r = -(int)n - 2;
    } else {
        memcpy(buf, data, (size_t)n);
        buf[n] = '\0';
        r = (int)n;
    }
    BIO_free(b);
    return r;
}
