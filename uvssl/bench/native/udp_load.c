/*
 * udp_load.c - the UDP load client of uvssl's benchmark (the udp-echo cell).
 *
 * Theory of operation
 * -------------------
 * One connected UDP socket (so the kernel drops datagrams from anyone but the server and
 * reports ICMP errors), --inflight slots. Each slot has one request outstanding: a size-byte
 * datagram that starts with the slot number and a sequence number. A reply whose slot and
 * sequence match the slot's outstanding request completes it: its round-trip time goes to a
 * histogram (1 us buckets up to 100 ms, then one overflow bucket), and the slot sends its next
 * request. Replies that match nothing (late duplicates of requests given up on) are ignored.
 *
 * Datagrams can be lost: a request without a reply after --retry-ms is counted in "lost" and
 * the slot sends a new one (new sequence). So the number of requests in flight never exceeds
 * --inflight, and the client never waits forever.
 *
 * Receives use recvmmsg() and the requests they release leave together in one sendmmsg(), so
 * the client costs few system calls per datagram. Phases: WARMUP (--warmup seconds, replies not
 * counted), MEASURE (until --duration seconds or --count replies), then the JSON line is
 * printed. Every wait is a poll() bounded by the next deadline; if no reply arrives for
 * --timeout seconds the run ends with an error. The whole run is bounded in time.
 *
 * Output (one JSON line): mode, requests (replies counted while measuring), seconds, rps,
 * p50_us, p99_us, sent, lost, errors, error. Exit status 0 when something was measured, 1 when
 * not (the JSON is still printed), 2 for bad usage.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_INFLIGHT 4096
#define BATCH 64
#define HIST_US 100000 /* 1 us buckets up to 100 ms; the last bucket holds the rest */
#define MAX_SIZE 65507

typedef struct {
    uint32_t seq;      /* outstanding request's sequence number                       */
    uint64_t sent_ns;  /* when it was sent                                             */
} slot_t;

static slot_t slots[MAX_INFLIGHT];
static uint32_t hist[HIST_US + 1];

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void usage(void) {
    fprintf(stderr,
            "usage: udp_load --port P [--host H] [--size N] [--inflight N] [--duration S]\n"
            "                [--warmup S] [--count N] [--timeout S] [--retry-ms MS]\n");
    exit(2);
}

