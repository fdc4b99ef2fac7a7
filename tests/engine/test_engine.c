/*
 * test_engine.c: the TLS engine (csrc/tls.c) with no socket and no event loop.
 *
 * Theory of operation
 * -------------------
 * Two engines, a client and a server, talk to each other in memory: whatever ciphertext one
 * produced (uvs__engine_out) is offered to the other, which is then stepped until it needs more
 * input. That is all an embedding does too, minus the kernel, so every behaviour the event loop
 * and the blocking streams rely on can be checked here byte for byte: the handshake, data both
 * ways, a KeyUpdate (answered without any application data), close_notify in both orders (and
 * the data in front of it), a record cut short, garbage, a record longer than TLS allows, and
 * the state machine refusing transitions that must not happen.
 *
 * Built by tests/test_engine.py with OpenSSL only (no libuv on the command line or in the
 * include path: that is part of the test):
 *   gcc -std=c99 -Icsrc tests/engine/test_engine.c csrc/tls.c csrc/buf.c $(pkg-config ... openssl)
 *   ./test_engine server-chain.pem server-key.pem ca.pem
 * Every CHECK prints "ok" or "FAIL" with its line; the exit status is 1 if any failed. Every
 * loop is bounded, so a stuck engine fails a check instead of hanging.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "tls_engine.h"

static int checks, failures;

#define CHECK(cond) check((cond) != 0, #cond, __LINE__)

static void check(int ok, const char *what, int line) {
    checks++;
    if (!ok)
        failures++;
    printf("%s line %d: %s\n", ok ? "ok" : "FAIL", line, what);
}

#define MAX_ROUNDS 64   /* flights between the two engines before we call it stuck */
#define MAX_STEPS 256   /* steps on one input                                       */
#define PLAIN_MAX (1024 * 1024)

typedef struct {
    const char *name;
    uvs__engine_t *e;
    char *plain;        /* everything decrypted so far */
    size_t plain_len;
    int handshakes;     /* UVS__TLS_R_HANDSHAKE seen   */
    int closed;         /* UVS__TLS_R_CLOSED seen      */
    int errors;         /* UVS__TLS_R_ERROR seen       */
    int data_before_close; /* a DATA result came before CLOSED in the same feed */
} side_t;

static char step_buf[64 * 1024];

/* Step until the engine needs more input (or failed). */
static void run_steps(side_t *s) {
    for (int i = 0; i < MAX_STEPS; i++) {
        size_t got = 0;
        int r = uvs__engine_step(s->e, step_buf, sizeof(step_buf), &got);
        switch (r) {
        case UVS__TLS_R_AGAIN:
            return;
        case UVS__TLS_R_HANDSHAKE:
            s->handshakes++;
            break;
        case UVS__TLS_R_DATA:
            if (s->plain_len + got <= PLAIN_MAX) {
                memcpy(s->plain + s->plain_len, step_buf, got);
                s->plain_len += got;
            }
            break;
        case UVS__TLS_R_CLOSED:
            if (s->plain_len > 0)
                s->data_before_close = 1;
            s->closed++;
            return;
        default:
            s->errors++;
            return;
        }
    }
    printf("note: %s did not settle in %d steps\n", s->name, MAX_STEPS);
}

/* Offer n bytes to s and make all the progress they allow. */
static void feed(side_t *s, const char *p, size_t n) {
    uvs__engine_offer(s->e, p, n);
    run_steps(s);
    uvs__engine_settle(s->e);
}

/* Move everything from's engine produced over to `to`. Returns the bytes moved. */
static size_t move(side_t *from, side_t *to) {
    uvs__buf_t *out = uvs__engine_out(from->e);
    size_t n = out->len;
    if (n > 0) {
        feed(to, out->base, n);
        uvs__buf_consume(out, n);
    }
    return n;
}

/* Exchange flights until neither side has anything to send. Returns 0 when quiet. */
static int exchange(side_t *a, side_t *b) {
    for (int i = 0; i < MAX_ROUNDS; i++) {
        size_t moved = move(a, b) + move(b, a);
        if (moved == 0)
            return 0;
    }
    return -1;
}

static SSL_CTX *server_ctx, *client_ctx;

