/*
 * udploadgen.c -- epoll UDP echo load generator for bench/udp.py.
 *
 * One thread, one epoll instance, N connected non-blocking UDP sockets.  Each
 * socket keeps DEPTH datagrams of SIZE bytes in flight: every verified echo
 * is answered at once with a new datagram.  Written in C so that the
 * generator costs well under a microsecond per datagram and the server's CPU
 * per datagram is what gets measured.
 *
 * Every datagram carries its socket index and a sequence number followed by
 * a pattern derived from both; an echo whose length, index or pattern does
 * not match counts as an error (err_mismatch).
 *
 * UDP may drop datagrams (a full socket buffer on either side).  A socket that
 * has had datagrams in flight and heard nothing for --loss-timeout seconds
 * counts them as lost and sends DEPTH new ones, so the load never stalls; an
 * echo that arrives after that is still verified and counted, but does not
 * add a datagram.  Losses are reported (lost), not counted as errors.
 *
 * Protocol with the harness (stdout, one JSON object per line, flushed),
 * the same as loadgen.c's:
 *   {"event":"connected",...}  every socket has had one echo; warm-up starts.
 *   {"event":"start",...}      the measured window opens now.
 *   {"event":"end",...}        the window closed now; nothing new is sent.
 *   {"event":"result",...}     final figures, once stdin is closed (--hold)
 *                              or right after "end".
 * A datagram counts in the window when its echo arrives inside [start, end).
 *
 * Safety: only loopback targets (127.0.0.0/8, ::1) are accepted, and every
 * phase has a deadline, so the program always stops by itself.
 *
 * Linux only (recvmmsg/sendmmsg).
 *
 * Build: cc -O2 -o udploadgen udploadgen.c        (bench/udp.py does this itself;
 *        lgcommon.h, beside it, holds what the generators share)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "lgcommon.h"

#define MAX_DATAGRAM 65507
#define RECV_BATCH 64 /* datagrams per recvmmsg()/sendmmsg() */

enum phase { P_CONNECT, P_WARMUP, P_MEASURE, P_DRAIN, P_DONE };

typedef struct {
    int fd;
    uint32_t id;
    uint32_t seq;     /* next sequence number to send */
    int outstanding;  /* datagrams sent and not yet echoed (or written off as lost) */
    int confirmed;    /* had one echo */
    double last_rx;   /* last echo, or the last (re)fill if none since */
} usock_t;

static const char *opt_host = "127.0.0.1";
static int opt_port = 0;
static int opt_socks = 32;
static int opt_depth = 1;
static int opt_size = 64;
static double opt_warmup = 1.0;
static double opt_duration = 5.0;
static double opt_hold_timeout = 120.0;
static double opt_connect_timeout = 30.0;
static double opt_loss_timeout = 0.2;
static int opt_cpu = -1;
static int opt_hold = 0;

static usock_t *socks;
static enum phase phase = P_CONNECT;
static int confirmed_total = 0;
static uint64_t msgs_window = 0, msgs_total = 0, sent_total = 0;
static uint64_t err_mismatch = 0, err_refused = 0, err_io = 0;
static uint64_t lost = 0, send_full = 0;

static uint64_t errors_total(void) { return err_mismatch + err_refused + err_io; }

