/*
 * tlsloadgen.c -- epoll TLS echo load generator for bench/tls.py (OpenSSL).
 *
 * One thread, one epoll instance, N non-blocking client sockets, each with an
 * OpenSSL client session on the descriptor itself.  Written in C so that the
 * generator is cheaper than any of the Python servers it measures: per 64-byte
 * message it decrypts one record and encrypts one, with no copy it can avoid.
 *
 * Modes
 *   pingpong   each connection sends one SIZE-byte message, waits for the whole
 *              echo, checks it, sends the next one.
 *   pipeline   each connection sends DEPTH messages in one SSL_write (one TLS
 *              record of DEPTH*SIZE bytes), waits for all of them, repeats.
 *   bulk       pingpong with SIZE-byte messages (default 64 KiB: four full
 *              records); the result line gives mb_per_s (10^6 bytes/s of echo).
 *   handshake  each of the N slots: socket, connect, full handshake (never a
 *              resumed session: no session cache, no tickets sent back), one
 *              SIZE-byte message, verify the echo, close_notify, close, and
 *              again at once.  A "message" is a whole connection, counted once
 *              its echo is verified; latency runs from socket() to that moment.
 *   idle       each connection completes its handshake, echoes one byte (proof
 *              that the server serves it), then stays open and silent until
 *              the harness releases it: memory per idle TLS connection.
 *
 * TLS: TLS 1.3 with TLS_AES_128_GCM_SHA256 only (the client offers nothing
 * else, so the server cannot pick anything else), or with --tls12 TLS 1.2
 * with ECDHE-RSA-AES128-GCM-SHA256 (--cipher to change).  X25519 key shares
 * (OpenSSL's default first group).  --cafile verifies the server certificate
 * and its name (--servername, default localhost, also sent as SNI); without it
 * the certificate is not verified (the server's cost is the same).  The
 * negotiated version and cipher are reported; a resumed session or another
 * version/cipher on a later connection counts as an error (err_tls).
 *
 * Close: the generator's connections end with close_notify, then
 * shutdown(SHUT_WR) and close() with SO_LINGER 0 (as loadgen.c --close eof):
 * the server reads close_notify and EOF, the graceful path, and no TIME_WAIT
 * piles up on this shared machine.
 *
 * Every echoed byte is compared with what was sent; a mismatch, extra bytes,
 * a server-side close, a reset, a failed connect or handshake is an error.
 *
 * Protocol with the harness and latency histogram: exactly loadgen.c's
 * ({"event":"connected"|"start"|"end"|"result",...} lines on stdout; the
 * result carries lat_* percentiles).  Only loopback targets; every phase has
 * a deadline, so it always stops by itself.
 *
 * Build: cc -O2 -o tlsloadgen tlsloadgen.c -lssl -lcrypto   (Debian: libssl-dev;
 *        bench/tls.py builds it itself; lgcommon.h beside it)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "lgcommon.h"

enum mode { M_PINGPONG, M_PIPELINE, M_BULK, M_HANDSHAKE, M_IDLE };
enum phase { P_CONNECT, P_WARMUP, P_MEASURE, P_DRAIN, P_DONE };
enum cstate { C_CONNECTING, C_HANDSHAKE, C_ACTIVE, C_DEAD };

typedef struct conn {
    int fd;
    int id;
    enum cstate state;
    int confirmed;        /* had one complete echo: the server surely serves it */
    int want_out;         /* EPOLLOUT currently registered */
    int write_wants_read; /* SSL_write said WANT_READ: retry it after the next read */
    SSL *ssl;
    uint32_t seq;         /* round number, mixed into the payload pattern */
    uint64_t t_sent;      /* ns: when the current batch (handshake: connection) started */
    size_t out_len, out_off, in_off;
    unsigned char *buf;   /* the batch as sent: what the echo must equal */
} conn_t;

