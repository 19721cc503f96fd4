/*
 * loadgen.c -- epoll echo load generator for bench/echo.py.
 *
 * One thread, one epoll instance, N non-blocking client sockets.  Written in C
 * so that the load generator is never the bottleneck when it measures a
 * Python echo server: on loopback the server side costs several microseconds
 * per message, this side well under one.
 *
 * Modes
 *   pingpong  each connection sends one SIZE-byte message, waits for the whole
 *             echo, checks it, and sends the next one.
 *   pipeline  each connection sends DEPTH messages back to back (one send()
 *             of DEPTH*SIZE bytes), waits for all DEPTH*SIZE echoed bytes,
 *             checks them, repeats.
 *   idle      each connection sends 1 byte and reads the echo back (proof that
 *             the server has accepted it and serves it), then stays open and
 *             silent until the harness releases it.  Used to measure memory
 *             per idle connection.
 *   short     short connections: each of the N slots connects, sends one
 *             SIZE-byte message, reads and checks the echo, closes, and
 *             connects again at once.  A "message" is then one whole
 *             connection, counted only once its echo has been verified.
 *             How the client closes (--close):
 *               eof  (default) shutdown(SHUT_WR), then close() with SO_LINGER
 *                    0.  The server reads a FIN (EOF, the graceful path) and
 *                    closes; the RST that follows our FIN frees both sockets
 *                    at once, so no TIME_WAIT piles up on either side and the
 *                    ephemeral ports of this shared machine stay free.  (The
 *                    server still reads EOF, not an error: a FIN already
 *                    received wins over a later RST in recv().)
 *               rst  close() with SO_LINGER 0 only: the server sees a reset.
 *               fin  plain close(): our side holds TIME_WAIT for 60 s; use
 *                    --src-addrs to spread those over 127.0.0.2... sources.
 *             --src-addrs K binds each client socket to 127.0.0.2 ..
 *             127.0.0.(K+1) in turn (port 0), loopback only.
 *
 * --frame-header H (pingpong, pipeline, short): each SIZE-byte message starts
 * with an H-byte big-endian length field holding SIZE-H, the number of bytes
 * after it, then the usual pattern.  A length-prefixed framed echo server
 * (LengthFieldCodec(H) re-encoding each frame) returns it byte for byte.
 *
 * Every echoed byte is compared with what was sent (memcmp against the batch
 * we wrote); a mismatch, a server-side close, a reset or a failed connect is
 * counted as an error and reported.
 *
 * Protocol with the harness (stdout, one JSON object per line, flushed):
 *   {"event":"connected",...}  all N connections are up and have each had one
 *                              full echo (so the server accepted them all);
 *                              the warm-up starts now (idle mode: hold starts).
 *   {"event":"start",...}      warm-up over: the measured window opens now.
 *   {"event":"end",...}        the measured window closed now.  From here on
 *                              no new request is sent (in-flight echoes are
 *                              still drained), so the server goes idle and the
 *                              harness's CPU sample is not polluted by load
 *                              that is not counted, nor by connection teardown.
 *   {"event":"result",...}     final figures; printed once the harness closes
 *                              our stdin (with --hold) or right after "end".
 * Messages are counted in the window only: a message counts when its last
 * echoed byte arrives inside [start, end).
 *
 * Latency: for every message counted in the window, the round-trip time from
 * the moment its batch was handed to send() (short mode: from the socket()
 * call that starts the connection, so the handshake is included) to the
 * moment its last echoed byte was read.  In pipeline mode every message of a
 * batch is timed from the batch's send, so it is the batch's round trip as
 * seen by each message.  The times go into a log-linear histogram (16
 * sub-buckets per power of two of nanoseconds: under 6.25% relative bucket
 * width, reported at the bucket's midpoint); the result line carries
 * lat_n, lat_mean_us, lat_p50_us, lat_p90_us, lat_p99_us, lat_p999_us and
 * lat_max_us.  The clock is read once per recv() that completes messages.
 *
 * Safety: only loopback targets (127.0.0.0/8, ::1) or a unix socket path are
 * accepted; every phase has a deadline, so the program always stops by itself.
 *
 * Build: cc -O2 -o loadgen loadgen.c       (bench/echo.py does this itself;
 *        lgcommon.h, beside it, holds what the generators share)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "lgcommon.h"

enum mode { M_PINGPONG, M_PIPELINE, M_IDLE, M_SHORT };
enum closehow { CLOSE_EOF, CLOSE_RST, CLOSE_FIN };
enum phase { P_CONNECT, P_WARMUP, P_MEASURE, P_DRAIN, P_DONE };
enum cstate { C_CONNECTING, C_ACTIVE, C_DEAD };

typedef struct conn {
    int fd;
    int id;
    enum cstate state;
    int confirmed;       /* had one complete echo: the server surely accepted it */
    int want_out;        /* EPOLLOUT currently registered */
    uint32_t seq;        /* round number, mixed into the payload pattern */
    uint64_t t_sent;     /* ns: when the current batch (short: connection) started */
    size_t out_len;      /* bytes in the current batch */
    size_t out_off;      /* bytes of the batch sent so far */
    size_t in_off;       /* bytes of the batch echoed back so far */
    unsigned char *buf;  /* the batch as sent: what the echo must equal */
} conn_t;

