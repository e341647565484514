/*
 * inpod-connrate: the connection-rate client of `inpod bench`. Each of THREADS threads loops:
 * new TCP connection, one HTTP/1.0 request, read the answer to EOF, close; for SECONDS seconds.
 * Prints one JSON line: {"conns":N,"errors":E,"seconds":S,"p50_us":..,"p99_us":..}. A request
 * stalled for 10 s (connect, send or receive) is an error.
 *
 * Usage: inpod-connrate HOST PORT SECONDS THREADS [PATH]   (HOST: an IPv4 or IPv6 address)
 * Build: gcc -O2 -pthread -o build/inpod-connrate bench/connrate.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "client.h"

#define MAX_THREADS 64
#define HIST 100000 /* latency histogram in 10 us buckets, up to 1 s */
#define STALL_S 10   /* a connect, send or recv blocked this long fails the request */

static struct sockaddr_storage dst;
static socklen_t dst_len;
static char request[256];
static size_t request_len;
static double deadline;
static unsigned long hist[HIST + 1];
static pthread_mutex_t hist_lock = PTHREAD_MUTEX_INITIALIZER;

struct worker {
	pthread_t t;
	unsigned long conns, errors;
	unsigned long hist[HIST + 1];
};

static int one_request(void)
{
	char buf[16384];
	int fd = socket(dst.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	/* A connection that stalls (a SYN or a FIN lost for good) counts as an error after
	 * STALL_S instead of holding its thread, and the whole run, past the deadline. */
	struct timeval stall = { .tv_sec = STALL_S };
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &stall, sizeof(stall));
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &stall, sizeof(stall));
	int ok = connect(fd, (struct sockaddr *)&dst, dst_len) == 0 &&
		 send(fd, request, request_len, MSG_NOSIGNAL) == (ssize_t)request_len;
	size_t got = 0;
	while (ok) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			ok = n == 0 && got > 0;
			break;
		}
		got += n;
	}
	close(fd);
	return ok ? 0 : -1;
}

static void *run(void *arg)
{
	struct worker *w = arg;
	for (;;) {
		double t0 = now();
		if (t0 >= deadline)
			break;
		if (one_request() == 0) {
			w->conns++;
			long b = (long)((now() - t0) * 1e5);
			w->hist[b > HIST ? HIST : b]++;
		} else {
			w->errors++;
			usleep(1000); /* do not spin on a refused or exhausted address */
		}
	}
	return NULL;
}

static double pct(unsigned long total, double p)
{
	unsigned long want = (unsigned long)(total * p), seen = 0;
	for (int i = 0; i <= HIST; i++) {
		seen += hist[i];
		if (seen > want)
			return i * 10.0 + 5;
	}
	return HIST * 10.0;
}

int main(int argc, char **argv)
{
	if (argc < 5) {
		fprintf(stderr, "usage: %s HOST PORT SECONDS THREADS [PATH]\n", argv[0]);
		return 2;
	}
	if (parse_dst(argv[1], argv[2], &dst, &dst_len) != 0)
		return 2;
	double seconds = atof(argv[3]);
	int threads = atoi(argv[4]);
	if (threads < 1 || threads > MAX_THREADS)
		threads = 8;
	request_len = http_get(request, sizeof(request), "1.0", argc > 5 ? argv[5] : "/", argv[1]);
	static struct worker ws[MAX_THREADS];
	double start = now();
	deadline = start + seconds;
	for (int i = 0; i < threads; i++)
		pthread_create(&ws[i].t, NULL, run, &ws[i]);
	unsigned long conns = 0, errors = 0;
	for (int i = 0; i < threads; i++) {
		pthread_join(ws[i].t, NULL);
		conns += ws[i].conns;
		errors += ws[i].errors;
		pthread_mutex_lock(&hist_lock);
		for (int j = 0; j <= HIST; j++)
			hist[j] += ws[i].hist[j];
		pthread_mutex_unlock(&hist_lock);
	}
	double elapsed = now() - start;
	printf("{\"conns\":%lu,\"errors\":%lu,\"seconds\":%.3f,\"p50_us\":%.0f,\"p99_us\":%.0f}\n", conns, errors, elapsed,
	       pct(conns, 0.5), pct(conns, 0.99));
	return 0;
}