static int make_contexts(const char *chain, const char *key, const char *ca) {
    server_ctx = SSL_CTX_new(TLS_server_method());
    client_ctx = SSL_CTX_new(TLS_client_method());
    if (server_ctx == NULL || client_ctx == NULL)
        return -1;
    if (SSL_CTX_use_certificate_chain_file(server_ctx, chain) != 1 ||
        SSL_CTX_use_PrivateKey_file(server_ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(server_ctx) != 1)
        return -1;
    if (SSL_CTX_load_verify_locations(client_ctx, ca, NULL) != 1)
        return -1;
    SSL_CTX_set_verify(client_ctx, SSL_VERIFY_PEER, NULL);
    /* KeyUpdate is TLS 1.3 only; the rest does not care */
    if (SSL_CTX_set_min_proto_version(client_ctx, TLS1_3_VERSION) != 1)
        return -1;
    return 0;
}

static int new_side(side_t *s, const char *name, int server) {
    int err = 0;
    memset(s, 0, sizeof(*s));
    s->name = name;
    s->plain = malloc(PLAIN_MAX);
    s->e = uvs__engine_new(server ? server_ctx : client_ctx, NULL, server, &err);
    if (s->e == NULL || s->plain == NULL)
        return -1;
    if (!server) {
        SSL *ssl = uvs__engine_ssl(s->e);
        if (SSL_set_tlsext_host_name(ssl, "localhost") != 1 || SSL_set1_host(ssl, "localhost") != 1)
            return -1;
    }
    return err;
}

static void free_side(side_t *s) {
    if (s->e != NULL)
        uvs__engine_free(s->e);
    free(s->plain);
    s->e = NULL;
    s->plain = NULL;
}

/* A client and a server with the handshake done, or -1. */
static int pair(side_t *c, side_t *s) {
    if (new_side(c, "client", 0) != 0 || new_side(s, "server", 1) != 0)
        return -1;
    feed(c, NULL, 0); /* the client speaks first: its hello */
    if (exchange(c, s) != 0)
        return -1;
    return c->handshakes == 1 && s->handshakes == 1 ? 0 : -1;
}

static void reset_plain(side_t *s) { s->plain_len = 0; s->data_before_close = 0; }

static int encrypt_all(side_t *s, const char *p, size_t n) {
    size_t used = 0;
    if (uvs__engine_encrypt(s->e, p, n, &used) != 0)
        return -1;
    return used == n ? 0 : -1;
}

/* ---- the tests ---------------------------------------------------------------------------- */

static void test_handshake(void) {
    side_t c, s;
    int ok = pair(&c, &s) == 0;
    CHECK(ok);
    CHECK(uvs__engine_state(c.e) == UVS_TLS_OPEN);
    CHECK(uvs__engine_state(s.e) == UVS_TLS_OPEN);
    CHECK(c.errors == 0 && s.errors == 0);
    CHECK(SSL_get_verify_result(uvs__engine_ssl(c.e)) == X509_V_OK);
    CHECK(SSL_version(uvs__engine_ssl(c.e)) == TLS1_3_VERSION);
    CHECK(uvs__engine_out(c.e)->len == 0 && uvs__engine_out(s.e)->len == 0);
    CHECK(ERR_peek_error() == 0);
    free_side(&c);
    free_side(&s);
}

static void test_data_both_ways(void) {
    side_t c, s;
    CHECK(pair(&c, &s) == 0);
    const char hello[] = "hello from the client";
    CHECK(encrypt_all(&c, hello, sizeof(hello) - 1) == 0);
    CHECK(uvs__engine_out(c.e)->len > sizeof(hello) - 1); /* ciphertext, with a header */
    CHECK(exchange(&c, &s) == 0);
    CHECK(s.plain_len == sizeof(hello) - 1 && memcmp(s.plain, hello, s.plain_len) == 0);

    /* large: several records, arriving in one offer */
    size_t big = 200 * 1024;
    char *p = malloc(big);
    CHECK(p != NULL);
    if (p != NULL) {
        for (size_t i = 0; i < big; i++)
            p[i] = (char)(i * 7 + 3);
        CHECK(encrypt_all(&s, p, big) == 0);
        CHECK(exchange(&c, &s) == 0);
        CHECK(c.plain_len == big && memcmp(c.plain, p, big) == 0);
        free(p);
    }
    CHECK(c.errors == 0 && s.errors == 0);
    free_side(&c);
    free_side(&s);
}

static void test_key_update(void) {
    side_t c, s;
    CHECK(pair(&c, &s) == 0);
    CHECK(SSL_key_update(uvs__engine_ssl(c.e), SSL_KEY_UPDATE_REQUESTED) == 1);
    const char msg[] = "after the key update";
    CHECK(encrypt_all(&c, msg, sizeof(msg) - 1) == 0); /* the KeyUpdate leaves first */
    CHECK(move(&c, &s) > 0);
    CHECK(s.plain_len == sizeof(msg) - 1 && memcmp(s.plain, msg, s.plain_len) == 0);
    /* the server owes a KeyUpdate of its own; OpenSSL sends it in front of its next write */
    CHECK(SSL_get_key_update_type(uvs__engine_ssl(s.e)) == SSL_KEY_UPDATE_NOT_REQUESTED);
    CHECK(SSL_get_key_update_type(uvs__engine_ssl(c.e)) == SSL_KEY_UPDATE_NONE);
    reset_plain(&s);
    const char reply[] = "reply under new keys";
    CHECK(encrypt_all(&s, reply, sizeof(reply) - 1) == 0);
    CHECK(SSL_get_key_update_type(uvs__engine_ssl(s.e)) == SSL_KEY_UPDATE_NONE);
    CHECK(exchange(&c, &s) == 0);
    CHECK(c.plain_len == sizeof(reply) - 1 && memcmp(c.plain, reply, c.plain_len) == 0);
    CHECK(c.errors == 0 && s.errors == 0);
    free_side(&c);
    free_side(&s);
}

/* first sends close_notify (after some data), second answers it. */
static void close_in_order(side_t *first, side_t *second) {
    const char last[] = "last words";
    CHECK(encrypt_all(first, last, sizeof(last) - 1) == 0);
    CHECK(uvs__engine_close_notify(first->e) == 0);
    CHECK(uvs__engine_close_notify_sent(first->e));
    CHECK(uvs__engine_close_notify(first->e) == 0); /* once only: nothing more is written */
    size_t queued = uvs__engine_out(first->e)->len;
    CHECK(queued > 0);
    CHECK(move(first, second) == queued);
    /* the data comes first, the close after it (a deferred result) */
    CHECK(second->plain_len == sizeof(last) - 1 &&
          memcmp(second->plain, last, second->plain_len) == 0);
    CHECK(second->data_before_close && second->closed == 1);
    CHECK(uvs__engine_close_notify_received(second->e));
    CHECK(!uvs__engine_has_deferred(second->e));
    /* a write after our close_notify cannot happen in the session: the glue refuses it */
    CHECK(uvs__engine_close_notify(second->e) == 0);
    CHECK(uvs__engine_set_state(second->e, UVS_TLS_DONE) == 0);
    CHECK(uvs__engine_state(second->e) == UVS_TLS_DONE);
    CHECK(move(second, first) > 0);
    CHECK(first->closed == 1 && first->errors == 0);
    CHECK(uvs__engine_set_state(first->e, UVS_TLS_DONE) == 0);
    /* nothing after close_notify: both quiet */
    CHECK(exchange(first, second) == 0);
    CHECK(ERR_peek_error() == 0);
}

static void test_close_notify_client_first(void) {
    side_t c, s;
    CHECK(pair(&c, &s) == 0);
    close_in_order(&c, &s);
    free_side(&c);
    free_side(&s);
}

static void test_close_notify_server_first(void) {
    side_t c, s;
    CHECK(pair(&c, &s) == 0);
    close_in_order(&s, &c);
    free_side(&c);
    free_side(&s);
}

static void test_truncated_record(void) {
    side_t c, s;
    CHECK(pair(&c, &s) == 0);
    const char msg[] = "a record that arrives in pieces";
    CHECK(encrypt_all(&c, msg, sizeof(msg) - 1) == 0);
    uvs__buf_t *out = uvs__engine_out(c.e);
    size_t n = out->len;
    CHECK(n > 10);
    /* a header cut in two */
    feed(&s, out->base, 3);
    CHECK(s.plain_len == 0 && s.errors == 0);
    /* all but the last 5 bytes: nothing yet, no error (OpenSSL holds the partial record) */
    feed(&s, out->base + 3, n - 8);
    CHECK(s.plain_len == 0 && s.errors == 0);
    CHECK(uvs__engine_state(s.e) == UVS_TLS_OPEN);
    /* the rest one byte at a time: the data comes with the last one only */
    int early = 0;
    for (size_t i = n - 5; i < n; i++) {
        early |= s.plain_len != 0;
        feed(&s, out->base + i, 1);
    }
    CHECK(!early);
    CHECK(s.plain_len == sizeof(msg) - 1 && memcmp(s.plain, msg, s.plain_len) == 0);
    CHECK(uvs__engine_kept(s.e) == 0);
    uvs__buf_consume(out, n);

    /* a connection cut during the handshake: the glue fails it with the engine's EOF */
    side_t c2, s2;
    CHECK(new_side(&c2, "client2", 0) == 0 && new_side(&s2, "server2", 1) == 0);
    feed(&c2, NULL, 0);
    uvs__buf_t *hello = uvs__engine_out(c2.e);
    CHECK(hello->len > 20);
    /* handed over in advance (as attach does with bytes read ahead), then offered */
    CHECK(uvs__engine_keep(s2.e, hello->base, hello->len / 2) == 0);
    CHECK(uvs__engine_kept(s2.e) == hello->len / 2);
    feed(&s2, NULL, 0);
    CHECK(uvs__engine_kept(s2.e) == 0); /* all of it went to OpenSSL */
    CHECK(s2.errors == 0 && uvs__engine_state(s2.e) == UVS_TLS_HANDSHAKING);
    uvs__engine_fail(s2.e, UVS__TLSE_EOF);
    CHECK(uvs__engine_state(s2.e) == UVS_TLS_FAILED);
    unsigned long codes[UVS__TLS_MAX_ERRORS];
    int ssl_err = 0, sys_err = 0;
    long vr = -1;
    int k = uvs__engine_error(s2.e, codes, UVS__TLS_MAX_ERRORS, &ssl_err, &sys_err, &vr);
    CHECK(k == 0 && ssl_err == SSL_ERROR_SYSCALL && sys_err == UVS__TLSE_EOF);
    free_side(&c2);
    free_side(&s2);
    free_side(&c);
    free_side(&s);
}

static void expect_failed(side_t *s, const char *why, int alert) {
    unsigned long codes[UVS__TLS_MAX_ERRORS];
    int ssl_err = 0, sys_err = 0;
    long vr = -1;
    printf("note: %s\n", why);
    CHECK(s->errors == 1);
    CHECK(uvs__engine_state(s->e) == UVS_TLS_FAILED);
    int k = uvs__engine_error(s->e, codes, UVS__TLS_MAX_ERRORS, &ssl_err, &sys_err, &vr);
    CHECK(k > 0 && ssl_err == SSL_ERROR_SSL);
    if (k > 0) {
        char text[256];
        ERR_error_string_n(codes[0], text, sizeof(text));
        printf("note: captured %s\n", text);
    }
    CHECK(ERR_peek_error() == 0);          /* the queue went into the engine */
    if (alert)
        CHECK(uvs__engine_out(s->e)->len > 0); /* an alert for the peer */
    else
        CHECK(uvs__engine_out(s->e)->len == 0); /* OpenSSL answers HTTP with no alert */
    /* a failed session stays failed: nothing moves it on */
    CHECK(uvs__engine_set_state(s->e, UVS_TLS_OPEN) == UVS__TLSE_EINVAL);
    CHECK(uvs__engine_set_state(s->e, UVS_TLS_DONE) == UVS__TLSE_EINVAL);
    CHECK(uvs__engine_state(s->e) == UVS_TLS_FAILED);
    size_t got = 99;
    CHECK(uvs__engine_step(s->e, step_buf, sizeof(step_buf), &got) == UVS__TLS_R_AGAIN && got == 0);
}

static void test_garbage(void) {
    side_t s;
    CHECK(new_side(&s, "server", 1) == 0);
    const char junk[] = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    feed(&s, junk, sizeof(junk) - 1);
    expect_failed(&s, "plaintext HTTP to a TLS server", 0);
    free_side(&s);

    /* a handshake record whose message makes no sense */
    CHECK(new_side(&s, "server", 1) == 0);
    const char bad[] = "\x16\x03\x01\x00\x08\x01\x00\x00\x04\xde\xad\xbe\xef";
    feed(&s, bad, sizeof(bad) - 1);
    expect_failed(&s, "a ClientHello that is four bytes of garbage", 1);
    free_side(&s);

    /* a flipped bit inside an established session */
    side_t c, s2;
    CHECK(pair(&c, &s2) == 0);
    const char msg[] = "tampered with";
    CHECK(encrypt_all(&c, msg, sizeof(msg) - 1) == 0);
    uvs__buf_t *out = uvs__engine_out(c.e);
    CHECK(out->len > 10);
    out->base[out->len - 3] ^= 0x40;
    move(&c, &s2);
    CHECK(s2.plain_len == 0);
    expect_failed(&s2, "a record whose tag does not match", 1);
    free_side(&c);
    free_side(&s2);
}

static void test_oversized_record(void) {
    side_t c, s;
    CHECK(pair(&c, &s) == 0);
    /* application data, TLS 1.2 on the wire, 0xffff bytes: longer than 2^14 + 256 allows */
    static char rec[5 + 0xffff];
    rec[0] = 0x17;
    rec[1] = 0x03;
    rec[2] = 0x03;
    rec[3] = (char)0xff;
    rec[4] = (char)0xff;
    memset(rec + 5, 0x5a, sizeof(rec) - 5);
    feed(&s, rec, sizeof(rec));
    CHECK(s.plain_len == 0);
    expect_failed(&s, "a record longer than TLS allows", 1);
    free_side(&c);
    free_side(&s);
}

static void test_transitions(void) {
    side_t c;
    CHECK(new_side(&c, "client", 0) == 0);
    CHECK(uvs__engine_state(c.e) == UVS_TLS_HANDSHAKING);
    CHECK(uvs__engine_set_state(c.e, UVS_TLS_DONE) == UVS__TLSE_EINVAL);
    CHECK(uvs__engine_set_state(c.e, UVS_TLS_HANDSHAKING) == UVS__TLSE_EINVAL);
    CHECK(uvs__engine_set_state(c.e, 0) == UVS__TLSE_EINVAL);
    CHECK(uvs__engine_set_state(c.e, 99) == UVS__TLSE_EINVAL);
    CHECK(uvs__engine_state(c.e) == UVS_TLS_HANDSHAKING);
    /* close_notify only in an open session */
    CHECK(uvs__engine_close_notify(c.e) == 0 && !uvs__engine_close_notify_sent(c.e));
    CHECK(uvs__engine_set_state(c.e, UVS_TLS_OPEN) == 0);
    CHECK(uvs__engine_set_state(c.e, UVS_TLS_OPEN) == UVS__TLSE_EINVAL);
    CHECK(uvs__engine_set_state(c.e, UVS_TLS_HANDSHAKING) == UVS__TLSE_EINVAL);
    CHECK(uvs__engine_set_state(c.e, UVS_TLS_DONE) == 0);
    CHECK(uvs__engine_set_state(c.e, UVS_TLS_OPEN) == UVS__TLSE_EINVAL);
    CHECK(uvs__engine_set_state(c.e, UVS_TLS_FAILED) == 0);
    CHECK(uvs__engine_set_state(c.e, UVS_TLS_FAILED) == 0);
    CHECK(uvs__engine_state(c.e) == UVS_TLS_FAILED);
    free_side(&c);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s server-chain.pem server-key.pem ca.pem\n", argv[0]);
        return 2;
    }
    if (make_contexts(argv[1], argv[2], argv[3]) != 0) {
        ERR_print_errors_fp(stderr);
        fprintf(stderr, "FAIL: cannot set up the contexts\n");
        return 2;
    }
    test_handshake();
    test_data_both_ways();
    test_key_update();
    test_close_notify_client_first();
    test_close_notify_server_first();
    test_truncated_record();
    test_garbage();
    test_oversized_record();
    test_transitions();
    SSL_CTX_free(server_ctx);
    SSL_CTX_free(client_ctx);
    printf("%d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
