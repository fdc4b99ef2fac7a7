/*
 * tickets.c: session ticket keys shared by servers (several processes or machines).
 *
 * Theory of operation
 * -------------------
 * OpenSSL encrypts stateless session tickets (TLS 1.2 and 1.3) with a key it makes at random
 * for each SSL_CTX, so a ticket only resumes on the context that issued it. Servers that share
 * a set of keys resume each other's sessions instead. The keys are given in the layout of
 * nginx's ssl_session_ticket_key files, 80 bytes each:
 *
 *     name[0:16]  HMAC-SHA256 secret[16:48]  AES-256 key[48:80]
 *
 * (nginx's ngx_ssl_session_ticket_keys in src/event/ngx_event_openssl.c copies an 80-byte file
 * as name = buf, hmac_key = buf + 16, aes_key = buf + 48; its legacy 48-byte form is name, AES-128
 * key, HMAC key, which uvssl does not take.) The same file therefore works in nginx and uvssl.
 *
 * uvs__ticket_cb is installed with SSL_CTX_set_tlsext_ticket_key_evp_cb. To issue a ticket it
 * names the first key, draws a random IV (RAND_bytes) and sets up AES-256-CBC and HMAC-SHA256
 * with that key's halves. To open one it looks for the key the ticket names among all the keys:
 * unknown names answer 0 (OpenSSL then does a full handshake, not an error); a ticket opened
 * with a key other than the first, or any TLS 1.3 ticket (meant to be used once, RFC 8446
 * C.4), answers 2 so that OpenSSL issues a fresh ticket under the current first key. Any
 * crypto failure answers -1 with the error queue cleared. With no keys installed (a context
 * an SNI callback switched to, without keys of its own) no ticket is issued or accepted.
 *
 * State and lifetime. The keys live in a uvs__tickets_t hung on the SSL_CTX as ex_data, freed
 * (and wiped with OPENSSL_cleanse) by the ex_data free callback when the SSL_CTX's last
 * reference goes. That covers every case alike: a context uvssl built and owns, a borrowed one
 * (the keys then die with their owner's SSL_CTX), and connections that outlive the Python
 * Context object (each SSL holds a reference to its SSL_CTX). The callback looks the state up
 * on SSL_get_SSL_CTX(ssl).
 *
 * Rotation. One context may serve loops in several threads, so keys can be swapped while
 * handshakes run elsewhere. Each state has a CRYPTO_RWLOCK: the callback holds it for reading
 * while it copies key bytes into the cipher and MAC contexts (a few microseconds, no I/O), a
 * rotation holds it for writing only to swap the key array pointer; the old array is wiped and
 * freed after the lock is released. A lock rather than a reference-counted pointer swap: the
 * critical sections are tiny, rotations rare, and OpenSSL already gives a portable rwlock.
 * The first installation on a context creates the state and sets the ex_data under a global
 * lock (two threads installing at once cannot both create one); the callback is installed once,
 * only after the ex_data is set, and the ex_data never changes after that. (That first
 * SSL_CTX_set_ex_data may grow the context's ex_data array; nothing in uvssl reads a context's
 * ex_data during handshakes, but code that does, on a context serving in other threads, should
 * see its keys given before it serves.)
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>

#include "uvssl_api.h"

#define UVS__TK_NAME 16
#define UVS__TK_HMAC 32
#define UVS__TK_AES 32

typedef struct {
    unsigned char name[UVS__TK_NAME];
    unsigned char hmac[UVS__TK_HMAC];
    unsigned char aes[UVS__TK_AES];
} uvs__ticket_key_t;

typedef struct {
    CRYPTO_RWLOCK *lock;
    size_t n;                  /* keys[0] issues tickets; all of them open tickets */
    uvs__ticket_key_t *keys;   /* n entries, wiped before being freed */
    int installed;             /* the ticket callback is set on the SSL_CTX */
} uvs__tickets_t;

static int uvs__tk_index = -1;
static CRYPTO_RWLOCK *uvs__tk_install_lock = NULL;
static CRYPTO_ONCE uvs__tk_once = CRYPTO_ONCE_STATIC_INIT;

static void uvs__tk_keys_free(uvs__ticket_key_t *keys, size_t n) {
    if (keys != NULL) {
        OPENSSL_cleanse(keys, n * sizeof(*keys));
        free(keys);
    }
}

static void uvs__tk_state_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                               void *argp) {
    uvs__tickets_t *t = ptr;
    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    if (t == NULL)
        return;
    uvs__tk_keys_free(t->keys, t->n);
    CRYPTO_THREAD_lock_free(t->lock);
    free(t);
}

static void uvs__tk_init(void) {
    uvs__tk_install_lock = CRYPTO_THREAD_lock_new();
    uvs__tk_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, uvs__tk_state_free);
}

/* Set AES-256-CBC (encrypting or decrypting) and HMAC-SHA256 up with key k. 1 or 0. */
static int uvs__tk_setup(const uvs__ticket_key_t *k, unsigned char *iv, EVP_CIPHER_CTX *cctx,
                         EVP_MAC_CTX *hctx, int enc) {
    OSSL_PARAM params[3];
    char digest[] = "SHA256";
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)k->hmac,
                                                  sizeof(k->hmac));
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0);
    params[2] = OSSL_PARAM_construct_end();
    if (EVP_MAC_CTX_set_params(hctx, params) != 1)
        return 0;
    if (enc)
        return EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv) == 1;
    return EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv) == 1;
}

