/*
 * proxy.c: the HAProxy PROXY protocol (v1 text, v2 binary) on a server's accepted connections.
 *
 * Theory of operation
 * -------------------
 * Parsing. uvs_proxy_parse() is a pure function over the bytes received so far: it answers
 * "need more" (0), "complete, the header is N bytes" (N > 0) or "rejected" (a UVS_PROXY_E*
 * code), and fills a uvs_proxy_hdr_t with offsets into the caller's buffer (nothing is
 * copied). It decides as early as the bytes allow: the first byte that cannot start either
 * signature rejects; a v2 header's family and command are checked as soon as its 16-byte fixed
 * part is there; a v1 line without CRLF in its first 107 bytes (the protocol's maximum)
 * rejects. Accepted forms: v1 "TCP4", "TCP6" and "UNKNOWN"; v2 LOCAL (any family: the block is
 * ignored, the real peer stays the address) and PROXY with AF_UNSPEC (address block empty, TLVs
 * from byte 16), TCP over IPv4 (0x11) and TCP over IPv6 (0x21). Datagram (UDP) and UNIX
 * families are rejected: uvssl's servers are TCP, so such a header means a misconfigured
 * proxy, and accepting it as "unknown" would hide that. A v2 header may be as long as its
 * 16-bit length field says (at most 16 + 65535 bytes); its TLVs, and the sub-TLVs of an SSL
 * TLV, must each end within the header. The tests call the parser directly (fuzzing it).
 *
 * Connections. A server with the protocol on (uvs_server_set_proxy) gives each accepted
 * connection a uvs__proxy_t and the UVS__C_PROXY_WAIT state: the connection is not handed to
 * the embedding and no TLS engine is attached yet; its `acceptor` is set as for a TLS
 * connection still in its handshake, so shutdown and failures treat it the same way. A source
 * list, when given, is checked at once against the real peer address (IPv4-mapped IPv6 peers
 * match IPv4 entries). conn.c's read callback passes reads to uvs__proxy_on_read while the
 * state is set (its only cost for other connections: one test of a flag word it has loaded
 * already). The first read is parsed in place; only a header split over reads is gathered in
 * a buffer (grown as needed, never past the maximum). Once complete, the header's source
 * address becomes the connection's peer address, the proxy's own is kept in c->addrs.proxy
 * (copied out with the other addresses at the close), the TLVs are copied, and the connection
 * goes on as an ordinary accepted one: TLS servers attach the engine now (and announce eagerly when the server is
 * eager), plain servers announce it; the bytes that followed the header in the same read go
 * straight to the engine or to the read path, from the read buffer. A rejected header, EOF
 * before the end of the header, a source not on the list or the deadline (the rtimer, unused
 * before the announcement) fail the connection with UVS_ACT_PROXY and the reason as status:
 * the embedding sees it as a failed accept followed by the error.
 */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "uvs.h"
#include "tls.h"

#define UVS__PROXY_V1_MAX 107           /* the v1 line, CRLF included               */
#define UVS__PROXY_V2_MAX (16 + 65535)  /* the v2 fixed part and its longest block    */

static const unsigned char uvs__proxy_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                                 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

struct uvs__proxy_s {
    unsigned char *acc;  /* a header split over reads: the bytes so far  */
    size_t have, cap;
    unsigned char *tlv;  /* the v2 TLVs, copied                           */
    size_t tlv_len;
};

/* ---- the parser ----------------------------------------------------------------------- */

/* A decimal port: 1 to 5 digits, no leading zero, at most 65535. -1 if not. */
static int uvs__proxy_port(const unsigned char *p, size_t n) {
    if (n == 0 || n > 5 || (p[0] == '0' && n > 1))
        return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v > 65535 ? -1 : (int)v;
}