/* ---- configuration ---------------------------------------------------- */
static const char *opt_host = "127.0.0.1";
static int opt_port = 0;
static const char *opt_unix = NULL;
static int opt_conns = 50;
static enum mode opt_mode = M_PINGPONG;
static int opt_depth = 1;
static int opt_size = 64;
static double opt_warmup = 1.0;
static double opt_duration = 5.0;
static int opt_cpu = -1;
static int opt_hold = 0;               /* wait for stdin EOF/line before exiting */
static double opt_hold_timeout = 120.0;
static double opt_connect_timeout = 60.0;
static int opt_connect_concurrency = 64;
static int opt_spin = 0;              /* busy-poll during warm-up and window */
static int opt_frame_header = 0;      /* bytes of big-endian length at the start of each message */
static enum closehow opt_close = CLOSE_EOF; /* short mode: how the client closes */
static int opt_src_addrs = 0;         /* short mode: spread sources over 127.0.0.2.. (0: no bind) */
static uint64_t opt_max_errors = 1000; /* short mode: stop reconnecting after this many errors */

/* ---- state ---------------------------------------------------------------- */
static conn_t *conns;
static int epfd;
static enum phase phase = P_CONNECT;
static int opened = 0;         /* connections started */
static int unconfirmed = 0;    /* started, not yet confirmed by an echo */
static int confirmed_total = 0;
static int live = 0;           /* not dead */
static uint64_t msgs_window = 0, msgs_total = 0, bytes_window = 0;
static uint64_t err_connect = 0, err_io = 0, err_closed = 0, err_mismatch = 0, err_extra = 0;
static int inflight = 0;       /* connections with an unfinished batch */
static double idle_window = 0; /* --spin: time in empty polls inside the window */
static conn_t **reopen_q, **reopen_q2; /* short mode: slots to reconnect after a failure */
static int reopen_n = 0;
static uint32_t src_rr = 0;    /* short mode: next source address */

static struct sockaddr_storage addr;
static socklen_t addrlen;

static uint64_t errors_total(void) {
    return err_connect + err_io + err_closed + err_mismatch + err_extra;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen [--host 127.0.0.1] --port P | --unix PATH\n"
            "               [--conns N] [--mode pingpong|pipeline|idle|short] [--depth D]\n"
            "               [--size BYTES] [--frame-header H] [--warmup S] [--duration S]\n"
            "               [--cpu N] [--hold] [--hold-timeout S] [--connect-timeout S]\n"
            "               [--connect-concurrency K] [--spin]\n"
            "               short mode: [--close eof|rst|fin] [--src-addrs K] [--max-errors N]\n");
    exit(2);
}

/* Refuse anything but loopback: this tool must never load a remote host. */
static void resolve(void) {
    memset(&addr, 0, sizeof addr);
    if (opt_unix) {
        struct sockaddr_un *un = (struct sockaddr_un *)&addr;
        if (strlen(opt_unix) >= sizeof un->sun_path) {
            fprintf(stderr, "loadgen: unix path too long\n");
            exit(2);
        }
        un->sun_family = AF_UNIX;
        strcpy(un->sun_path, opt_unix);
        addrlen = sizeof *un;
        return;
    }
    if (opt_port <= 0 || opt_port > 65535) usage();
    struct sockaddr_in tmp4;
    struct sockaddr_in6 tmp6;
    if (inet_pton(AF_INET, opt_host, &tmp4.sin_addr) != 1 &&
        inet_pton(AF_INET6, opt_host, &tmp6.sin6_addr) != 1) {
        fprintf(stderr, "loadgen: --host must be a numeric loopback address\n");
        exit(2);
    }
    if (!loopback_addr(opt_host, opt_port, &addr, &addrlen)) {
        fprintf(stderr, "loadgen: refusing non-loopback target %s\n", opt_host);
        exit(2);
    }
}