static int uvs__ticket_cb(SSL *ssl, unsigned char key_name[16], unsigned char *iv,
                          EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc) {
    SSL_CTX *ctx = SSL_get_SSL_CTX(ssl);
    uvs__tickets_t *t = ctx != NULL && uvs__tk_index >= 0 ? SSL_CTX_get_ex_data(ctx, uvs__tk_index)
                                                          : NULL;
    int r;
    if (t == NULL)
        return 0; /* no keys here: no ticket issued, none accepted (full handshake) */
    if (!CRYPTO_THREAD_read_lock(t->lock)) {
        ERR_clear_error();
        return -1;
    }
    if (t->n == 0) {
        r = 0;
    } else if (enc) {
        const uvs__ticket_key_t *k = &t->keys[0];
        int ivlen = EVP_CIPHER_get_iv_length(EVP_aes_256_cbc());
        if (ivlen <= 0 || ivlen > EVP_MAX_IV_LENGTH || RAND_bytes(iv, ivlen) != 1 ||
            !uvs__tk_setup(k, iv, cctx, hctx, 1)) {
            r = -1;
        } else {
            memcpy(key_name, k->name, UVS__TK_NAME);
            r = 1;
        }
    } else {
        size_t i;
        for (i = 0; i < t->n; i++)
            if (memcmp(key_name, t->keys[i].name, UVS__TK_NAME) == 0)
                break;
        if (i == t->n)
            r = 0; /* a ticket from a key we do not have (any more): full handshake */
        else if (!uvs__tk_setup(&t->keys[i], iv, cctx, hctx, 0))
            r = -1;
        else
            r = (i != 0 || SSL_version(ssl) == TLS1_3_VERSION) ? 2 : 1;
    }
    if (!CRYPTO_THREAD_unlock(t->lock))
        r = -1;
    if (r < 0)
        ERR_clear_error();
    return r;
}

/* The state of ctx, made and attached (under the global install lock) when it has none. */
static uvs__tickets_t *uvs__tk_state(SSL_CTX *ctx) {
    uvs__tickets_t *t = NULL;
    if (!CRYPTO_THREAD_run_once(&uvs__tk_once, uvs__tk_init) || uvs__tk_index < 0 ||
        uvs__tk_install_lock == NULL)
        return NULL;
    if (!CRYPTO_THREAD_write_lock(uvs__tk_install_lock))
        return NULL;
    t = SSL_CTX_get_ex_data(ctx, uvs__tk_index);
    if (t == NULL) {
        t = calloc(1, sizeof(*t));
        if (t != NULL && (t->lock = CRYPTO_THREAD_lock_new()) == NULL) {
            free(t);
            t = NULL;
        }
        if (t != NULL && !SSL_CTX_set_ex_data(ctx, uvs__tk_index, t)) {
            CRYPTO_THREAD_lock_free(t->lock);
            free(t);
            t = NULL;
        }
    }
    if (!CRYPTO_THREAD_unlock(uvs__tk_install_lock))
        return NULL; /* cannot happen for the lock's owner; refuse rather than go on */
    return t;
}

int uvs_ctx_set_ticket_keys(SSL_CTX *ctx, const unsigned char *keys, size_t n) {
    const SSL_METHOD *m;
    if (ctx == NULL || keys == NULL || n == 0 || n > UVS_TICKET_KEYS_MAX)
        return UVS_TICKETS_EARGS;
    m = SSL_CTX_get_ssl_method(ctx);
    if (m == TLS_client_method())
        return UVS_TICKETS_ECLIENT;
    if (SSL_CTX_get_options(ctx) & SSL_OP_NO_TICKET)
        return UVS_TICKETS_EDISABLED;
    uvs__ticket_key_t *fresh = malloc(n * sizeof(*fresh));
    if (fresh == NULL)
        return 0;
    for (size_t i = 0; i < n; i++) {
        const unsigned char *k = keys + i * UVS_TICKET_KEY_LEN;
        memcpy(fresh[i].name, k, UVS__TK_NAME);
        memcpy(fresh[i].hmac, k + UVS__TK_NAME, UVS__TK_HMAC);
        memcpy(fresh[i].aes, k + UVS__TK_NAME + UVS__TK_HMAC, UVS__TK_AES);
    }
    uvs__tickets_t *t = uvs__tk_state(ctx);
    if (t == NULL || !CRYPTO_THREAD_write_lock(t->lock)) {
        uvs__tk_keys_free(fresh, n);
        return 0;
    }
    /* the callback goes in once, after the state exists (until the first keys are in, it
     * answers 0: no ticket); if it cannot be installed, nothing changes */
    if (!t->installed) {
        if (SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, uvs__ticket_cb) != 1) {
            uvs__tk_keys_free(fresh, n);
            (void)CRYPTO_THREAD_unlock(t->lock); /* already failing: 0 either way */
            return 0;
        }
        t->installed = 1;
    }
    uvs__ticket_key_t *old = t->keys;
    size_t old_n = t->n;
    t->keys = fresh;
    t->n = n;
    /* an unlock by the lock's owner cannot fail; if it did, the new keys are in but the
     * context's handshakes would block: report the failure */
    int unlocked = CRYPTO_THREAD_unlock(t->lock);
    uvs__tk_keys_free(old, old_n);
    return unlocked ? 1 : 0;
}

int uvs_ctx_ticket_key_count(SSL_CTX *ctx) {
    uvs__tickets_t *t;
    int n = 0;
    if (!CRYPTO_THREAD_run_once(&uvs__tk_once, uvs__tk_init) || uvs__tk_index < 0)
        return -1;
    t = SSL_CTX_get_ex_data(ctx, uvs__tk_index);
    if (t == NULL)
        return 0;
    if (!CRYPTO_THREAD_read_lock(t->lock))
        return -1;
    n = (int)t->n;
    return CRYPTO_THREAD_unlock(t->lock) ? n : -1;
}
