/*
 * inpod-fwd: the minimal native forwarder of `inpod bench`'s capture-only rows.
 *
 * It stands in for the proxy inside one pod netns: listens on the proxy's capture ports on [::],
 * dual-stack (IPV6_V6ONLY off, as ztunnel's listeners: the eBPF backend takes an inbound listener
 * only when it accepts IPv4, and steers IPv6 SYNs to it too), and for each accepted connection
 * reads the original destination by the family on the wire: getsockopt(SOL_IP, SO_ORIGINAL_DST)
 * for IPv4 (an IPv4-mapped peer), getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST) for IPv6, or
 * getsockname() when that says ENOENT, as under sk_lookup steering. It connects there from a
 * socket of that family with the proxy's SO_MARK (so capture leaves the connection alone) and relays bytes
 * both ways. One thread, level-triggered epoll, non-blocking sockets, a 64 KiB buffer per
 * direction; a FIN in one direction is passed on (shutdown(SHUT_WR)) once that direction's
 * buffer is drained, and the pair is closed when both directions are done. The same binary runs
 * under both backends, so a difference between the rows is the kernel's redirection cost.
 *
 * Usage: inpod-fwd MARK PORT...   (ts/bench/env.ts passes Istio's, from ts/istio.ts); prints
 *        "ready" once listening.
 * Build: gcc -O2 -o build/inpod-fwd bench/fwd.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80
#endif
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif
#define BUF 65536
#define MAX_LISTEN 8

enum { DOWN = 0, UP = 1 };

struct conn;
struct end {
	int kind; /* 0 = listener, 1 = connection end */
	int fd;
	struct conn *c;
	int side;
	uint32_t events; /* what is registered with epoll now */
};

/* dir[i] carries bytes read from end[i] to end[!i]. */
struct dir {
	char buf[BUF];
	size_t off, len;
	int eof;  /* read returned 0 */
	int shut; /* FIN passed on */
};

struct conn {
	struct end end[2];
	struct dir dir[2];
	int connecting;
	int dead;          /* closed; freed after the current epoll batch */
	struct conn *next; /* on the list of pairs to free */
};

static int ep;
static struct conn *graveyard;
static int listen_ports[MAX_LISTEN];
static int n_listen;
static int proxy_mark; /* SO_MARK of the upstream sockets: capture leaves them alone */

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void set_events(struct end *e, uint32_t want)
{
	if (e->fd < 0 || e->events == want)
		return;
	struct epoll_event ev = { .events = want, .data.ptr = e };
	if (epoll_ctl(ep, EPOLL_CTL_MOD, e->fd, &ev) < 0)
		die("epoll_ctl mod");
	e->events = want;
}

static void conn_close(struct conn *c)
{
	for (int i = 0; i < 2; i++)
		if (c->end[i].fd >= 0) {
			epoll_ctl(ep, EPOLL_CTL_DEL, c->end[i].fd, NULL);
			close(c->end[i].fd);
			c->end[i].fd = -1;
		}
	/* The other end may still have an event in this epoll batch: free after it. */
	c->dead = 1;
	c->next = graveyard;
	graveyard = c;
}

/* Interest for one end: read while its outgoing buffer has room, write while the other has data. */
static void update(struct conn *c)
{
	if (c->connecting) {
		set_events(&c->end[UP], EPOLLOUT);
		set_events(&c->end[DOWN], 0);
		return;
	}
	for (int i = 0; i < 2; i++) {
		struct dir *out = &c->dir[i], *in = &c->dir[!i];
		uint32_t want = 0;
		if (!out->eof && out->len == 0)
			want |= EPOLLIN;
		if (in->len > 0)
			want |= EPOLLOUT;
		set_events(&c->end[i], want);
	}
}

/* Moves bytes from end[from] to end[!from] until the kernel says wait. Returns -1 on error. */
static int pump(struct conn *c, int from)
{
	struct dir *d = &c->dir[from];
	int rfd = c->end[from].fd, wfd = c->end[!from].fd;
	for (;;) {
		if (d->len > 0) {
			ssize_t n = send(wfd, d->buf + d->off, d->len, MSG_NOSIGNAL);
			if (n < 0)
				return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
			d->off += n;
			d->len -= n;
			if (d->len > 0)
				return 0;
			d->off = 0;
		}
		if (d->eof)
			break;
		ssize_t n = recv(rfd, d->buf, BUF, 0);
		if (n < 0)
			return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
		if (n == 0) {
			d->eof = 1;
			break;
		}
		d->len = n;
	}
	if (d->eof && d->len == 0 && !d->shut) {
		shutdown(wfd, SHUT_WR);
		d->shut = 1;
	}
	return 0;
}

static int add_fd(int fd, struct end *e, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.ptr = e };
	e->events = events;
	return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

static int is_own_port(int port)
{
	for (int i = 0; i < n_listen; i++)
		if (listen_ports[i] == port)
			return 1;
	return 0;
}

/*
 * The original destination of a connection accepted from `peer`, as an IPv6 socket address (IPv4
 * as ::ffff:a.b.c.d): conntrack's (or the eBPF backend's) answer at the level of the family on the
 * wire, else the local address (steered without NAT: ENOENT). Returns -1 when there is none.
 * One getsockopt per connection, as the IPv4-only forwarder made before.
 */
