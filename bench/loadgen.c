/*
 * loadgen: a closed-loop HTTP/1.1 keep-alive load generator that reports latency percentiles
 * exactly as measured, with no coordinated-omission correction.
 *
 * Why it exists: wrk 4.1 always runs stats_correct() on its latency histogram before printing
 * (and before a Lua done() sees it). That inserts synthetic samples for requests "that would
 * have been sent" while one was late, which in a closed loop inflates p99 whenever the server
 * stalls (a GIL hand-off, a GC pause). Both views are useful; this program gives the raw one.
 *
 * Model: CONNECTIONS connections, one request in flight on each; a response is read to its end
 * (Content-Length only: every server under test sends it), its latency (first byte of the
 * request written -> last byte of the response read) goes into a preallocated array, and the
 * same pre-built request is sent again at once. Connections are made before the clock starts.
 * When the time is up no new request is sent and the ones in flight are drained (up to 60 s):
 * their latencies count, and the server is idle again at the end, so the runner's CPU reading
 * over this run holds whole requests only (CPU / (requests + drained)).
 *
 *   gcc -O2 -o loadgen bench/loadgen.c
 *   loadgen HOST PORT CONNECTIONS SECONDS REQUEST_FILE
 *
 * REQUEST_FILE holds one complete HTTP/1.1 request (head and body). Output, one JSON line:
 * requests and seconds until the deadline, requests_per_s, drained (completed after it), errors
 * (socket errors and reconnects), non_2xx, and p50, p90, p99, p999, max in milliseconds.  
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
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define HEAD_MAX 16384
#define SCRATCH (1 << 20)

typedef struct {
    int fd;
    int busy;            /* a request is out on this connection */
    size_t sent;         /* bytes of the request written so far */
    int want_out;        /* EPOLLOUT registered: the request did not fit in one write */
    int in_head;         /* still reading the response head */
    size_t head_len;
    size_t body_left;
    int status;
    uint64_t start_ns;
    char head[HEAD_MAX + 1];
} conn_t;

static const char *request;
static size_t request_len;
static struct sockaddr_in addr;
static int epfd;
static uint64_t *lat;
static size_t lat_n, lat_cap;
static uint64_t non_2xx, errors;
static int draining, in_flight;  /* after the deadline: no new requests; how many are still out */

static void die(const char *what) { perror(what); exit(2); }

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void record(uint64_t ns) {
    if (lat_n == lat_cap) {  /* rare: the estimate in main() was low */
        lat_cap *= 2;
        if (!(lat = realloc(lat, lat_cap * sizeof *lat))) die("realloc");
    }
    lat[lat_n++] = ns;
}

static void set_events(conn_t *c, int out) {
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl");
    c->want_out = out;
}

/* A blocking connect (loopback, before or between measurements), then non-blocking I/O. */
static void open_conn(conn_t *c) {
    int one = 1;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0) die("socket");
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
    c->want_out = 0;
}

/* Write what the socket takes; ask for EPOLLOUT when it is full. -1 on a socket error. */
static int write_more(conn_t *c) {
    while (c->sent < request_len) {
        ssize_t w = write(c->fd, request + c->sent, request_len - c->sent);
        if (w < 0) {
            if (errno == EAGAIN) { if (!c->want_out) set_events(c, 1); return 0; }
            return -1;
        }
        c->sent += (size_t)w;
    }
    if (c->want_out) set_events(c, 0);
    return 0;
}

static int send_request(conn_t *c) {
    c->busy = 1;
    c->start_ns = now_ns();
    c->sent = 0;
    c->in_head = 1;
    c->head_len = 0;
    return write_more(c);
}

/* Status and Content-Length from a complete head; -1 when either is missing. */
static int parse_head(conn_t *c) {
    c->head[c->head_len] = '\0';
    if (c->head_len < 12 || strncmp(c->head, "HTTP/1.", 7) != 0) return -1;
    c->status = atoi(c->head + 9);
    for (char *line = strstr(c->head, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
        if (strncasecmp(line + 2, "content-length:", 15) == 0) {
            c->body_left = strtoull(line + 17, NULL, 10);
            return 0;
        }
    }
    return -1;
}

/* Feed received bytes: 1 when the response is complete, 0 when more is needed, -1 on nonsense. */
static int consume(conn_t *c, const char *p, size_t n) {
    if (c->in_head) {
        size_t old = c->head_len, take = n < HEAD_MAX - old ? n : HEAD_MAX - old;
        size_t from = old > 3 ? old - 3 : 0;
        memcpy(c->head + old, p, take);
        c->head_len = old + take;
        char *end = memmem(c->head + from, c->head_len - from, "\r\n\r\n", 4);
        if (!end) return c->head_len == HEAD_MAX ? -1 : 0;
        c->head_len = (size_t)(end + 4 - c->head);
        size_t used = c->head_len - old;
        if (parse_head(c) < 0) return -1;
        c->in_head = 0;
        p += used;
        n -= used;
    }
    size_t take = n < c->body_left ? n : c->body_left;
    c->body_left -= take;
    if (c->body_left) return 0;
    return n == take ? 1 : -1;  /* bytes after the end: the server answered something unasked */
}

/* A broken connection counts as an error and is replaced, its request sent again; while
 * draining it is only closed (and an idle one closing then is no error). */
static void reconnect(conn_t *c) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->busy || !draining) errors++;
    if (draining) {
        in_flight -= c->busy;
        c->busy = 0;
        return;
    }
    open_conn(c);
    if (send_request(c) < 0) die("write after reconnect");
}

