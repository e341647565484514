/*
 * inpod-latency: the fixed-rate latency client of `inpod bench`, as Istio measures its data plane
 * (fortio at 1,000 requests/s, 1 KiB, HTTP/1.1 over kept-alive connections): latency is what a
 * request takes when the path is not saturated. wrk (the requests/s row) keeps every connection
 * busy, so its percentiles are queueing behind the host's CPUs (about connections / requests/s),
 * not the time the path adds.
 *
 * RATE requests/s are spread evenly over CONNS kept-alive connections for SECONDS seconds: request
 * i is due at start + i/RATE on connection i % CONNS and is sent when it is due, or as soon as
 * that connection's previous answer is in (one request in flight per connection, no pipelining).
 * A request's latency runs from its send to the last byte of its answer, as fortio's. Requests
 * sent late because their connection was still busy are counted ("late"): many of them mean the
 * path could not keep up with RATE and the percentiles are not the unloaded latency.
 * Prints one JSON line:
 *   {"requests":N,"errors":E,"late":L,"seconds":S,"p50_us":..,"p90_us":..,"p99_us":..}
 * A connection reset, closed or stalled for 10 s is an error and is opened again.
 *
 * Usage: inpod-latency HOST PORT SECONDS RATE CONNS [PATH]   (HOST: an IPv4 or IPv6 address)
 * Build: gcc -O2 -o build/inpod-latency bench/latency.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "client.h"

#define MAX_CONNS 256
#define HIST 1000000 /* latency histogram in 1 us buckets, up to 1 s */
#define STALL_S 10.0
#define BUF 65536

struct conn {
	int fd;
	int busy;           /* a request is in flight */
	unsigned long due;  /* requests due on it and not sent yet */
	double sent_at;
	size_t got;         /* bytes of the answer read so far */
	char buf[BUF];
};

static struct sockaddr_storage dst;
static socklen_t dst_len;
static char request[256];
static size_t request_len;
static struct conn conns[MAX_CONNS];
static unsigned long hist[HIST + 1];
static unsigned long requests, errors, late;
static int epfd;

static int dial(struct conn *c)
{
	c->fd = socket(dst.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return -1;
	int one = 1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(c->fd, (struct sockaddr *)&dst, dst_len) != 0) {
		close(c->fd);
		c->fd = -1;
		return -1;
	}
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
	epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
	return 0;
}

/* The connection failed: the request in flight is an error, the connection is opened again. */
static void fail(struct conn *c)
{
	errors++;
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->busy = 0;
	c->got = 0;
	if (dial(c) != 0)
		c->due = 0; /* nothing to send on; the next due request tries again */
}

static void send_next(struct conn *c, double t)
{
	while (c->due > 0 && !c->busy) {
		if (c->fd < 0 && dial(c) != 0) {
			errors += c->due;
			c->due = 0;
			return;
		}
		c->due--;
		c->sent_at = t;
		c->got = 0;
		if (send(c->fd, request, request_len, MSG_NOSIGNAL) != (ssize_t)request_len) {
			fail(c);
			continue;
		}
		c->busy = 1;
	}
}

/* The answer is complete once its headers and Content-Length bytes of body are in. */
static int complete(struct conn *c)
{
	char *end = memmem(c->buf, c->got, "\r\n\r\n", 4);
	if (!end)
		return 0;
	size_t head = end - c->buf + 4, body = 0;
	for (char *p = c->buf; p < end; p++) {
		if ((p == c->buf || p[-1] == '\n') && strncasecmp(p, "content-length:", 15) == 0) {
			body = strtoul(p + 15, NULL, 10);
			break;
		}
	}
	return c->got >= head + body;
}

static void readable(struct conn *c)
{
	ssize_t n = recv(c->fd, c->buf + c->got, BUF - c->got, 0);
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n <= 0 || !c->busy) {
		if (c->busy)
			fail(c);
		else { /* the server closed an idle kept-alive connection: open it again when needed */
			close(c->fd);
			c->fd = -1;
		}
		return;
	}
	c->got += n;
	if (!complete(c)) {
		if (c->got == BUF)
			fail(c);
		return;
	}
	double t = now();
	long us = (long)((t - c->sent_at) * 1e6);
	hist[us > HIST ? HIST : us]++;
	requests++;
	c->busy = 0;
	send_next(c, t);
}

static double pct(unsigned long total, double p)
{
	unsigned long want = (unsigned long)(total * p), seen = 0;
	for (long i = 0; i <= HIST; i++) {
		seen += hist[i];
		if (seen > want)
			return i + 0.5;
	}
	return HIST;
}

int main(int argc, char **argv)
{
	if (argc < 6) {
		fprintf(stderr, "usage: %s HOST PORT SECONDS RATE CONNS [PATH]\n", argv[0]);
		return 2;
	}
	if (parse_dst(argv[1], argv[2], &dst, &dst_len) != 0)
		return 2;
	double seconds = atof(argv[3]), rate = atof(argv[4]);
	int n = atoi(argv[5]);
	if (seconds <= 0 || rate <= 0 || n < 1 || n > MAX_CONNS) {
		fprintf(stderr, "want SECONDS > 0, RATE > 0 and 1 <= CONNS <= %d\n", MAX_CONNS);
		return 2;
	}
	request_len = http_get(request, sizeof(request), "1.1", argc > 6 ? argv[6] : "/", argv[1]);
	epfd = epoll_create1(EPOLL_CLOEXEC);
	for (int i = 0; i < n; i++)
		if (dial(&conns[i]) != 0) {
			fprintf(stderr, "connect %s port %s: %s\n", argv[1], argv[2], strerror(errno));
			return 1;
		}
	/* one tick per due request: the timer fires at each request's due time */
	int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	long period_ns = (long)(1e9 / rate);
	struct itimerspec its = { .it_interval = { period_ns / 1000000000L, period_ns % 1000000000L },
				  .it_value = { 0, 1 } };
	timerfd_settime(tfd, 0, &its, NULL);
	struct epoll_event tev = { .events = EPOLLIN, .data.ptr = NULL };
	epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &tev);
	double start = now(), end = start + seconds;
	unsigned long due = 0, total = (unsigned long)(seconds * rate);
	struct epoll_event evs[64];
	for (;;) {
		double t = now();
		int busy = 0;
		for (int i = 0; i < n; i++) {
			if (conns[i].busy && t - conns[i].sent_at > STALL_S)
				fail(&conns[i]);
			busy |= conns[i].busy || conns[i].due;
		}
		if (due >= total && !busy)
			break;
		if (t > end + STALL_S)
			break;
		int k = epoll_wait(epfd, evs, 64, 100);
		t = now();
		for (int j = 0; j < k; j++) {
			struct conn *c = evs[j].data.ptr;
			if (!c) {
				unsigned long ticks;
				if (read(tfd, &ticks, sizeof(ticks)) != sizeof(ticks))
					continue;
				for (; ticks > 0 && due < total; ticks--, due++) {
					struct conn *d = &conns[due % n];
					if (d->busy || d->due)
						late++;
					d->due++;
					send_next(d, t);
				}
			} else if (c->fd >= 0) {
				readable(c);
			}
		}
	}
	double elapsed = now() - start;
	printf("{\"requests\":%lu,\"errors\":%lu,\"late\":%lu,\"seconds\":%.3f,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f}\n",
	       requests, errors, late, elapsed, pct(requests, 0.5), pct(requests, 0.9), pct(requests, 0.99));
	return 0;
}