/* ---- configuration ---------------------------------------------------- */
static const char *opt_host = "127.0.0.1";
static int opt_port = 0;
static int opt_conns = 50;
static enum mode opt_mode = M_PINGPONG;
static int opt_depth = 1;
static int opt_size = -1; /* default: 64, bulk 65536 */
static double opt_warmup = 1.0;
static double opt_duration = 5.0;
static int opt_cpu = -1;
static int opt_hold = 0;
static double opt_hold_timeout = 120.0;
static double opt_connect_timeout = 60.0;
static int opt_connect_concurrency = 64;
static uint64_t opt_max_errors = 1000; /* handshake mode: stop reconnecting after this many */
static const char *opt_cafile = NULL;
static const char *opt_servername = "localhost";
static int opt_tls12 = 0;
static const char *opt_cipher = NULL;  /* TLS 1.2 cipher list / TLS 1.3 ciphersuites */
static int opt_release_buffers = -1;   /* default: on in idle mode (5,000 sessions) only */

/* ---- state ---------------------------------------------------------------- */
static SSL_CTX *ctx;
static conn_t *conns;
static int epfd;
static enum phase phase = P_CONNECT;
static int opened = 0, unconfirmed = 0, confirmed_total = 0, live = 0, inflight = 0;
static uint64_t msgs_window = 0, msgs_total = 0, bytes_window = 0;
static uint64_t handshakes_total = 0, handshakes_window = 0;
static uint64_t err_connect = 0, err_tls = 0, err_io = 0, err_closed = 0, err_mismatch = 0,
                err_extra = 0;
static conn_t **reopen_q, **reopen_q2; /* handshake mode: slots to reconnect after a failure */
static int reopen_n = 0;
static char tls_version[32] = "", tls_cipher[64] = "";
static struct sockaddr_storage addr;
static socklen_t addrlen;
static unsigned char rbuf[1 << 16];

static uint64_t errors_total(void) {
    return err_connect + err_tls + err_io + err_closed + err_mismatch + err_extra;
}

static void die(const char *what) {
    fprintf(stderr, "tlsloadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void usage(void) {
    fprintf(stderr,
            "usage: tlsloadgen [--host 127.0.0.1] --port P [--conns N]\n"
            "                  [--mode pingpong|pipeline|bulk|handshake|idle] [--depth D] [--size B]\n"
            "                  [--warmup S] [--duration S] [--cpu N] [--hold] [--hold-timeout S]\n"
            "                  [--connect-timeout S] [--connect-concurrency K] [--max-errors N]\n"
            "                  [--cafile PEM] [--servername NAME] [--tls12] [--cipher LIST]\n"
            "                  [--release-buffers 0|1]\n");
    exit(2);
}

static void set_events(conn_t *c, int want_out) {
    if (c->want_out == want_out) return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl mod");
    c->want_out = want_out;
}

static void conn_free(conn_t *c) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    if (c->ssl) SSL_free(c->ssl);
    c->ssl = NULL;
    close(c->fd);
    c->state = C_DEAD;
    live--;
}

static void kill_conn(conn_t *c) {
    if (c->state == C_DEAD) return;
    if (c->out_len && c->in_off < c->out_len) inflight--;
    ERR_clear_error();
    conn_free(c);
    if (opt_mode == M_HANDSHAKE && phase < P_DRAIN && errors_total() < opt_max_errors) {
        reopen_q[reopen_n++] = c; /* reconnected after this epoll batch, not here */
        return;
    }
    if (!c->confirmed) unconfirmed--;
}

/* Same pattern as loadgen.c: depends on connection, round and message. */
static void fill_batch(conn_t *c) {
    unsigned char *p = c->buf;
    for (size_t m = 0; m < c->out_len / (size_t)opt_size; m++) {
        unsigned base = (unsigned)c->id * 7u + c->seq * 13u + (unsigned)m * 31u;
        for (int k = 0; k < opt_size; k++) p[k] = (unsigned char)(base + (unsigned)k);
        p += opt_size;
    }
}

/* Write what is left of the batch; EPOLLOUT only while the kernel buffer is full. */
static void pump_out(conn_t *c) {
    c->write_wants_read = 0;
    while (c->out_off < c->out_len) {
        int n = SSL_write(c->ssl, c->buf + c->out_off, (int)(c->out_len - c->out_off));
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_WRITE) {
            set_events(c, 1);
            return;
        }
        if (e == SSL_ERROR_WANT_READ) { /* e.g. a key update in flight: after the next read */
            c->write_wants_read = 1;
            return;
        }
        err_io++;
        kill_conn(c);
        return;
    }
    set_events(c, 0);
}