static void die(const char *what) {
    fprintf(stderr, "udploadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void usage(void) {
    fprintf(stderr,
            "usage: udploadgen [--host 127.0.0.1] --port P [--socks N] [--depth K] [--size B]\n"
            "                  [--warmup S] [--duration S] [--cpu N] [--hold] [--hold-timeout S]\n"
            "                  [--connect-timeout S] [--loss-timeout S]\n");
    exit(2);
}

/* Byte i of datagram (id, seq): cheap, and differs between sockets and rounds. */
static inline unsigned char pattern(uint32_t id, uint32_t seq, int i) {
    return (unsigned char)(id * 131u + seq * 7u + (uint32_t)i * 13u);
}

static void fill(unsigned char *buf, uint32_t id, uint32_t seq) {
    uint32_t nid = htonl(id), nseq = htonl(seq);
    memcpy(buf, &nid, 4);
    memcpy(buf + 4, &nseq, 4);
    for (int i = 8; i < opt_size; i++) buf[i] = pattern(id, seq, i);
}

static int verify(const unsigned char *buf, ssize_t n, uint32_t id) {
    if (n != opt_size) return 0;
    uint32_t nid, nseq;
    memcpy(&nid, buf, 4);
    memcpy(&nseq, buf + 4, 4);
    if (ntohl(nid) != id) return 0;
    uint32_t seq = ntohl(nseq);
    for (int i = 8; i < opt_size; i++)
        if (buf[i] != pattern(id, seq, i)) return 0;
    return 1;
}

/* Send one new datagram on s; 0 if the socket buffer is full (retried later). */
static int send_one(usock_t *s) {
    static unsigned char buf[MAX_DATAGRAM];
    fill(buf, s->id, s->seq);
    ssize_t n = send(s->fd, buf, (size_t)opt_size, 0);
    if (n == opt_size) {
        s->seq++;
        s->outstanding++;
        sent_total++;
        return 1;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
        send_full++;
    } else if (n < 0 && errno == ECONNREFUSED) {
        err_refused++; /* an earlier datagram drew ICMP port-unreachable */
    } else {
        err_io++;
    }
    return 0;
}

static void top_up(usock_t *s) {
    while (s->outstanding < opt_depth && phase < P_DRAIN)
        if (!send_one(s)) break;
}

/* Read up to RECV_BATCH echoes with one recvmmsg(), check them, and answer the
 * good ones with as many new datagrams in one sendmmsg(): batching keeps the
 * generator's syscalls per datagram low, so that the server is the bottleneck. */
static void on_readable(usock_t *s, double tn) {
    static struct mmsghdr rmsg[RECV_BATCH], smsg[RECV_BATCH];
    static struct iovec riov[RECV_BATCH], siov[RECV_BATCH];
    static unsigned char *rbuf, *sbuf;
    static size_t rlen;
    if (!rbuf) {
        rlen = (size_t)opt_size + 1; /* one byte more: an oversized echo shows */
        rbuf = malloc(rlen * RECV_BATCH);
        sbuf = malloc((size_t)opt_size * RECV_BATCH);
        if (!rbuf || !sbuf) die("malloc");
    }
    for (;;) {
        for (int i = 0; i < RECV_BATCH; i++) {
            riov[i].iov_base = rbuf + rlen * (size_t)i;
            riov[i].iov_len = rlen;
            memset(&rmsg[i].msg_hdr, 0, sizeof rmsg[i].msg_hdr);
            rmsg[i].msg_hdr.msg_iov = &riov[i];
            rmsg[i].msg_hdr.msg_iovlen = 1;
        }
        int n = recvmmsg(s->fd, rmsg, RECV_BATCH, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            if (errno == EINTR) continue;
            if (errno == ECONNREFUSED) {
                err_refused++;
                continue;
            }
            err_io++;
            return;
        }
        s->last_rx = tn;
        int replies = 0;
        for (int i = 0; i < n; i++) {
            if ((rmsg[i].msg_hdr.msg_flags & MSG_TRUNC) ||
                !verify(riov[i].iov_base, (ssize_t)rmsg[i].msg_len, s->id)) {
                err_mismatch++;
                continue;
            }
            msgs_total++;
            if (phase == P_MEASURE) msgs_window++;
            if (!s->confirmed) {
                s->confirmed = 1;
                confirmed_total++;
            }
            if (s->outstanding > 0) { /* else: a late echo of one written off as lost */
                s->outstanding--;
                if (phase < P_DRAIN) replies++;
            }
        }
        int sent = 0;
        while (sent < replies) {
            int k = replies - sent;
            for (int i = 0; i < k; i++) {
                unsigned char *b = sbuf + (size_t)opt_size * (size_t)i;
                fill(b, s->id, s->seq + (uint32_t)i);
                siov[i].iov_base = b;
                siov[i].iov_len = (size_t)opt_size;
                memset(&smsg[i].msg_hdr, 0, sizeof smsg[i].msg_hdr);
                smsg[i].msg_hdr.msg_iov = &siov[i];
                smsg[i].msg_hdr.msg_iovlen = 1;
            }
            int m = sendmmsg(s->fd, smsg, (unsigned)k, MSG_DONTWAIT);
            if (m <= 0) {
                if (m < 0 && errno == ECONNREFUSED) err_refused++;
                else if (m < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS) err_io++;
                else send_full++;
                break; /* the sweep tops the socket up later */
            }
            s->seq += (uint32_t)m;
            s->outstanding += m;
            sent_total += (uint64_t)m;
            sent += m;
        }
        if (n < RECV_BATCH) return; /* drained: spare a recvmmsg() returning EAGAIN */
    }
}

/* Every few tens of ms: write off what a silent socket had in flight, and
 * refill sockets that could not send (full buffer) or lost datagrams. */
static void sweep(double tn) {
    for (int i = 0; i < opt_socks; i++) {
        usock_t *s = &socks[i];
        if (s->outstanding > 0 && tn - s->last_rx > opt_loss_timeout) {
            lost += (uint64_t)s->outstanding;
            s->outstanding = 0;
            s->last_rx = tn;
        }
        if (s->outstanding < opt_depth && phase < P_DRAIN) {
            if (s->outstanding == 0) s->last_rx = tn;
            top_up(s);
        }
    }
}

static void emit_event(const char *name, double t0) {
    printf("{\"event\":\"%s\",\"t\":%.6f,\"errors\":%llu,\"lost\":%llu}\n", name, now() - t0,
           (unsigned long long)errors_total(), (unsigned long long)lost);
    fflush(stdout);
}

static int loopback_target(struct sockaddr_storage *ss, socklen_t *len) {
    return loopback_addr(opt_host, opt_port, ss, len);
}

int main(int argc, char **argv) {
    static struct option longopts[] = {
        {"host", required_argument, 0, 'h'},
        {"port", required_argument, 0, 'p'},
        {"socks", required_argument, 0, 'n'},
        {"depth", required_argument, 0, 'd'},
        {"size", required_argument, 0, 's'},
        {"warmup", required_argument, 0, 'w'},
        {"duration", required_argument, 0, 'D'},
        {"cpu", required_argument, 0, 'C'},
        {"hold", no_argument, 0, 'H'},
        {"hold-timeout", required_argument, 0, 'T'},
        {"connect-timeout", required_argument, 0, 't'},
        {"loss-timeout", required_argument, 0, 'L'},
        {"help", no_argument, 0, '?'},
        {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'h': opt_host = optarg; break;
        case 'p': opt_port = atoi(optarg); break;
        case 'n': opt_socks = atoi(optarg); break;
        case 'd': opt_depth = atoi(optarg); break;
        case 's': opt_size = atoi(optarg); break;
        case 'w': opt_warmup = atof(optarg); break;
        case 'D': opt_duration = atof(optarg); break;
        case 'C': opt_cpu = atoi(optarg); break;
        case 'H': opt_hold = 1; break;
        case 'T': opt_hold_timeout = atof(optarg); break;
        case 't': opt_connect_timeout = atof(optarg); break;
        case 'L': opt_loss_timeout = atof(optarg); break;
        default: usage();
        }
    }
    if (opt_port <= 0 || opt_port > 65535 || opt_socks <= 0 || opt_socks > 10000 || opt_depth <= 0 ||
        opt_depth > 1024 || opt_size < 8 || opt_size > MAX_DATAGRAM || opt_warmup < 0 ||
        opt_duration <= 0 || opt_loss_timeout <= 0)
        usage();
    if (opt_duration > 60 || opt_warmup > 60) {
        fprintf(stderr, "udploadgen: duration and warm-up are capped at 60 s\n");
        exit(2);
    }
    struct sockaddr_storage target;
    socklen_t target_len;
    if (!loopback_target(&target, &target_len)) {
        fprintf(stderr, "udploadgen: --host must be a loopback address (127.x.x.x or ::1), got %s\n",
                opt_host);
        exit(2);
    }
    if (pin_cpu(opt_cpu) < 0) die("sched_setaffinity");

    int epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    socks = calloc((size_t)opt_socks, sizeof *socks);
    if (!socks) die("calloc");
    double t0 = now();
    for (int i = 0; i < opt_socks; i++) {
        usock_t *s = &socks[i];
        s->fd = socket(target.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (s->fd < 0) die("socket");
        if (connect(s->fd, (struct sockaddr *)&target, target_len) < 0) die("connect");
        s->id = (uint32_t)i;
        s->last_rx = t0;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, s->fd, &ev) < 0) die("epoll_ctl");
    }
    static usock_t stdin_tag;
    int stdin_watched = 0;
    for (int i = 0; i < opt_socks; i++) top_up(&socks[i]);

    double t_start = 0, t_end = 0, cpu_start = 0, cpu_end = 0, t_connected = 0;
    double deadline = t0 + opt_connect_timeout, hold_deadline = 0, next_sweep = t0 + 0.05;
    struct epoll_event evs[1024];
    while (phase != P_DONE) {
        double tn = now();
        if (phase == P_CONNECT) {
            if (confirmed_total == opt_socks) {
                t_connected = tn;
                emit_event("connected", t0);
                phase = P_WARMUP;
                deadline = tn + opt_warmup;
            } else if (tn >= deadline) {
                fprintf(stderr, "udploadgen: only %d of %d sockets had an echo within %.0f s\n",
                        confirmed_total, opt_socks, opt_connect_timeout);
                break;
            }
        }
        if (phase == P_WARMUP && tn >= deadline) {
            phase = P_MEASURE;
            t_start = now();
            cpu_start = cpu_self();
            emit_event("start", t0);
            deadline = t_start + opt_duration;
        }
        if (phase == P_MEASURE && tn >= deadline) {
            t_end = now();
            cpu_end = cpu_self();
            phase = P_DRAIN;
            emit_event("end", t0);
            hold_deadline = t_end + opt_hold_timeout;
        }
        if (phase == P_DRAIN) {
            if (!opt_hold) break;
            if (!stdin_watched) {
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &stdin_tag};
                if (epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev) < 0) break; /* stdin not pollable */
                stdin_watched = 1;
            }
            if (tn >= hold_deadline) {
                fprintf(stderr, "udploadgen: hold timed out\n");
                break;
            }
        }
        if (tn >= next_sweep && phase < P_DRAIN) {
            sweep(tn);
            next_sweep = tn + 0.05;
        }
        double next = phase == P_DRAIN ? hold_deadline : deadline;
        if (phase != P_DRAIN && next_sweep < next) next = next_sweep;
        int timeout_ms = (int)((next - tn) * 1000.0) + 1;
        if (timeout_ms < 0) timeout_ms = 0;
        int n = epoll_wait(epfd, evs, 1024, timeout_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        tn = now();
        for (int i = 0; i < n; i++) {
            usock_t *s = evs[i].data.ptr;
            if (s == &stdin_tag) {
                char tmp[256];
                (void)!read(0, tmp, sizeof tmp); /* a line or EOF: released */
                phase = P_DONE;
                continue;
            }
            on_readable(s, tn);
        }
    }

    double elapsed = t_end > t_start ? t_end - t_start : 0.0;
    printf("{\"event\":\"result\",\"mode\":\"udp\",\"socks\":%d,\"depth\":%d,\"size\":%d,"
           "\"connected\":%d,\"connect_s\":%.6f,\"messages\":%llu,\"messages_total\":%llu,"
           "\"sent\":%llu,\"elapsed\":%.6f,\"msgs_per_s\":%.1f,\"gen_cpu_frac\":%.4f,"
           "\"gen_busy_frac\":%.4f,\"errors\":%llu,\"err_mismatch\":%llu,\"err_refused\":%llu,"
           "\"err_io\":%llu,\"lost\":%llu,\"send_full\":%llu}\n",
           opt_socks, opt_depth, opt_size, confirmed_total, t_connected > 0 ? t_connected - t0 : -1.0,
           (unsigned long long)msgs_window, (unsigned long long)msgs_total,
           (unsigned long long)sent_total, elapsed, elapsed > 0 ? msgs_window / elapsed : 0.0,
           elapsed > 0 ? (cpu_end - cpu_start) / elapsed : 0.0,
           elapsed > 0 ? (cpu_end - cpu_start) / elapsed : 0.0, (unsigned long long)errors_total(),
           (unsigned long long)err_mismatch, (unsigned long long)err_refused,
           (unsigned long long)err_io, (unsigned long long)lost, (unsigned long long)send_full);
    fflush(stdout);
    return (t_end > 0 && errors_total() == 0) ? 0 : 1;
}