static long uvs__proxy_v1(const unsigned char *buf, size_t len, uvs_proxy_hdr_t *out) {
    size_t lim = len < UVS__PROXY_V1_MAX ? len : UVS__PROXY_V1_MAX;
    const unsigned char *nl = memchr(buf, '\n', lim);
    if (nl == NULL)
        return len >= UVS__PROXY_V1_MAX ? UVS_PROXY_ELINE : 0;
    size_t end = (size_t)(nl - buf); /* index of LF */
    if (end < 7 || buf[end - 1] != '\r')
        return UVS_PROXY_ELINE;
    /* tokens after "PROXY ", separated by single spaces, up to the CR */
    const unsigned char *tok[6];
    size_t toklen[6];
    size_t ntok = 0, start = 6, stop = end - 1;
    for (size_t i = start; i <= stop; i++) {
        if (i == stop || buf[i] == ' ') {
            if (ntok == 6)
                return UVS_PROXY_ESYNTAX;
            tok[ntok] = buf + start;
            toklen[ntok] = i - start;
            ntok++;
            start = i + 1;
            if (ntok == 1 && toklen[0] == 7 && memcmp(tok[0], "UNKNOWN", 7) == 0)
                break; /* the rest of an UNKNOWN line is ignored */
        }
    }
    if (toklen[0] == 7 && memcmp(tok[0], "UNKNOWN", 7) == 0) {
        out->version = 1;
        out->command = UVS_PROXY_CMD_PROXY;
        out->family = UVS_PROXY_AF_UNSPEC;
        return (long)end + 1;
    }
    int family;
    if (toklen[0] == 4 && memcmp(tok[0], "TCP4", 4) == 0)
        family = UVS_PROXY_AF_INET;
    else if (toklen[0] == 4 && memcmp(tok[0], "TCP6", 4) == 0)
        family = UVS_PROXY_AF_INET6;
    else
        return UVS_PROXY_ESYNTAX;
    if (ntok != 5)
        return UVS_PROXY_ESYNTAX;
    for (int i = 1; i <= 2; i++) {
        char ip[48];
        if (toklen[i] == 0 || toklen[i] >= sizeof(ip))
            return UVS_PROXY_EADDRESS;
        memcpy(ip, tok[i], toklen[i]);
        ip[toklen[i]] = '\0';
        int af = family == UVS_PROXY_AF_INET ? AF_INET : AF_INET6;
        if (inet_pton(af, ip, i == 1 ? out->src : out->dst) != 1)
            return UVS_PROXY_EADDRESS;
    }
    out->src_port = uvs__proxy_port(tok[3], toklen[3]);
    out->dst_port = uvs__proxy_port(tok[4], toklen[4]);
    if (out->src_port < 0 || out->dst_port < 0)
        return UVS_PROXY_EPORT;
    out->version = 1;
    out->command = UVS_PROXY_CMD_PROXY;
    out->family = family;
    return (long)end + 1;
}

/* TLVs from off to end: each one's 3-byte head and value must fit; an SSL TLV's value is a
 * client byte, a 32-bit verify result and sub-TLVs that must fit it. */
static int uvs__proxy_tlvs_ok(const unsigned char *p, size_t off, size_t end, int nested) {
    while (off < end) {
        if (end - off < 3)
            return 0;
        size_t n = ((size_t)p[off + 1] << 8) | p[off + 2];
        if (end - off - 3 < n)
            return 0;
        if (!nested && p[off] == UVS_PROXY_TLV_SSL &&
            (n < 5 || !uvs__proxy_tlvs_ok(p, off + 3 + 5, off + 3 + n, 1)))
            return 0;
        off += 3 + n;
    }
    return 1;
}