static void on_readable(conn_t *c, char *scratch) {
    for (;;) {
        ssize_t r = read(c->fd, scratch, SCRATCH);
        if (r < 0 && errno == EAGAIN) return;
        if (r <= 0) { reconnect(c); return; }
        int done = consume(c, scratch, (size_t)r);
        if (done < 0) { reconnect(c); return; }
        if (done == 1) {
            record(now_ns() - c->start_ns);
            if (c->status < 200 || c->status > 299) non_2xx++;
            c->busy = 0;
            if (draining) in_flight--;
            else if (send_request(c) < 0) reconnect(c);
            return;  /* one request in flight: nothing more can be waiting */
        }
    }
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st) < 0) die(path);
    char *buf = malloc((size_t)st.st_size);
    if (!buf || fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size) die("read request");
    fclose(f);
    *len = (size_t)st.st_size;
    return buf;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of the sorted samples, in milliseconds. */
static double pct(double q) {
    if (!lat_n) return 0.0;
    size_t rank = (size_t)(q * (double)lat_n + 0.999999999);
    return (double)lat[(rank ? rank : 1) - 1] / 1e6;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s HOST PORT CONNECTIONS SECONDS REQUEST_FILE\n", argv[0]);
        return 2;
    }
    int nconn = atoi(argv[3]);
    double seconds = atof(argv[4]);
    if (nconn < 1 || seconds <= 0) { fprintf(stderr, "bad CONNECTIONS or SECONDS\n"); return 2; }
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) { fprintf(stderr, "HOST must be IPv4\n"); return 2; }
    request = read_file(argv[5], &request_len);

    lat_cap = (size_t)(seconds * 300000) + 1024;  /* enough for 300k req/s; grows if not */
    conn_t *conns = calloc((size_t)nconn, sizeof *conns);
    char *scratch = malloc(SCRATCH);
    lat = malloc(lat_cap * sizeof *lat);
    struct epoll_event *events = calloc((size_t)nconn, sizeof *events);
    if (!conns || !scratch || !lat || !events) die("malloc");
    if ((epfd = epoll_create1(0)) < 0) die("epoll_create1");
    for (int i = 0; i < nconn; i++) open_conn(&conns[i]);

    uint64_t start = now_ns(), deadline = start + (uint64_t)(seconds * 1e9), t = start;
    uint64_t drain_deadline = deadline + 60000000000u;
    size_t counted = 0;
    for (int i = 0; i < nconn; i++)
        if (send_request(&conns[i]) < 0) reconnect(&conns[i]);
    while (!draining || (in_flight > 0 && t < drain_deadline)) {
        if (!draining && (t = now_ns()) >= deadline) {
            draining = 1;
            in_flight = nconn;
            counted = lat_n;
        }
        int n = epoll_wait(epfd, events, nconn, 50);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            if ((events[i].events & EPOLLOUT) && write_more(c) < 0) { reconnect(c); continue; }
            if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c, scratch);
        }
        if (draining) t = now_ns();
    }
    double elapsed = (double)(deadline - start) / 1e9;
    qsort(lat, lat_n, sizeof *lat, cmp_u64);
    printf("{\"requests\": %zu, \"seconds\": %.4f, \"requests_per_s\": %.1f, \"drained\": %zu, \"errors\": %llu, "
           "\"non_2xx\": %llu, \"p50\": %.4f, \"p90\": %.4f, \"p99\": %.4f, \"p999\": %.4f, \"max\": %.4f}\n",
           counted, elapsed, (double)counted / elapsed, lat_n - counted, (unsigned long long)errors,
           (unsigned long long)non_2xx,
           pct(0.50), pct(0.90), pct(0.99), pct(0.999), lat_n ? (double)lat[lat_n - 1] / 1e6 : 0.0);
    return 0;
}