static void set_events(conn_t *c, int want_out) {
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl mod");
    c->want_out = want_out;
}

static void kill_conn(conn_t *c) {
    if (c->state == C_DEAD) return;
    if (c->out_len && c->in_off < c->out_len) inflight--;
    c->state = C_DEAD;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    live--;
    if (opt_mode == M_SHORT && phase < P_DRAIN && errors_total() < opt_max_errors) {
        /* A short-connection slot lives on: reconnect after this epoll batch
         * (not here, so a server that refuses cannot recurse us). */
        reopen_q[reopen_n++] = c;
        return;
    }
    if (!c->confirmed) unconfirmed--;
}

/* Fill the next batch with a pattern that depends on connection, round and
 * message index, so a misrouted, duplicated or stale echo is caught. */
static void fill_batch(conn_t *c) {
    unsigned char *p = c->buf;
    for (size_t m = 0; m < c->out_len / (size_t)opt_size; m++) {
        unsigned base = (unsigned)c->id * 7u + c->seq * 13u + (unsigned)m * 31u;
        for (int k = 0; k < opt_size; k++) p[k] = (unsigned char)(base + (unsigned)k);
        if (opt_frame_header) {
            /* Length field: big-endian count of the bytes after it. */
            uint64_t v = (uint64_t)(opt_size - opt_frame_header);
            for (int k = opt_frame_header - 1; k >= 0; k--, v >>= 8) p[k] = (unsigned char)v;
        }
        p += opt_size;
    }
}

/* Send what is left of the current batch; arm EPOLLOUT only if the kernel
 * buffer is full (rare with these sizes). */
static void pump_out(conn_t *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->buf + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->want_out) set_events(c, 1);
            return;
        }
        if (n < 0 && errno == EINTR) continue;
        err_io++;
        kill_conn(c);
        return;
    }
    if (c->want_out) set_events(c, 0);
}

static void start_batch(conn_t *c) {
    c->seq++;
    c->out_len = (opt_mode == M_IDLE) ? 1 : (size_t)opt_size * (size_t)opt_depth;
    c->out_off = 0;
    c->in_off = 0;
    fill_batch(c);
    if (opt_mode != M_SHORT) c->t_sent = now_ns(); /* short: set at socket() */
    inflight++;
    pump_out(c);
}

/* Short mode: one connection of a slot -- socket, connect, send the message
 * at once (on loopback the handshake has normally completed by the time
 * connect() returns; if not, send() says EAGAIN and EPOLLOUT takes over).
 * Only EPOLLIN is watched: a refused or reset connect shows up as
 * EPOLLERR/EPOLLHUP, which epoll always reports. */
static void short_connect(conn_t *c) {
    c->t_sent = now_ns();
    int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    c->fd = fd;
    c->state = C_ACTIVE;
    c->want_out = 0;
    c->out_len = 0;
    live++;
    if (opt_close != CLOSE_FIN) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    if (opt_src_addrs > 0) {
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(0x7f000002u + src_rr++ % (uint32_t)opt_src_addrs);
#ifdef IP_BIND_ADDRESS_NO_PORT
        /* Let connect() pick the port for the whole 4-tuple, so ports are
         * shared across source addresses instead of reserved by bind(). */
        int one = 1;
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
#endif
        if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
            err_connect++;
            kill_conn(c);
            return;
        }
    }
    if (connect(fd, (struct sockaddr *)&addr, addrlen) < 0 && errno != EINPROGRESS) {
        err_connect++;
        kill_conn(c);
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl add");
    start_batch(c);
}

/* Short mode: the echo is complete and verified; close as --close says and
 * start the slot's next connection (unless the window is over). */
static void short_done(conn_t *c) {
    if (opt_close == CLOSE_EOF) shutdown(c->fd, SHUT_WR);
    close(c->fd); /* also leaves the epoll set: the fd was never duplicated */
    c->state = C_DEAD;
    live--;
    if (phase < P_DRAIN) short_connect(c);
}