static long uvs__proxy_v2(const unsigned char *buf, size_t len, uvs_proxy_hdr_t *out) {
    if (len < 16)
        return 0;
    int version = buf[12] >> 4, command = buf[12] & 0x0F, fam = buf[13];
    if (version != 2)
        return UVS_PROXY_EVERSION;
    if (command != UVS_PROXY_CMD_LOCAL && command != UVS_PROXY_CMD_PROXY)
        return UVS_PROXY_ECOMMAND;
    size_t blen = ((size_t)buf[14] << 8) | buf[15];
    size_t alen = 0;
    int family = UVS_PROXY_AF_UNSPEC;
    if (command == UVS_PROXY_CMD_PROXY) {
        if (fam == 0x11) {
            family = UVS_PROXY_AF_INET;
            alen = 12;
        } else if (fam == 0x21) {
            family = UVS_PROXY_AF_INET6;
            alen = 36;
        } else if (fam != 0x00) {
            return UVS_PROXY_EFAMILY;
        }
        if (blen < alen)
            return UVS_PROXY_ELENGTH;
    }
    size_t total = 16 + blen;
    if (len < total)
        return 0;
    const unsigned char *a = buf + 16;
    if (family == UVS_PROXY_AF_INET) {
        memcpy(out->src, a, 4);
        memcpy(out->dst, a + 4, 4);
        out->src_port = (a[8] << 8) | a[9];
        out->dst_port = (a[10] << 8) | a[11];
    } else if (family == UVS_PROXY_AF_INET6) {
        memcpy(out->src, a, 16);
        memcpy(out->dst, a + 16, 16);
        out->src_port = (a[32] << 8) | a[33];
        out->dst_port = (a[34] << 8) | a[35];
    }
    if (command == UVS_PROXY_CMD_PROXY) {
        if (!uvs__proxy_tlvs_ok(buf, 16 + alen, total, 0))
            return UVS_PROXY_ETLV;
        out->tlv_off = 16 + alen;
        out->tlv_len = blen - alen;
    }
    out->version = 2;
    out->command = command;
    out->family = family;
    return (long)total;
}

long uvs_proxy_parse(const unsigned char *buf, size_t len, uvs_proxy_hdr_t *out) {
    memset(out, 0, sizeof(*out));
    if (len == 0)
        return 0;
    if (buf[0] == 'P') {
        size_t n = len < 6 ? len : 6;
        if (memcmp(buf, "PROXY ", n) != 0)
            return UVS_PROXY_ESIGNATURE;
        return len < 6 ? 0 : uvs__proxy_v1(buf, len, out);
    }
    size_t n = len < 12 ? len : 12;
    if (memcmp(buf, uvs__proxy_sig, n) != 0)
        return UVS_PROXY_ESIGNATURE;
    return uvs__proxy_v2(buf, len, out);
}

/* ---- sources -------------------------------------------------------------------------- */

/* Does net hold address a (an IPv4-mapped IPv6 address counts as the IPv4 one)? */
static int uvs__proxy_net_has(const uvs_proxy_net_t *net, const uvs_addr_t *a) {
    const unsigned char *bytes;
    int family;
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
    if (a->sa.sa_family == AF_INET) {
        bytes = (const unsigned char *)&a->in4.sin_addr;
        family = 4;
    } else if (a->sa.sa_family == AF_INET6) {
        bytes = (const unsigned char *)&a->in6.sin6_addr;
        family = 6;
        if (net->family == 4 && memcmp(bytes, mapped, 12) == 0) {
            bytes += 12;
            family = 4;
        }
    } else {
        return 0;
    }
    if (family != net->family)
        return 0;
    int bits = net->prefix;
    int whole = bits / 8, rest = bits % 8;
    if (memcmp(bytes, net->addr, (size_t)whole) != 0)
        return 0;
    if (rest == 0)
        return 1;
    unsigned char mask = (unsigned char)(0xFF << (8 - rest));
    return (bytes[whole] & mask) == (net->addr[whole] & mask);
}