static void start_batch(conn_t *c) {
    c->seq++;
    c->out_len = (opt_mode == M_IDLE) ? 1 : (size_t)opt_size * (size_t)opt_depth;
    c->out_off = c->in_off = 0;
    fill_batch(c);
    if (opt_mode != M_HANDSHAKE) c->t_sent = now_ns(); /* handshake: set at socket() */
    inflight++;
    pump_out(c);
}

static void connect_one(conn_t *c) {
    if (opt_mode == M_HANDSHAKE) c->t_sent = now_ns();
    int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    c->fd = fd;
    c->state = C_CONNECTING;
    c->out_len = 0;
    c->write_wants_read = 0;
    live++;
    int one = 1; /* Nagle off on our side too: a request must not wait for an ACK */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->ssl = SSL_new(ctx);
    if (!c->ssl || !SSL_set_fd(c->ssl, fd)) die("SSL_new");
    SSL_set_tlsext_host_name(c->ssl, opt_servername);
    if (opt_cafile) SSL_set1_host(c->ssl, opt_servername);
    SSL_set_connect_state(c->ssl);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    c->want_out = 1;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl add");
    if (connect(fd, (struct sockaddr *)&addr, addrlen) < 0 && errno != EINPROGRESS) {
        err_connect++;
        kill_conn(c);
    }
}

static void open_more(void) {
    while (opened < opt_conns && unconfirmed < opt_connect_concurrency) {
        conn_t *c = &conns[opened];
        c->id = opened++;
        unconfirmed++;
        connect_one(c);
    }
}

static void handshake_done(conn_t *c) {
    const char *v = SSL_get_version(c->ssl), *ciph = SSL_get_cipher_name(c->ssl);
    if (!tls_version[0]) {
        snprintf(tls_version, sizeof tls_version, "%s", v);
        snprintf(tls_cipher, sizeof tls_cipher, "%s", ciph);
    }
    if (SSL_session_reused(c->ssl) || strcmp(v, tls_version) || strcmp(ciph, tls_cipher)) {
        err_tls++; /* not the full handshake with the parameters asked for */
        kill_conn(c);
        return;
    }
    handshakes_total++;
    if (phase == P_MEASURE) handshakes_window++;
    c->state = C_ACTIVE;
    start_batch(c);
}

/* Handshake mode: the echo is verified; close_notify, FIN, then RST (no
 * TIME_WAIT), and the slot's next connection. */
static void short_done(conn_t *c) {
    SSL_shutdown(c->ssl);
    shutdown(c->fd, SHUT_WR);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    ERR_clear_error();
    conn_free(c);
    if (phase < P_DRAIN) connect_one(c);
}

/* Decrypt what is there, until OpenSSL needs more from the socket. */
static void pump_in(conn_t *c) {
    for (;;) {
        int n = SSL_read(c->ssl, rbuf, sizeof rbuf);
        if (n <= 0) {
            int e = SSL_get_error(c->ssl, n);
            if (e == SSL_ERROR_WANT_READ) break;
            if (e == SSL_ERROR_WANT_WRITE) {
                set_events(c, 1);
                break;
            }
            if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && errno == 0))
                err_closed++;
            else
                err_io++;
            kill_conn(c);
            return;
        }
        size_t got = (size_t)n;
        if (c->in_off + got > c->out_off) { /* more than we sent: the server invented data */
            err_extra++;
            kill_conn(c);
            return;
        }
        if (memcmp(c->buf + c->in_off, rbuf, got) != 0) {
            err_mismatch++;
            kill_conn(c);
            return;
        }
        size_t before = c->in_off / (size_t)opt_size;
        c->in_off += got;
        if (opt_mode != M_IDLE) {
            uint64_t done = c->in_off / (size_t)opt_size - before;
            msgs_total += done;
            if (phase == P_MEASURE) {
                msgs_window += done;
                bytes_window += got;
                if (done) lat_record(now_ns() - c->t_sent, done);
            }
        }
        if (c->in_off == c->out_len) {
            inflight--;
            if (!c->confirmed) {
                c->confirmed = 1;
                unconfirmed--;
                confirmed_total++;
            }
            if (opt_mode == M_HANDSHAKE) {
                short_done(c);
                return;
            }
            if (opt_mode != M_IDLE && phase < P_DRAIN) start_batch(c);
            if (c->state == C_DEAD) return;
        }
    }
    if (c->write_wants_read) pump_out(c);
}