static void open_one(void) {
    conn_t *c = &conns[opened];
    c->id = opened++;
    if (opt_mode == M_SHORT) {
        unconfirmed++;
        short_connect(c);
        return;
    }
    int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    c->fd = fd;
    c->state = C_CONNECTING;
    unconfirmed++;
    live++;
    if (addr.ss_family != AF_UNIX) {
        /* Nagle off on our side too: a request must not wait for an ACK. */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    c->want_out = 1;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl add");
    if (connect(fd, (struct sockaddr *)&addr, addrlen) < 0 && errno != EINPROGRESS) {
        err_connect++;
        kill_conn(c);
    }
}

/* Open connections while fewer than K are unconfirmed.  Throttling keeps the
 * server's accept backlog from overflowing (asyncio's default is 100), which
 * would cost SYN retransmits of a second or more and skew the warm-up. */
static void open_more(void) {
    while (opened < opt_conns && unconfirmed < opt_connect_concurrency) open_one();
}

static void on_writable(conn_t *c) {
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            err_connect++;
            kill_conn(c);
            return;
        }
        c->state = C_ACTIVE;
        set_events(c, 0);
        start_batch(c);
        return;
    }
    pump_out(c);
}

static unsigned char rbuf[1 << 16];

static void on_readable(conn_t *c) {
    for (;;) {
        ssize_t n = recv(c->fd, rbuf, sizeof rbuf, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            if (errno == EINTR) continue;
            err_io++;
            kill_conn(c);
            return;
        }
        if (n == 0) {
            err_closed++;
            kill_conn(c);
            return;
        }
        size_t got = (size_t)n;
        if (c->in_off + got > c->out_off) {
            /* More bytes than we sent: the server invented data. */
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
            if (opt_mode == M_SHORT) {
                short_done(c);
                return;
            }
            /* Keep the load going until the window closes; idle connections
             * stay silent after their first echo. */
            if (opt_mode != M_IDLE && phase < P_DRAIN) start_batch(c);
            if (c->state == C_DEAD) return;
        }
        if (got < sizeof rbuf) return; /* drained: save a recv() returning EAGAIN */
    }
}

static void emit_event(const char *name, double t0) {
    printf("{\"event\":\"%s\",\"t\":%.6f,\"live\":%d,\"errors\":%llu}\n", name, now() - t0, live,
           (unsigned long long)errors_total());
    fflush(stdout);
}

/* Any input on stdin -- a line or EOF -- releases the hold.  EOF also covers a
 * harness that died: we then close everything and exit instead of lingering. */
static int stdin_released(void) {
    char tmp[256];
    (void)!read(0, tmp, sizeof tmp);
    return 1;
}

