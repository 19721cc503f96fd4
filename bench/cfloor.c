/*
 * cfloor.c -- the floor: the cheapest echo server the benchmark's syscall
 * pattern allows, in C, as a reference kind ("c") for bench/echo.py.
 *
 * Every server in the comparison does the same kernel work per batch of
 * messages: one read() of what arrived, one write() of the reply, a share of
 * one epoll_wait().  This one does exactly that and nothing else -- level-
 * triggered epoll, one 64 KiB read buffer, no allocation per message -- so its
 * CPU per message is what the kernel costs on this machine.  A Python server
 * can approach it, never go below it.  It answers the question "how much of a
 * server's CPU per message is left for user space to win back?".
 *
 *   cfloor --port P [--host 127.0.0.1] [--proto echo|framed]
 *   cfloor --unix PATH [--proto echo|framed]
 *
 * echo   writes back every byte it reads.
 * framed decodes 4-byte big-endian length-prefixed frames (the bytes after the
 *        field) and writes each payload back re-encoded, keeping a partial
 *        frame across reads; a frame over 1 MiB closes the connection.  Same
 *        protocol as the Python servers' framed mode.
 *
 * A reply the socket cannot take at once is kept and flushed on EPOLLOUT, and
 * reading from that connection stops until it is out -- bounded memory, like
 * every other server here.  Loopback only: the host must be in 127.0.0.0/8.
 * Runs until killed.  Build: cc -O2 -o cfloor cfloor.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_FRAME (1u << 20)
#define RBUF (64 * 1024)

struct conn {
    unsigned char *in;  /* framed: partial frame kept across reads */
    size_t in_len, in_cap;
    unsigned char *out; /* reply the socket did not take yet */
    size_t out_len, out_off;
};

static struct conn **conns;
static int nconns_cap;
static int framed;
static int ep;

static void die(const char *what) { perror(what); exit(1); }

static void drop(int fd) {
    struct conn *c = conns[fd];
    if (c) { free(c->in); free(c->out); free(c); conns[fd] = NULL; }
    close(fd);
}

static void want(int fd, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.fd = fd};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev) < 0) die("epoll_ctl");
}

/* Send what is queued; 0 when all of it is out, 1 when some is left, -1 on error. */
static int flush_out(int fd, struct conn *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = write(fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n < 0) return (errno == EAGAIN || errno == EINTR) ? 1 : -1;
        c->out_off += (size_t)n;
    }
    c->out_len = c->out_off = 0;
    return 0;
}

/* Write a reply at once; queue what the socket does not take. */
static int reply(int fd, struct conn *c, const unsigned char *p, size_t len) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR) return -1;
        n = 0;
    }
    if ((size_t)n == len) return 0;
    c->out = realloc(c->out, len - (size_t)n);
    if (!c->out) die("realloc");
    memcpy(c->out, p + n, len - (size_t)n);
    c->out_len = len - (size_t)n;
    c->out_off = 0;
    want(fd, EPOLLOUT); /* stop reading until it is out */
    return 0;
}

/* framed: cut frames from c->in (+ data), build the re-encoded replies in out. */
static int on_frames(int fd, struct conn *c, unsigned char *data, size_t len) {
    static unsigned char *obuf;
    static size_t ocap;
    unsigned char *p = data;
    size_t avail = len;
    if (c->in_len) { /* join the kept partial frame and the new bytes */
        if (c->in_len + len > c->in_cap) {
            c->in_cap = (c->in_len + len) * 2;
            c->in = realloc(c->in, c->in_cap);
            if (!c->in) die("realloc");
        }
        memcpy(c->in + c->in_len, data, len);
        c->in_len += len;
        p = c->in;
        avail = c->in_len;
    }
    if (ocap < avail) { ocap = avail * 2; obuf = realloc(obuf, ocap); if (!obuf) die("realloc"); }
    size_t pos = 0, olen = 0;
    while (avail - pos >= 4) {
        uint32_t flen = (uint32_t)p[pos] << 24 | (uint32_t)p[pos + 1] << 16 |
                        (uint32_t)p[pos + 2] << 8 | p[pos + 3];
        if (flen > MAX_FRAME - 4) return -1;
        if (avail - pos - 4 < flen) break;
        obuf[olen] = p[pos]; obuf[olen + 1] = p[pos + 1]; /* re-encode: same field */
        obuf[olen + 2] = p[pos + 2]; obuf[olen + 3] = p[pos + 3];
        memcpy(obuf + olen + 4, p + pos + 4, flen);
        olen += 4 + flen;
        pos += 4 + flen;
    }
    size_t rest = avail - pos;
    if (rest) {
        if (rest > c->in_cap) {
            c->in_cap = rest * 2;
            unsigned char *n = malloc(c->in_cap);
            if (!n) die("malloc");
            memcpy(n, p + pos, rest);
            free(c->in);
            c->in = n;
        } else {
            memmove(c->in, p + pos, rest);
        }
    }
    c->in_len = rest;
    return olen ? reply(fd, c, obuf, olen) : 0;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *unix_path = NULL;
    int port = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--host")) host = argv[i + 1];
        else if (!strcmp(argv[i], "--unix")) unix_path = argv[i + 1];
        else if (!strcmp(argv[i], "--proto")) framed = !strcmp(argv[i + 1], "framed");
        else { fprintf(stderr, "cfloor: unknown option %s\n", argv[i]); return 2; }
    }
    int lfd;
    if (unix_path) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (strlen(unix_path) >= sizeof sa.sun_path) { fprintf(stderr, "cfloor: path too long\n"); return 2; }
        strcpy(sa.sun_path, unix_path);
        lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    } else {
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        if (port <= 0 || inet_pton(AF_INET, host, &sa.sin_addr) != 1 ||
            (ntohl(sa.sin_addr.s_addr) >> 24) != 127) {
            fprintf(stderr, "cfloor: need --port and a 127.0.0.0/8 --host\n");
            return 2;
        }
        int one = 1;
        lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    }
    if (listen(lfd, 1024) < 0) die("listen");
    ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0) die("epoll");
    static unsigned char rbuf[RBUF];
    struct epoll_event evs[1024];
    for (;;) {
        int n = epoll_wait(ep, evs, 1024, -1);
        if (n < 0) { if (errno == EINTR) continue; die("epoll_wait"); }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                for (;;) { /* accept until EAGAIN */
                    int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                    if (cfd < 0) break;
                    if (!unix_path) {
                        int one = 1;
                        setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    }
                    if (cfd >= nconns_cap) {
                        int cap = cfd * 2 + 64;
                        conns = realloc(conns, (size_t)cap * sizeof *conns);
                        if (!conns) die("realloc");
                        memset(conns + nconns_cap, 0, (size_t)(cap - nconns_cap) * sizeof *conns);
                        nconns_cap = cap;
                    }
                    conns[cfd] = calloc(1, sizeof(struct conn));
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = cfd};
                    if (!conns[cfd] || epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev) < 0) die("add");
                }
                continue;
            }
            struct conn *c = conns[fd];
            if (c->out_len) { /* EPOLLOUT: finish the reply, then read again */
                int r = flush_out(fd, c);
                if (r < 0) drop(fd);
                else if (r == 0) want(fd, EPOLLIN);
                continue;
            }
            ssize_t got = read(fd, rbuf, sizeof rbuf);
            if (got <= 0) {
                if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                drop(fd);
                continue;
            }
            int r = framed ? on_frames(fd, c, rbuf, (size_t)got) : reply(fd, c, rbuf, (size_t)got);
            if (r < 0) drop(fd);
        }
    }
}
