/*
 * lgcommon.h -- what the C load generators share (loadgen.c, tlsloadgen.c,
 * udploadgen.c): clocks, own CPU time, the latency histogram, the loopback-only
 * target check, CPU pinning and fd room.  Each generator is one translation
 * unit, so everything here is static (inline: a generator need not use it all).
 */
#ifndef LGCOMMON_H
#define LGCOMMON_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

static inline double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* utime + stime of this process, seconds. */
static inline double cpu_self(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
}

/* ---- latency histogram (log-linear, ns) ---------------------------------- *
 * Values below 16 ns have a bucket each; above, 16 buckets per power of two:
 * index = 16 + (msb - 4) * 16 + the 4 bits below the most significant one. */
#define LAT_SUB 16
#define LAT_BUCKETS (LAT_SUB + 60 * LAT_SUB)
static uint64_t lat_hist[LAT_BUCKETS];
static uint64_t lat_n = 0, lat_max = 0;
static double lat_sum = 0;

static inline int lat_index(uint64_t v) {
    if (v < LAT_SUB) return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int idx = LAT_SUB + (msb - 4) * LAT_SUB + (int)((v >> (msb - 4)) & (LAT_SUB - 1));
    return idx < LAT_BUCKETS ? idx : LAT_BUCKETS - 1;
}

static inline void lat_record(uint64_t v, uint64_t count) {
    lat_hist[lat_index(v)] += count;
    lat_n += count;
    lat_sum += (double)v * (double)count;
    if (v > lat_max) lat_max = v;
}

/* The q-quantile in microseconds: the midpoint of the bucket holding the
 * ceil(q*n)-th smallest value, never above the largest value seen. */
static inline double lat_quantile_us(double q) {
    if (lat_n == 0) return -1.0;
    uint64_t rank = (uint64_t)(q * (double)lat_n + 0.999999);
    if (rank < 1) rank = 1;
    uint64_t seen = 0;
    for (int i = 0; i < LAT_BUCKETS; i++) {
        seen += lat_hist[i];
        if (seen >= rank) {
            double lo, width;
            if (i < LAT_SUB) {
                lo = i, width = 1;
            } else {
                int msb = (i - LAT_SUB) / LAT_SUB + 4, sub = (i - LAT_SUB) % LAT_SUB;
                lo = (double)((uint64_t)(LAT_SUB + sub) << (msb - 4));
                width = (double)(1ull << (msb - 4));
            }
            double mid = lo + width / 2;
            if (mid > (double)lat_max) mid = (double)lat_max;
            return mid / 1000.0;
        }
    }
    return (double)lat_max / 1000.0;
}

/* The latency fields of a result line: ,"lat_n":...,"lat_max_us":... */
static inline void lat_print_json(FILE *out) {
    fprintf(out,
            "\"lat_n\":%llu,\"lat_mean_us\":%.3f,\"lat_p50_us\":%.3f,\"lat_p90_us\":%.3f,"
            "\"lat_p99_us\":%.3f,\"lat_p999_us\":%.3f,\"lat_max_us\":%.3f",
            (unsigned long long)lat_n, lat_n ? lat_sum / (double)lat_n / 1000.0 : -1.0,
            lat_quantile_us(0.50), lat_quantile_us(0.90), lat_quantile_us(0.99),
            lat_quantile_us(0.999), lat_n ? (double)lat_max / 1000.0 : -1.0);
}

/* ---- targets -------------------------------------------------------------- */

/* Fill ``ss`` with host:port if host is a numeric loopback address
 * (127.0.0.0/8 or ::1): 1 on success, 0 for anything else.  These tools must
 * never load a remote host. */
static inline int loopback_addr(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len) {
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        if ((ntohl(a4->sin_addr.s_addr) >> 24) != 127) return 0;
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *len = sizeof *a4;
        return 1;
    }
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        if (!IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr)) return 0;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof *a6;
        return 1;
    }
    return 0;
}

/* ---- the process ---------------------------------------------------------- */

/* Run on ``cpu`` only (-1: leave as is).  0 on success. */
static inline int pin_cpu(int cpu) {
    if (cpu < 0) return 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set);
}

/* Make room for ``fds`` descriptors (the hard limit is the ceiling): 0 when
 * there is, else -1 with the limit in *limit. */
static inline int fd_room(long fds, unsigned long long *limit) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 0;
    if (rl.rlim_cur < (rlim_t)fds) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    *limit = (unsigned long long)rl.rlim_cur;
    return rl.rlim_cur < (rlim_t)fds ? -1 : 0;
}

#endif