int uvs_server_set_proxy(uvs_server_t *s, int on, double timeout_s, const uvs_proxy_net_t *nets,
                         size_t n) {
    if (timeout_s < 0)
        return UV_EINVAL;
    for (size_t i = 0; i < n; i++)
        if ((nets[i].family != 4 && nets[i].family != 6) || nets[i].prefix < 0 ||
            nets[i].prefix > (nets[i].family == 4 ? 32 : 128))
            return UV_EINVAL;
    uvs_proxy_net_t *copy = NULL;
    if (n > 0) {
        copy = malloc(n * sizeof(*copy));
        if (copy == NULL)
            return UV_ENOMEM;
        memcpy(copy, nets, n * sizeof(*copy));
    }
    free(s->proxy_nets);
    s->proxy_nets = copy;
    s->proxy_nnets = n;
    s->proxy = on != 0;
    s->proxy_ms = (uint64_t)(timeout_s * 1000.0 + 0.5);
    if (timeout_s > 0 && s->proxy_ms == 0)
        s->proxy_ms = 1;
    return 0;
}

void uvs__server_free_proxy(uvs_server_t *s) {
    free(s->proxy_nets);
    s->proxy_nets = NULL;
    s->proxy_nnets = 0;
}

/* ---- connections ---------------------------------------------------------------------- */

static void uvs__proxy_fail(uvs_conn_t *c, int code) {
    c->state &= ~(unsigned)UVS__C_PROXY_WAIT;
    uvs__conn_fail(c, UVS_EV_ERROR, code, UVS_ACT_PROXY);
}

static void uvs__proxy_timeout_cb(uv_timer_t *t) {
    uvs_conn_t *c = t->data;
    uvs__proxy_fail(c, UVS_PROXY_ETIMEOUT);
    uvs__flush_dirty(c->loop);
}

void uvs__proxy_accept(uvs_conn_t *c, uvs_server_t *s) {
    c->acceptor = s; /* announced once the header is in, or when it fails */
    s->unannounced++;
    if (s->proxy_nnets > 0) {
        size_t i = 0;
        while (i < s->proxy_nnets && !uvs__proxy_net_has(&s->proxy_nets[i], &c->addrs.peer))
            i++;
        if (i == s->proxy_nnets) {
            uvs__proxy_fail(c, UVS_PROXY_ESOURCE);
            return;
        }
    }
    c->proxy = calloc(1, sizeof(*c->proxy));
    if (c->proxy == NULL) {
        uvs__proxy_fail(c, UV_ENOMEM);
        return;
    }
    c->state |= UVS__C_PROXY_WAIT;
    if (s->proxy_ms > 0) {
        int r = uvs__timer_arm(c, &c->rtimer, s->proxy_ms, uvs__proxy_timeout_cb);
        if (r != 0)
            uvs__proxy_fail(c, r);
    }
}

void uvs__proxy_free(uvs_conn_t *c) {
    if (c->proxy == NULL)
        return;
    free(c->proxy->acc);
    free(c->proxy->tlv);
    free(c->proxy);
    c->proxy = NULL;
}

void uvs__proxy_on_eof(uvs_conn_t *c) { uvs__proxy_fail(c, UVS_PROXY_EEOF); }

/* Keep n more bytes of a split header. Returns 0 or UV_ENOMEM. */
static int uvs__proxy_keep(uvs__proxy_t *px, const char *p, size_t n) {
    if (px->have + n > px->cap) {
        size_t cap = px->cap == 0 ? 256 : px->cap;
        while (cap < px->have + n)
            cap *= 2;
        if (cap > UVS__PROXY_V2_MAX)
            cap = UVS__PROXY_V2_MAX;
        unsigned char *acc = realloc(px->acc, cap);
        if (acc == NULL)
            return UV_ENOMEM;
        px->acc = acc;
        px->cap = cap;
    }
    memcpy(px->acc + px->have, p, n);
    px->have += n;
    return 0;
}

/* The header is in: the connection becomes an ordinary accepted one; the n bytes at rest (in
 * the read buffer) came after the header. */