int main(int argc, char **argv) {
    static struct option longopts[] = {
        {"host", required_argument, 0, 'h'},
        {"port", required_argument, 0, 'p'},
        {"unix", required_argument, 0, 'u'},
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
        {"spin", no_argument, 0, 'S'},
        {"frame-header", required_argument, 0, 'F'},
        {"close", required_argument, 0, 'L'},
        {"src-addrs", required_argument, 0, 'A'},
        {"max-errors", required_argument, 0, 'E'},
        {"help", no_argument, 0, '?'},
        {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'h': opt_host = optarg; break;
        case 'p': opt_port = atoi(optarg); break;
        case 'u': opt_unix = optarg; break;
        case 'c': opt_conns = atoi(optarg); break;
        case 'm':
            if (!strcmp(optarg, "pingpong")) opt_mode = M_PINGPONG;
            else if (!strcmp(optarg, "pipeline")) opt_mode = M_PIPELINE;
            else if (!strcmp(optarg, "idle")) opt_mode = M_IDLE;
            else if (!strcmp(optarg, "short")) opt_mode = M_SHORT;
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
        case 'S': opt_spin = 1; break;
        case 'F': opt_frame_header = atoi(optarg); break;
        case 'L':
            if (!strcmp(optarg, "eof")) opt_close = CLOSE_EOF;
            else if (!strcmp(optarg, "rst")) opt_close = CLOSE_RST;
            else if (!strcmp(optarg, "fin")) opt_close = CLOSE_FIN;
            else usage();
            break;
        case 'A': opt_src_addrs = atoi(optarg); break;
        case 'E': opt_max_errors = strtoull(optarg, NULL, 10); break;
        default: usage();
        }
    }
    if (opt_mode == M_PINGPONG || opt_mode == M_SHORT) opt_depth = 1;
    if (opt_mode == M_IDLE) opt_size = 1, opt_depth = 1, opt_frame_header = 0;
    if (opt_frame_header < 0 || opt_frame_header > 8 || (opt_frame_header && opt_frame_header >= opt_size) ||
        (opt_frame_header && opt_frame_header < 8 &&
         (uint64_t)(opt_size - opt_frame_header) >> (8 * opt_frame_header))) {
        fprintf(stderr, "loadgen: --frame-header must be 0..8 and smaller than --size, "
                        "with size-header fitting the field\n");
        exit(2);
    }
    if (opt_src_addrs < 0 || opt_src_addrs > 249) {
        fprintf(stderr, "loadgen: --src-addrs must be 0..249 (127.0.0.2 .. 127.0.0.250)\n");
        exit(2);
    }
    if (opt_conns <= 0 || opt_depth <= 0 || opt_size <= 0 || opt_duration < 0 || opt_warmup < 0 ||
        opt_connect_concurrency <= 0)
        usage();
    /* Bounded: at most 60 s of measured load, at most 100k connections. */
    if (opt_duration > 60 || opt_warmup > 60 || opt_conns > 100000) {
        fprintf(stderr, "loadgen: duration/warmup capped at 60 s, conns at 100000\n");
        exit(2);
    }
    resolve();
    if (opt_src_addrs && (addr.ss_family != AF_INET || opt_mode != M_SHORT)) {
        fprintf(stderr, "loadgen: --src-addrs needs --mode short and an IPv4 loopback target\n");
        exit(2);
    }
    signal(SIGPIPE, SIG_IGN);

    if (pin_cpu(opt_cpu) < 0) die("sched_setaffinity");
    /* Make room for N sockets (the hard limit is the ceiling). */
    unsigned long long fd_limit;
    if (fd_room((long)opt_conns + 32, &fd_limit) < 0) {
        fprintf(stderr, "loadgen: fd limit %llu too low for %d connections\n", fd_limit, opt_conns);
        exit(2);
    }

    size_t batch = (size_t)opt_size * (size_t)opt_depth;
    conns = calloc((size_t)opt_conns, sizeof *conns);
    unsigned char *bufs = malloc(batch * (size_t)opt_conns);
    if (!conns || !bufs) die("malloc");
    for (int i = 0; i < opt_conns; i++) conns[i].buf = bufs + batch * (size_t)i;
    reopen_q = calloc((size_t)opt_conns, sizeof *reopen_q);
    reopen_q2 = calloc((size_t)opt_conns, sizeof *reopen_q2);
    if (!reopen_q || !reopen_q2) die("malloc");

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    static conn_t stdin_tag; /* marks stdin in the epoll set */
    int stdin_watched = 0;

    double t0 = now();
    double t_connected = 0, t_start = 0, t_end = 0, cpu_start = 0, cpu_end = 0;
    double deadline = t0 + opt_connect_timeout;
    double hold_deadline = 0;
    struct epoll_event evs[1024];
    open_more();

    while (phase != P_DONE) {
        double tn = now();
        /* Phase transitions are driven by the clock, independent of traffic. */
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
                fprintf(stderr, "loadgen: every connection failed\n");
                phase = P_DONE;
                break;
            } else if (tn >= deadline) {
                fprintf(stderr, "loadgen: connect phase timed out (%d/%d confirmed)\n",
                        confirmed_total, opt_conns);
                phase = P_DONE;
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
                if (epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev) < 0) {
                    /* stdin not pollable (a regular file, /dev/null): don't hold. */
                    phase = P_DONE;
                    break;
                }
                stdin_watched = 1;
            }
            if (!opt_hold && inflight == 0) break;
            if (tn >= hold_deadline) {
                if (opt_hold) fprintf(stderr, "loadgen: hold timed out\n");
                break;
            }
            if (live == 0 && !opt_hold) break;
        }
        if (live == 0 && reopen_n == 0 && phase != P_DRAIN) {
            fprintf(stderr, "loadgen: no connection left\n");
            break;
        }

        double next = (phase == P_DRAIN) ? hold_deadline : deadline;
        int timeout_ms = (int)((next - tn) * 1000.0) + 1;
        if (phase == P_CONNECT && timeout_ms > 100) timeout_ms = 100;
        if (timeout_ms < 0) timeout_ms = 0;
        int spinning = opt_spin && (phase == P_WARMUP || phase == P_MEASURE);
        if (spinning) timeout_ms = 0;
        int n = epoll_wait(epfd, evs, 1024, timeout_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        if (spinning && n == 0 && phase == P_MEASURE) idle_window += now() - tn;
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c == &stdin_tag) {
                if (stdin_released()) phase = P_DONE;
                continue;
            }
            if (c->state == C_DEAD) continue;
            uint32_t e = evs[i].events;
            if (c->state == C_CONNECTING) {
                if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_writable(c);
                continue;
            }
            if (e & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
            if (c->state != C_DEAD && (e & EPOLLOUT)) pump_out(c);
        }
        if (reopen_n) {
            /* Short mode: reconnect the slots that failed in this batch.  Swap
             * queues first: a slot failing again goes to the next batch. */
            conn_t **q = reopen_q;
            int qn = reopen_n;
            reopen_q = reopen_q2;
            reopen_q2 = q;
            reopen_n = 0;
            for (int i = 0; i < qn; i++)
                if (phase < P_DRAIN) short_connect(q[i]);
                else if (!q[i]->confirmed) unconfirmed--;
        }
        if (phase == P_CONNECT) open_more();
    }

    /* Close what is still open the way --close eof does: the server reads EOF
     * (its graceful path) and the RST behind our FIN frees both sockets at
     * once, so thousands of connections leave no TIME_WAIT behind on this
     * shared machine.  The harness has taken its samples by now. */
    for (int i = 0; i < opened; i++) {
        conn_t *c = &conns[i];
        if (c->state == C_DEAD) continue;
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        if (c->state == C_ACTIVE) shutdown(c->fd, SHUT_WR);
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        close(c->fd);
        c->state = C_DEAD;
    }

    double elapsed = (t_end > t_start) ? t_end - t_start : 0.0;
    double rate = elapsed > 0 ? msgs_window / elapsed : 0.0;
    double gen_cpu = elapsed > 0 ? (cpu_end - cpu_start) / elapsed : 0.0;
    /* How busy the generator really was: with --spin its CPU time is always
     * ~100%, so subtract the time spent in polls that found nothing. */
    double gen_busy = elapsed > 0 ? (opt_spin ? (elapsed - idle_window) / elapsed : gen_cpu) : 0.0;
    const char *mname = opt_mode == M_PINGPONG ? "pingpong" : opt_mode == M_PIPELINE ? "pipeline"
                      : opt_mode == M_SHORT ? "short" : "idle";
    const char *cname = opt_close == CLOSE_EOF ? "eof" : opt_close == CLOSE_RST ? "rst" : "fin";
    printf("{\"event\":\"result\",\"mode\":\"%s\",\"conns\":%d,\"depth\":%d,\"size\":%d,"
           "\"frame_header\":%d,\"close\":\"%s\",\"src_addrs\":%d,"
           "\"connected\":%d,\"connect_s\":%.6f,\"messages\":%llu,\"messages_total\":%llu,"
           "\"bytes\":%llu,\"elapsed\":%.6f,\"msgs_per_s\":%.1f,\"gen_cpu_frac\":%.4f,\"gen_busy_frac\":%.4f,\"spin\":%d,"
           "\"errors\":%llu,\"err_connect\":%llu,\"err_io\":%llu,\"err_closed\":%llu,"
           "\"err_mismatch\":%llu,\"err_extra\":%llu,\"live\":%d,",
           mname, opt_conns, opt_depth, opt_size, opt_frame_header,
           opt_mode == M_SHORT ? cname : "", opt_src_addrs, confirmed_total,
           t_connected > 0 ? t_connected - t0 : -1.0, (unsigned long long)msgs_window,
           (unsigned long long)msgs_total, (unsigned long long)bytes_window, elapsed, rate, gen_cpu,
           gen_busy, opt_spin,
           (unsigned long long)errors_total(), (unsigned long long)err_connect,
           (unsigned long long)err_io, (unsigned long long)err_closed,
           (unsigned long long)err_mismatch, (unsigned long long)err_extra, live);
    lat_print_json(stdout);
    printf("}\n");
    fflush(stdout);
    /* Exit code: 0 clean, 1 if the run completed with errors or incomplete. */
    int complete = confirmed_total == opt_conns && (opt_mode == M_IDLE || t_end > 0);
    return (complete && errors_total() == 0) ? 0 : 1;
}