static void on_event(conn_t *c, uint32_t e) {
    if (c->state == C_CONNECTING) {
        if (!(e & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            err_connect++;
            kill_conn(c);
            return;
        }
        c->state = C_HANDSHAKE;
    }
    if (c->state == C_HANDSHAKE) {
        int r = SSL_do_handshake(c->ssl);
        if (r != 1) {
            int se = SSL_get_error(c->ssl, r);
            if (se == SSL_ERROR_WANT_READ) set_events(c, 0);
            else if (se == SSL_ERROR_WANT_WRITE) set_events(c, 1);
            else {
                if (!tls_version[0]) ERR_print_errors_fp(stderr);
                err_tls++;
                kill_conn(c);
            }
            return;
        }
        handshake_done(c);
        if (c->state != C_ACTIVE) return;
        /* The echo may already be here with the handshake's last records. */
        pump_in(c);
        return;
    }
    if (e & (EPOLLIN | EPOLLERR | EPOLLHUP)) pump_in(c);
    if (c->state == C_ACTIVE && (e & EPOLLOUT)) pump_out(c);
}

static void emit_event(const char *name, double t0) {
    printf("{\"event\":\"%s\",\"t\":%.6f,\"live\":%d,\"errors\":%llu}\n", name, now() - t0, live,
           (unsigned long long)errors_total());
    fflush(stdout);
}

static void setup_tls(void) {
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) die("SSL_CTX_new");
    int v = opt_tls12 ? TLS1_2_VERSION : TLS1_3_VERSION;
    SSL_CTX_set_min_proto_version(ctx, v);
    SSL_CTX_set_max_proto_version(ctx, v);
    int ok = opt_tls12 ? SSL_CTX_set_cipher_list(ctx, opt_cipher ? opt_cipher : "ECDHE-RSA-AES128-GCM-SHA256")
                       : SSL_CTX_set_ciphersuites(ctx, opt_cipher ? opt_cipher : "TLS_AES_128_GCM_SHA256");
    if (!ok) {
        fprintf(stderr, "tlsloadgen: --cipher %s: no such cipher\n", opt_cipher);
        exit(2);
    }
    /* Every handshake a full one: no session kept, no ticket asked for. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    long mode = SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER;
    if (opt_release_buffers == 1 || (opt_release_buffers < 0 && opt_mode == M_IDLE))
        mode |= SSL_MODE_RELEASE_BUFFERS;
    SSL_CTX_set_mode(ctx, mode);
    if (opt_cafile) {
        if (!SSL_CTX_load_verify_locations(ctx, opt_cafile, NULL)) {
            fprintf(stderr, "tlsloadgen: cannot load --cafile %s\n", opt_cafile);
            ERR_print_errors_fp(stderr);
            exit(2);
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
}

int main(int argc, char **argv) {
    static struct option longopts[] = {
        {"host", required_argument, 0, 'h'},
        {"port", required_argument, 0, 'p'},
        {"conns", required_argument, 0, 'c'},
        {"mode", required_argument, 0, 'm'},
        {"depth", required_argument, 0, 'd'},
        {"size", required_argument, 0, 's'},
        {"warmup", required_argument, 0, 'w'},
        {"duration", required_argument, 0, 'D'},
        {"cpu", required_argument, 0, 'C'},
        {"hold", no_argument, 0, 'H'},
        {"hold-timeout", required_argument, 0, 'T'},
        {"connect-timeout", required_argument, 0, 't'},
        {"connect-concurrency", required_argument, 0, 'k'},
        {"max-errors", required_argument, 0, 'E'},
        {"cafile", required_argument, 0, 'a'},
        {"servername", required_argument, 0, 'n'},
        {"tls12", no_argument, 0, '2'},
        {"cipher", required_argument, 0, 'x'},
        {"release-buffers", required_argument, 0, 'r'},
        {"help", no_argument, 0, '?'},
        {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'h': opt_host = optarg; break;
        case 'p': opt_port = atoi(optarg); break;
        case 'c': opt_conns = atoi(optarg); break;
        case 'm':
            if (!strcmp(optarg, "pingpong")) opt_mode = M_PINGPONG;
            else if (!strcmp(optarg, "pipeline")) opt_mode = M_PIPELINE;
            else if (!strcmp(optarg, "bulk")) opt_mode = M_BULK;
            else if (!strcmp(optarg, "handshake")) opt_mode = M_HANDSHAKE;
            else if (!strcmp(optarg, "idle")) opt_mode = M_IDLE;
            else usage();
            break;
        case 'd': opt_depth = atoi(optarg); break;
        case 's': opt_size = atoi(optarg); break;
        case 'w': opt_warmup = atof(optarg); break;
        case 'D': opt_duration = atof(optarg); break;
        case 'C': opt_cpu = atoi(optarg); break;
        case 'H': opt_hold = 1; break;
        case 'T': opt_hold_timeout = atof(optarg); break;
        case 't': opt_connect_timeout = atof(optarg); break;
        case 'k': opt_connect_concurrency = atoi(optarg); break;
        case 'E': opt_max_errors = strtoull(optarg, NULL, 10); break;
        case 'a': opt_cafile = optarg; break;
        case 'n': opt_servername = optarg; break;
        case '2': opt_tls12 = 1; break;
        case 'x': opt_cipher = optarg; break;
        case 'r': opt_release_buffers = atoi(optarg) ? 1 : 0; break;
        default: usage();
        }
    }
    if (opt_size < 0) opt_size = opt_mode == M_BULK ? 65536 : 64;
    if (opt_mode != M_PIPELINE) opt_depth = 1;
    if (opt_mode == M_IDLE) opt_size = 1;
    if (opt_conns <= 0 || opt_depth <= 0 || opt_size <= 0 || opt_duration < 0 || opt_warmup < 0 ||
        opt_connect_concurrency <= 0 || (size_t)opt_size * (size_t)opt_depth > (1u << 24))
        usage();
    if (opt_duration > 60 || opt_warmup > 60 || opt_conns > 100000) {
        fprintf(stderr, "tlsloadgen: duration/warmup capped at 60 s, conns at 100000\n");
        exit(2);
    }
    if (opt_port <= 0 || opt_port > 65535) usage();
    if (!loopback_addr(opt_host, opt_port, &addr, &addrlen)) {
        fprintf(stderr, "tlsloadgen: --host must be a numeric loopback address, not %s\n", opt_host);
        exit(2);
    }
    signal(SIGPIPE, SIG_IGN);
    if (pin_cpu(opt_cpu) < 0) die("sched_setaffinity");
    unsigned long long fd_limit;
    if (fd_room((long)opt_conns + 32, &fd_limit) < 0) {
        fprintf(stderr, "tlsloadgen: fd limit %llu too low for %d connections\n", fd_limit,
                opt_conns);
        exit(2);
    }
    setup_tls();

    size_t batch = (size_t)opt_size * (size_t)opt_depth;
    conns = calloc((size_t)opt_conns, sizeof *conns);
    unsigned char *bufs = malloc(batch * (size_t)opt_conns);
    reopen_q = calloc((size_t)opt_conns, sizeof *reopen_q);
    reopen_q2 = calloc((size_t)opt_conns, sizeof *reopen_q2);
    if (!conns || !bufs || !reopen_q || !reopen_q2) die("malloc");
    for (int i = 0; i < opt_conns; i++) conns[i].buf = bufs + batch * (size_t)i;

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    static conn_t stdin_tag;
    int stdin_watched = 0;
    double t0 = now(), t_connected = 0, t_start = 0, t_end = 0, cpu_start = 0, cpu_end = 0;
    double deadline = t0 + opt_connect_timeout, hold_deadline = 0;
    struct epoll_event evs[1024];
    open_more();

    while (phase != P_DONE) {
        double tn = now();
        if (phase == P_CONNECT) {
            if (confirmed_total == opt_conns) {
                t_connected = tn;
                emit_event("connected", t0);
                if (opt_mode == M_IDLE) {
                    phase = P_DRAIN;
                    hold_deadline = tn + opt_hold_timeout;
                } else {
                    phase = P_WARMUP;
                    deadline = tn + opt_warmup;
                }
            } else if (live == 0 && reopen_n == 0 && opened == opt_conns) {
                fprintf(stderr, "tlsloadgen: every connection failed\n");
                break;
            } else if (tn >= deadline) {
                fprintf(stderr, "tlsloadgen: connect phase timed out (%d/%d confirmed)\n",
                        confirmed_total, opt_conns);
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
            if (opt_hold && !stdin_watched) {
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &stdin_tag};
                if (epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev) < 0) break; /* stdin not pollable */
                stdin_watched = 1;
            }
            if (!opt_hold && inflight == 0) break;
            if (tn >= hold_deadline) {
                if (opt_hold) fprintf(stderr, "tlsloadgen: hold timed out\n");
                break;
            }
            if (live == 0 && !opt_hold) break;
        }
        if (live == 0 && reopen_n == 0 && phase != P_DRAIN) {
            fprintf(stderr, "tlsloadgen: no connection left\n");
            break;
        }
        double next = (phase == P_DRAIN) ? hold_deadline : deadline;
        int timeout_ms = (int)((next - tn) * 1000.0) + 1;
        if (phase == P_CONNECT && timeout_ms > 100) timeout_ms = 100;
        if (timeout_ms < 0) timeout_ms = 0;
        int n = epoll_wait(epfd, evs, 1024, timeout_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c == &stdin_tag) {
                char tmp[256];
                (void)!read(0, tmp, sizeof tmp); /* a line or EOF releases the hold */
                phase = P_DONE;
                continue;
            }
            if (c->state != C_DEAD) on_event(c, evs[i].events);
        }
        if (reopen_n) {
            conn_t **q = reopen_q;
            int qn = reopen_n;
            reopen_q = reopen_q2;
            reopen_q2 = q;
            reopen_n = 0;
            for (int i = 0; i < qn; i++)
                if (phase < P_DRAIN) connect_one(q[i]);
                else if (!q[i]->confirmed) unconfirmed--;
        }
        if (phase == P_CONNECT) open_more();
    }

    /* Close what is still open: close_notify, FIN, RST (no TIME_WAIT). */
    for (int i = 0; i < opened; i++) {
        conn_t *c = &conns[i];
        if (c->state == C_DEAD) continue;
        if (c->state == C_ACTIVE) SSL_shutdown(c->ssl);
        if (c->state != C_CONNECTING) shutdown(c->fd, SHUT_WR);
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        conn_free(c);
    }

    double elapsed = (t_end > t_start) ? t_end - t_start : 0.0;
    double rate = elapsed > 0 ? msgs_window / elapsed : 0.0;
    double gen_cpu = elapsed > 0 ? (cpu_end - cpu_start) / elapsed : 0.0;
    static const char *mnames[] = {"pingpong", "pipeline", "bulk", "handshake", "idle"};
    printf("{\"event\":\"result\",\"mode\":\"%s\",\"conns\":%d,\"depth\":%d,\"size\":%d,"
           "\"tls_version\":\"%s\",\"cipher\":\"%s\",\"verify\":%d,"
           "\"connected\":%d,\"connect_s\":%.6f,\"messages\":%llu,\"messages_total\":%llu,"
           "\"bytes\":%llu,\"elapsed\":%.6f,\"msgs_per_s\":%.1f,\"mb_per_s\":%.3f,"
           "\"handshakes\":%llu,\"handshakes_window\":%llu,"
           "\"gen_cpu_frac\":%.4f,\"gen_busy_frac\":%.4f,"
           "\"errors\":%llu,\"err_connect\":%llu,\"err_tls\":%llu,\"err_io\":%llu,"
           "\"err_closed\":%llu,\"err_mismatch\":%llu,\"err_extra\":%llu,\"live\":%d,",
           mnames[opt_mode], opt_conns, opt_depth, opt_size, tls_version, tls_cipher,
           opt_cafile != NULL, confirmed_total, t_connected > 0 ? t_connected - t0 : -1.0,
           (unsigned long long)msgs_window, (unsigned long long)msgs_total,
           (unsigned long long)bytes_window, elapsed, rate,
           elapsed > 0 ? (double)bytes_window / elapsed / 1e6 : 0.0,
           (unsigned long long)handshakes_total, (unsigned long long)handshakes_window, gen_cpu,
           gen_cpu, (unsigned long long)errors_total(), (unsigned long long)err_connect,
           (unsigned long long)err_tls, (unsigned long long)err_io, (unsigned long long)err_closed,
           (unsigned long long)err_mismatch, (unsigned long long)err_extra, live);
    lat_print_json(stdout);
    printf("}\n");
    fflush(stdout);
    SSL_CTX_free(ctx);
    int complete = confirmed_total == opt_conns && (opt_mode == M_IDLE || t_end > 0);
    return (complete && errors_total() == 0) ? 0 : 1;
}