static double percentile(uint64_t total, double q) {
    uint64_t want = (uint64_t)((double)total * q), seen = 0;
    for (int i = 0; i <= HIST_US; i++) {
        seen += hist[i];
        if (seen > want)
            return (double)i + 0.5;
    }
    return (double)HIST_US;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0, size = 64, inflight = 64;
    double duration = 1.0, warmup = 0.2, timeout = 10.0, retry_ms = 200.0;
    long long count = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--host"))
            host = v;
        else if (!strcmp(a, "--port"))
            port = atoi(v);
        else if (!strcmp(a, "--size"))
            size = atoi(v);
        else if (!strcmp(a, "--inflight"))
            inflight = atoi(v);
        else if (!strcmp(a, "--duration"))
            duration = atof(v);
        else if (!strcmp(a, "--warmup"))
            warmup = atof(v);
        else if (!strcmp(a, "--count"))
            count = atoll(v);
        else if (!strcmp(a, "--timeout"))
            timeout = atof(v);
        else if (!strcmp(a, "--retry-ms"))
            retry_ms = atof(v);
        else
            usage();
    }
    if (port <= 0 || port > 65535 || size < 8 || size > MAX_SIZE || inflight < 1 ||
        inflight > MAX_INFLIGHT || duration <= 0 || warmup < 0 || timeout <= 0 || retry_ms <= 0)
        usage();

    const char *error = NULL;
    char errbuf[256];
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_DGRAM;
    char service[16];
    snprintf(service, sizeof(service), "%d", port);
    int fd = -1;
    if (getaddrinfo(host, service, &hints, &res) != 0 || res == NULL) {
        error = "cannot resolve the server's host";
    } else {
        fd = socket(res->ai_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
            snprintf(errbuf, sizeof(errbuf), "cannot connect the UDP socket: %s",
                     strerror(errno));
            error = errbuf;
        }
        int big = 4 << 20;
        if (fd >= 0) {
            (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
            (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
        }
    }
    if (res != NULL)
        freeaddrinfo(res);

    static char out[BATCH][MAX_SIZE + 1];
    static char in[BATCH][2048];
    struct mmsghdr smsg[BATCH], rmsg[BATCH];
    struct iovec siov[BATCH], riov[BATCH];
    uint64_t requests = 0, sent = 0, lost = 0, errors = 0;
    uint64_t t0 = now_ns();
    uint64_t t_measure = t0 + (uint64_t)(warmup * 1e9);
    uint64_t t_end = t_measure + (uint64_t)(duration * 1e9);
    uint64_t t_last_reply = t0;
    uint64_t retry_ns = (uint64_t)(retry_ms * 1e6);
    uint64_t measured_end = 0;
    uint32_t next_seq = 1;
    int pending[MAX_INFLIGHT];
    int npending = 0;

    for (int k = 0; k < BATCH; k++) {
        memset(out[k], 'x', (size_t)size);
        riov[k].iov_base = in[k];
        riov[k].iov_len = sizeof(in[k]);
        memset(&rmsg[k], 0, sizeof(rmsg[k]));
        rmsg[k].msg_hdr.msg_iov = &riov[k];
        rmsg[k].msg_hdr.msg_iovlen = 1;
    }
    if (error == NULL)
        for (int s = 0; s < inflight; s++)
            pending[npending++] = s;

    while (error == NULL) {
        uint64_t now = now_ns();
        if (now >= t_end || (count > 0 && (long long)requests >= count)) {
            measured_end = now;
            break;
        }
        /* send what is pending, BATCH at a time */
        while (npending > 0) {
            int k = 0;
            for (; k < BATCH && k < npending; k++) {
                int s = pending[npending - 1 - k];
                uint32_t seq = next_seq++;
                slots[s].seq = seq;
                slots[s].sent_ns = now;
                uint32_t id = (uint32_t)s;
                memcpy(out[k], &id, 4);
                memcpy(out[k] + 4, &seq, 4);
                siov[k].iov_base = out[k];
                siov[k].iov_len = (size_t)size;
                memset(&smsg[k], 0, sizeof(smsg[k]));
                smsg[k].msg_hdr.msg_iov = &siov[k];
                smsg[k].msg_hdr.msg_iovlen = 1;
            }
            int r = sendmmsg(fd, smsg, (unsigned)k, 0);
            if (r < 0) {
                int e = errno;
                r = 0;
                if (e != EINTR)
                    errors++;
                if (e != EINTR && e != EAGAIN && e != ENOBUFS && e != ECONNREFUSED) {
                    snprintf(errbuf, sizeof(errbuf), "sendmmsg failed: %s", strerror(e));
                    error = errbuf;
                }
            }
            for (int j = r; j < k; j++) /* not sent: still pending, sent on the next round */
                slots[pending[npending - 1 - j]].seq = 0;
            sent += (uint64_t)r;
            npending -= r;
            if (r < k)
                break;
        }
        if (error != NULL)
            break;
        /* wait for replies, at most until the next deadline */
        uint64_t wake = t_end;
        for (int s = 0; s < inflight; s++)
            if (slots[s].seq != 0 && slots[s].sent_ns + retry_ns < wake)
                wake = slots[s].sent_ns + retry_ns;
        now = now_ns();
        int ms = wake > now ? (int)((wake - now) / 1000000u) + 1 : 0;
        if (npending > 0)
            ms = 1; /* the kernel's buffer was full: try again soon */
        struct pollfd p = {fd, POLLIN, 0};
        int pr = poll(&p, 1, ms);
        if (pr < 0 && errno != EINTR) {
            snprintf(errbuf, sizeof(errbuf), "poll failed: %s", strerror(errno));
            error = errbuf;
            break;
        }
        now = now_ns();
        if (pr > 0) {
            int n = recvmmsg(fd, rmsg, BATCH, MSG_DONTWAIT, NULL);
            if (n < 0 && errno != EAGAIN && errno != EINTR) {
                errors++; /* ECONNREFUSED: the server is not there (yet); retried */
                if (errno != ECONNREFUSED) {
                    snprintf(errbuf, sizeof(errbuf), "recvmmsg failed: %s", strerror(errno));
                    error = errbuf;
                    break;
                }
            }
            for (int k = 0; k < n; k++) {
                if (rmsg[k].msg_len < 8)
                    continue;
                uint32_t id, seq;
                memcpy(&id, in[k], 4);
                memcpy(&seq, in[k] + 4, 4);
                if (id >= (uint32_t)inflight || slots[id].seq != seq)
                    continue; /* a late reply to a request given up on */
                slots[id].seq = 0;
                t_last_reply = now;
                if (now >= t_measure) {
                    uint64_t us = (now - slots[id].sent_ns) / 1000u;
                    hist[us < HIST_US ? us : HIST_US]++;
                    requests++;
                }
                pending[npending++] = (int)id;
            }
        }
        /* give up on requests without a reply */
        for (int s = 0; s < inflight; s++) {
            if (slots[s].seq != 0 && slots[s].sent_ns + retry_ns <= now) {
                slots[s].seq = 0;
                lost++;
                pending[npending++] = s;
            }
        }
        if (now - t_last_reply > (uint64_t)(timeout * 1e9)) {
            snprintf(errbuf, sizeof(errbuf), "no reply from the server for %g s", timeout);
            error = errbuf;
        }
    }
    double seconds = measured_end > t_measure ? (double)(measured_end - t_measure) / 1e9 : 0.0;
    printf("{\"mode\": \"udp-echo\", \"requests\": %llu, \"seconds\": %.6f, \"rps\": %.1f, "
           "\"p50_us\": %.1f, \"p99_us\": %.1f, \"sent\": %llu, \"lost\": %llu, "
           "\"errors\": %llu, \"conns\": %d, \"error\": ",
           (unsigned long long)requests, seconds, seconds > 0 ? (double)requests / seconds : 0.0,
           requests ? percentile(requests, 0.5) : 0.0, requests ? percentile(requests, 0.99) : 0.0,
           (unsigned long long)sent, (unsigned long long)lost, (unsigned long long)errors,
           inflight);
    if (error == NULL) {
        printf("null}\n");
    } else {
        putchar('"');
        for (const char *c = error; *c; c++)
            if (*c == '"' || *c == '\\')
                printf("\\%c", *c);
            else if ((unsigned char)*c >= 0x20)
                putchar(*c);
        printf("\"}\n");
    }
    fflush(stdout);
    if (fd >= 0)
        close(fd);
    return requests > 0 && error == NULL ? 0 : 1;
}