static int original_dst(int fd, const struct sockaddr_in6 *peer, struct sockaddr_in6 *out)
{
	socklen_t len;
	if (IN6_IS_ADDR_V4MAPPED(&peer->sin6_addr)) {
		struct sockaddr_in v4;
		len = sizeof(v4);
		if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &v4, &len) == 0) {
			*out = (struct sockaddr_in6){ .sin6_family = AF_INET6, .sin6_port = v4.sin_port };
			out->sin6_addr.s6_addr[10] = out->sin6_addr.s6_addr[11] = 0xff;
			memcpy(&out->sin6_addr.s6_addr[12], &v4.sin_addr, 4);
			return 0;
		}
	} else {
		len = sizeof(*out);
		if (getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, out, &len) == 0)
			return 0;
	}
	len = sizeof(*out);
	if (errno != ENOENT || getsockname(fd, (struct sockaddr *)out, &len) < 0)
		return -1;
	return 0;
}

static void on_accept(int lfd)
{
	for (;;) {
		struct sockaddr_in6 peer;
		socklen_t plen = sizeof(peer);
		int fd = accept4(lfd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
				perror("accept4");
			return;
		}
		union {
			struct sockaddr sa;
			struct sockaddr_in v4;
			struct sockaddr_in6 v6;
		} dst;
		if (original_dst(fd, &peer, &dst.v6) < 0) {
			close(fd);
			continue;
		}
		/* A connection addressed to a listener of ours was not captured: refuse, never loop. */
		if (is_own_port(ntohs(dst.v6.sin6_port))) {
			close(fd);
			continue;
		}
		/* An IPv4-mapped destination (an IPv4 connection of the dual-stack listener): plain IPv4. */
		socklen_t dlen = sizeof(dst.v6);
		if (IN6_IS_ADDR_V4MAPPED(&dst.v6.sin6_addr)) {
			struct sockaddr_in v4 = { .sin_family = AF_INET, .sin_port = dst.v6.sin6_port };
			memcpy(&v4.sin_addr, &dst.v6.sin6_addr.s6_addr[12], 4);
			dst.v4 = v4;
			dlen = sizeof(dst.v4);
		}
		int up = socket(dst.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		int mark = proxy_mark, one = 1;
		if (up < 0 || setsockopt(up, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) < 0) {
			perror("upstream socket");
			close(fd);
			if (up >= 0)
				close(up);
			continue;
		}
		setsockopt(up, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		int r = connect(up, &dst.sa, dlen);
		if (r < 0 && errno != EINPROGRESS) {
			close(fd);
			close(up);
			continue;
		}
		struct conn *c = calloc(1, sizeof(*c));
		if (!c)
			die("calloc");
		c->end[DOWN] = (struct end){ .kind = 1, .fd = fd, .c = c, .side = DOWN };
		c->end[UP] = (struct end){ .kind = 1, .fd = up, .c = c, .side = UP };
		c->connecting = 1;
		if (add_fd(fd, &c->end[DOWN], 0) < 0 || add_fd(up, &c->end[UP], EPOLLOUT) < 0)
			die("epoll_ctl add");
	}
}

static void on_event(struct end *e, uint32_t ev)
{
	struct conn *c = e->c;
	if (c->dead)
		return;
	if (c->connecting) {
		if (e->side == DOWN) {
			/* the client went away before the upstream connected */
			if (ev & (EPOLLERR | EPOLLHUP))
				conn_close(c);
			return;
		}
		int err = 0;
		socklen_t len = sizeof(err);
		getsockopt(e->fd, SOL_SOCKET, SO_ERROR, &err, &len);
		if (err) {
			conn_close(c);
			return;
		}
		c->connecting = 0;
		if (pump(c, DOWN) < 0) {
			conn_close(c);
			return;
		}
		update(c);
		return;
	}
	int side = e->side;
	/* Readable (or hung up): move its bytes on. Writable: drain what waits for it. */
	if ((ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) && pump(c, side) < 0) {
		conn_close(c);
		return;
	}
	if ((ev & (EPOLLOUT | EPOLLERR)) && pump(c, !side) < 0) {
		conn_close(c);
		return;
	}
	if (c->dir[0].shut && c->dir[1].shut) {
		conn_close(c);
		return;
	}
	update(c);
}

static int listen_on(int port)
{
	int fd = socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1, zero = 0;
	if (fd < 0)
		die("socket");
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero)) < 0)
		die("IPV6_V6ONLY");
	struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = IN6ADDR_ANY_INIT };
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
		die("bind");
	if (listen(fd, 4096) < 0)
		die("listen");
	return fd;
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0)
		die("epoll_create1");
	static struct end listeners[MAX_LISTEN];
	if (argc < 3) {
		fprintf(stderr, "usage: inpod-fwd MARK PORT...\n");
		return 2;
	}
	proxy_mark = (int)strtoul(argv[1], NULL, 0);
	for (int i = 2; i < argc && n_listen < MAX_LISTEN; i++)
		listen_ports[n_listen++] = atoi(argv[i]);
	for (int i = 0; i < n_listen; i++) {
		listeners[i] = (struct end){ .kind = 0, .fd = listen_on(listen_ports[i]) };
		if (add_fd(listeners[i].fd, &listeners[i], EPOLLIN) < 0)
			die("epoll_ctl add listener");
	}
	printf("ready\n");
	fflush(stdout);
	struct epoll_event evs[256];
	for (;;) {
		int n = epoll_wait(ep, evs, 256, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("epoll_wait");
		}
		for (int i = 0; i < n; i++) {
			struct end *e = evs[i].data.ptr;
			if (e->kind == 0)
				on_accept(e->fd);
			else
				on_event(e, evs[i].events);
		}
		while (graveyard) {
			struct conn *c = graveyard;
			graveyard = c->next;
			free(c);
		}
	}
}