static void uvs__proxy_done(uvs_conn_t *c, const char *rest, size_t n) {
    uvs_server_t *s = c->acceptor;
    uvs__timer_disarm(c->rtimer);
    if (s->tls_ctx != NULL) {
        int err = uvs__tls_attach_accepted(c, s);
        if (err != 0) {
            uvs__conn_fail(c, UVS_EV_ERROR, err, UVS_ACT_ACCEPT);
            return;
        }
        if (s->eager && !uvs__conn_announce(c, UVS_ACCEPT_NEW, NULL, 0))
            return;
        if (n > 0 && !(c->state & UVS__C_CLOSING))
            uvs__tls_on_read(c, rest, n);
        return;
    }
    if (!uvs__conn_announce(c, UVS_ACCEPT_NEW, NULL, 0))
        return;
    if (n > 0 && !(c->state & UVS__C_CLOSING))
        uvs__conn_deliver(c, rest, n);
}

void uvs__proxy_on_read(uvs_conn_t *c, const char *p, size_t n) {
    uvs__proxy_t *px = c->proxy;
    size_t prev = px->have;
    const unsigned char *hb = (const unsigned char *)p;
    size_t hlen = n;
    if (prev > 0) {
        size_t take = n < UVS__PROXY_V2_MAX - prev ? n : UVS__PROXY_V2_MAX - prev;
        if (uvs__proxy_keep(px, p, take) != 0) {
            uvs__proxy_fail(c, UV_ENOMEM);
            return;
        }
        hb = px->acc;
        hlen = px->have;
    }
    uvs_proxy_hdr_t h;
    long r = uvs_proxy_parse(hb, hlen, &h);
    if (r < 0) {
        uvs__proxy_fail(c, (int)r);
        return;
    }
    if (r == 0) {
        if (hlen >= UVS__PROXY_V2_MAX) { /* cannot happen: the parser decides before */
            uvs__proxy_fail(c, UVS_PROXY_ELENGTH);
            return;
        }
        if (prev == 0 && uvs__proxy_keep(px, p, n) != 0)
            uvs__proxy_fail(c, UV_ENOMEM);
        return;
    }
    if (h.tlv_len > 0) {
        px->tlv = malloc(h.tlv_len);
        if (px->tlv == NULL) {
            uvs__proxy_fail(c, UV_ENOMEM);
            return;
        }
        memcpy(px->tlv, hb + h.tlv_off, h.tlv_len);
        px->tlv_len = h.tlv_len;
    }
    c->addrs.proxy = c->addrs.peer;
    if (h.command == UVS_PROXY_CMD_PROXY && h.family == UVS_PROXY_AF_INET) {
        memset(&c->addrs.peer, 0, sizeof(c->addrs.peer));
        c->addrs.peer.in4.sin_family = AF_INET;
        memcpy(&c->addrs.peer.in4.sin_addr, h.src, 4);
        c->addrs.peer.in4.sin_port = htons((uint16_t)h.src_port);
    } else if (h.command == UVS_PROXY_CMD_PROXY && h.family == UVS_PROXY_AF_INET6) {
        memset(&c->addrs.peer, 0, sizeof(c->addrs.peer));
        c->addrs.peer.in6.sin6_family = AF_INET6;
        memcpy(&c->addrs.peer.in6.sin6_addr, h.src, 16);
        c->addrs.peer.in6.sin6_port = htons((uint16_t)h.src_port);
    }
    free(px->acc);
    px->acc = NULL;
    px->have = px->cap = 0;
    c->state &= ~(unsigned)UVS__C_PROXY_WAIT;
    size_t used = (size_t)r - prev; /* of this read's bytes */
    uvs__proxy_done(c, p + used, n - used);
}

size_t uvs_conn_proxy_tlvs(uvs_conn_t *c, const unsigned char **tlv) {
    const uvs__proxy_t *px = c->proxy;
    if (px == NULL)
        return 0;
    if (tlv != NULL)
        *tlv = px->tlv;
    return px->tlv_len;
}

int uvs_conn_proxy_address(uvs_conn_t *c, char *host, size_t hostlen, int *port) {
    if (c->addrs.proxy.sa.sa_family == AF_UNSPEC)
        return UV_ENOTCONN;
    return uvs_addr_format(&c->addrs.proxy, host, hostlen, port);
}
