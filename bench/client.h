/*
 * What the bench's C load generators (connrate.c, latency.c) share: the server's address from the
 * command line, the one HTTP GET they send, and the clock they time it with.
 */
#pragma once
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

/* HOST (an IPv4 or IPv6 address) and PORT into `dst`; 0, or -1 after saying why on stderr. */
static int parse_dst(const char *host, const char *port, struct sockaddr_storage *dst, socklen_t *len)
{
	struct sockaddr_in *d4 = (struct sockaddr_in *)dst;
	struct sockaddr_in6 *d6 = (struct sockaddr_in6 *)dst;
	int v6 = strchr(host, ':') != NULL;
	memset(dst, 0, sizeof(*dst));
	if (v6) {
		d6->sin6_family = AF_INET6;
		d6->sin6_port = htons(atoi(port));
		*len = sizeof(*d6);
	} else {
		d4->sin_family = AF_INET;
		d4->sin_port = htons(atoi(port));
		*len = sizeof(*d4);
	}
	if (inet_pton(v6 ? AF_INET6 : AF_INET, host, v6 ? (void *)&d6->sin6_addr : (void *)&d4->sin_addr) != 1) {
		fprintf(stderr, "bad address %s\n", host);
		return -1;
	}
	return 0;
}

/* GET `path` of HTTP `version` ("1.0", "1.1") from `host` (an IPv6 literal in brackets). */
static size_t http_get(char *buf, size_t size, const char *version, const char *path, const char *host)
{
	int v6 = strchr(host, ':') != NULL;
	return snprintf(buf, size, v6 ? "GET %s HTTP/%s\r\nHost: [%s]\r\n\r\n" : "GET %s HTTP/%s\r\nHost: %s\r\n\r\n", path, version, host);
}

/* Seconds on the monotonic clock. */
static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}
