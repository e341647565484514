/*
 * inpod-cni: the chained CNI plugin (spec 1.0.0) the inpod agent copies into the host's CNI bin
 * directory. Statically linked (glibc and jansson), so it runs on the host with nothing from the
 * agent's image and nothing from the host's libraries, as istio-cni's Go binary does.
 *
 * It decides nothing about the mesh. ADD checks its input (input.h), then looks the pod up in the
 * mesh view, a file the agent keeps current (ts/agent/meshview.ts) with ts/agent/policy.ts's
 * verdicts: a pod outside the mesh gets prevResult back without the agent being asked, so such
 * pods start while the agent is down or upgrading (istio's cni/pkg/plugin/plugin.go CmdAdd does
 * the same with the API server). A pod in the mesh, or one the view cannot rule out, is sent to
 * the agent, and ADD returns only once the agent has captured it and the proxy serves it; if the
 * agent cannot be reached that is a CNI error and the runtime retries (fail closed). DEL always
 * succeeds, bounded in time. Every malformed input is a CNI error result with the spec's code.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "input.h"

#define STDIN_DEADLINE_MS 10000   /* a runtime writes the configuration and closes stdin at once */
#define DEL_TIMEOUT_MS 10000      /* a pod's teardown waits for the agent at most this long */
#define MAX_ANSWER_BYTES (64 * 1024)
#define MAX_VIEW_BYTES (64 << 20)
#define MESH_VIEW_VERSION 1       /* ts/agent/meshview.ts MESH_VIEW_VERSION */

static long long now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000LL + t.tv_nsec / 1000000;
}

/* Waits for `events` on fd until the deadline: 1 ready (or an error the next call reports), 0 timed out. */
static int wait_fd(int fd, short events, long long deadline)
{
	for (;;) {
		long long left = deadline - now_ms();
		if (left <= 0) return 0;
		struct pollfd p = {.fd = fd, .events = events};
		int r = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
		if (r != 0 && !(r < 0 && errno == EINTR)) return 1;
		if (r == 0) return 0;
	}
}

/* A JSON string of s; bytes that are not UTF-8 become "?" (jansson refuses them, and so would a reader). */
static json_t *text(const char *s)
{
	json_t *j = json_string(s);
	if (j) return j;
	char *c = strdup(s);
	for (unsigned char *p = (unsigned char *)c; *p; p++) if (*p >= 0x80) *p = '?';
	j = json_string(c);
	free(c);
	return j;
}

static void put(const char *s)
{
	for (size_t n = strlen(s), off = 0; off < n;) {
		ssize_t w = write(1, s + off, n - off);
		if (w < 0 && errno == EINTR) continue;
		if (w <= 0) return; /* nobody reads: nothing more to do */
		off += (size_t)w;
	}
}

static int print_json(json_t *j, int code)
{
	char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
	put(s ? s : "{\"cniVersion\":\"1.0.0\",\"code\":100,\"msg\":\"inpod-cni: internal error: out of memory\"}");
	free(s);
	json_decref(j);
	return code;
}

/* The CNI error result of `failed`, exit 1. */
static int error_out(const char *version)
{
	json_t *e = json_object();
	json_object_set_new(e, "cniVersion", json_string(version));
	json_object_set_new(e, "code", json_integer(failed.code));
	json_object_set_new(e, "msg", text(failed.msg));
	if (failed.details[0]) json_object_set_new(e, "details", text(failed.details));
	return print_json(e, 1);
}

/* prevResult, unchanged (given the configuration's cniVersion if it has none), exit 0. */
static int pass_through(const struct netconf *c)
{
	if (json_object_get(c->prev, "cniVersion")) return print_json(json_incref(c->prev), 0);
	json_t *r = json_object();
	json_object_set_new(r, "cniVersion", json_string(c->version));
	json_object_update(r, c->prev);
	return print_json(r, 0);
}

/* All of stdin, at most MAX_STDIN_BYTES, within STDIN_DEADLINE_MS. Fails with 5 or 6. */
static int read_stdin(char **out, size_t *n)
{
	char *buf = malloc(MAX_STDIN_BYTES + 1);
	size_t got = 0;
	long long deadline = now_ms() + STDIN_DEADLINE_MS;
	if (!buf) return fail(CNI_ERR_INTERNAL, NULL, "inpod-cni: internal error: out of memory");
	for (;;) {
		if (!wait_fd(0, POLLIN, deadline))
			return fail(CNI_ERR_IO, "the runtime writes the configuration to stdin and closes it", "inpod-cni: no network configuration on stdin within %d s", STDIN_DEADLINE_MS / 1000);
		ssize_t r = read(0, buf + got, MAX_STDIN_BYTES + 1 - got);
		if (r == 0) break;
		if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
		if (r < 0) return fail(CNI_ERR_IO, NULL, "inpod-cni: cannot read stdin: %s", strerror(errno));
		got += (size_t)r;
		if (got > MAX_STDIN_BYTES) /* stop reading: the rest is not needed to refuse it */
			return fail(CNI_ERR_DECODE, "a real configuration is a few KiB", "inpod-cni: the network configuration on stdin is larger than %d bytes", MAX_STDIN_BYTES);
	}
	*out = buf;
	*n = got;
	return 0;
}

/* The mesh view at path, checked for its version; NULL with `why` said when it cannot be used. */
static json_t *load_view(const char *path, char *why, size_t n)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		if (errno == ENOENT) snprintf(why, n, "there is no mesh view at %s yet (the agent writes it once it has listed the cluster)", path);
		else snprintf(why, n, "the mesh view %s cannot be read: %s", path, strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > MAX_VIEW_BYTES) {
		snprintf(why, n, "the mesh view %s is not a regular file of at most %d bytes", path, MAX_VIEW_BYTES);
		close(fd);
		return NULL;
	}
	json_error_t err;
	json_t *v = json_loadfd(fd, 0, &err);
	close(fd);
	if (!v) {
		snprintf(why, n, "the mesh view %s is not valid JSON (%s)", path, err.text);
		return NULL;
	}
	json_t *version = json_object_get(v, "version");
	if (json_integer_value(version) != MESH_VIEW_VERSION || !json_is_object(json_object_get(v, "namespaces")) || !json_is_object(json_object_get(v, "pods"))) {
		snprintf(why, n, "the mesh view %s is not of version %d (written by another inpod version?)", path, MESH_VIEW_VERSION);
		json_decref(v);
		return NULL;
	}
	return v;
}

enum lookup { PASS, ASK };

/*
 * Whether the agent must hear of this pod. The rule (ARCHITECTURE.md, "CNI"), in order:
 * a namespace of excludeNamespaces never concerns the mesh (no file needed, so kube-system
 * starts on a node whose agent never ran); without a usable view every other pod is asked about
 * (fail closed: a new node, a reboot that emptied /var/run, a view of another version); the
 * pod's own verdict when the view has this pod (same uid); else its namespace's verdict; a
 * namespace the view does not know (created since the agent last wrote it) is asked about.
 * `why` says which rule answered.
 */
static enum lookup mesh_lookup(const struct netconf *c, const struct pod *p, char *why, size_t n)
{
	if (excluded(c, p->ns)) {
		snprintf(why, n, "namespace %s is excluded from the mesh (excludeNamespaces)", p->ns);
		return PASS;
	}
	json_t *view = load_view(c->mesh_view, why, n);
	if (!view) return ASK;
	char key[sizeof(p->ns) + sizeof(p->name) + 1];
	snprintf(key, sizeof(key), "%s/%s", p->ns, p->name);
	json_t *pod = json_object_get(json_object_get(view, "pods"), key);
	json_t *uid = json_object_get(pod, "uid"), *mesh = json_object_get(pod, "mesh");
	enum lookup r;
	if (json_is_boolean(mesh) && (!p->uid[0] || (json_is_string(uid) && !strcmp(json_string_value(uid), p->uid)))) {
		r = json_is_true(mesh) ? ASK : PASS;
		snprintf(why, n, "the mesh view %s has pod %s %s the mesh", c->mesh_view, key, r == ASK ? "in" : "outside");
	} else if (json_is_boolean(mesh = json_object_get(json_object_get(view, "namespaces"), p->ns))) {
		r = json_is_true(mesh) ? ASK : PASS;
		snprintf(why, n, "the mesh view %s has namespace %s %s the mesh", c->mesh_view, p->ns, r == ASK ? "in" : "outside");
	} else {
		r = ASK;
		snprintf(why, n, "namespace %s is not in the mesh view %s yet", p->ns, c->mesh_view);
	}
	json_decref(view);
	return r;
}

/*
 * An HTTP/1.1 answer in buf[0..n) (NUL-terminated): 1 complete (status and body set), 0
 * incomplete, -1 not HTTP or cut short (eof). The body is de-chunked into `body` (room for n bytes).
 */
static int http_answer(const char *buf, size_t n, int eof, int *status, char *body, size_t *blen)
{
	const char *end = memmem(buf, n, "\r\n\r\n", 4);
	if (!end) return eof ? -1 : 0;
	if (sscanf(buf, "HTTP/1.%*d %d", status) != 1) return -1;
	long long clen = -1;
	int chunked = 0;
	for (const char *l = strstr(buf, "\r\n") + 2; l < end; l = strstr(l, "\r\n") + 2) {
		if (!strncasecmp(l, "content-length:", 15)) clen = strtoll(l + 15, NULL, 10);
		if (!strncasecmp(l, "transfer-encoding:", 18) && memmem(l, strstr(l, "\r\n") - l, "chunked", 7)) chunked = 1;
	}
	const char *b = end + 4, *lim = buf + n;
	*blen = 0;
	if (chunked) {
		for (;;) {
			const char *eol = memmem(b, lim - b, "\r\n", 2);
			if (!eol) return eof ? -1 : 0;
			size_t size = strtoul(b, NULL, 16);
			if (size == 0) return 1;
			if (size > MAX_ANSWER_BYTES) return -1;
			if ((size_t)(lim - eol - 2) < size + 2) return eof ? -1 : 0;
			memcpy(body + *blen, eol + 2, size);
			*blen += size;
			b = eol + 2 + size + 2;
		}
	}
	if (clen >= 0 && lim - b >= clen) {
		memcpy(body, b, (size_t)clen);
		*blen = (size_t)clen;
		return 1;
	}
	if (clen >= 0 || !eof) return eof ? -1 : 0;
	memcpy(body, b, (size_t)(lim - b)); /* neither length nor chunks: the body ends with the connection */
	*blen = (size_t)(lim - b);
	return 1;
}

/* What the agent said when it refused: its JSON {error}, else its text, else the status. */
static void refusal(int status, const char *body, size_t blen, char *err, size_t errn)
{
	json_t *j = json_loadb(body, blen, JSON_DECODE_ANY, NULL);
	const char *e = json_string_value(json_object_get(j, "error"));
	if (e) snprintf(err, errn, "%s", e);
	else if (!j && blen) snprintf(err, errn, "%.*s", (int)(blen < 500 ? blen : 500), body);
	else snprintf(err, errn, "agent answered %d", status);
	json_decref(j);
}

/*
 * Sends one event to the agent: HTTP/1.1 POST on its unix socket (ts/agent/cniserver.ts, as
 * istio-cni's plugin posts to its agent's pluginevent socket) with a deadline on the whole
 * exchange, so a socket that accepts and dribbles cannot hold a pod start. 0: the agent answered
 * 200; -1 with `err` saying why not.
 */
static int call_agent(const char *sock, const char *path, const char *body, long timeout_ms, char *err, size_t errn)
{
	long long deadline = now_ms() + timeout_ms;
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
	/* buf is kept NUL-terminated for the header scan; answer takes the body, at most as long */
	char *req = NULL, *buf = calloc(1, MAX_ANSWER_BYTES + 2), *answer = malloc(MAX_ANSWER_BYTES + 1);
	size_t got = 0, blen = 0, off = 0;
	int status = 0, done = 0, r = -1;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", sock);
	/* connect() waits on a full backlog; SO_SNDTIMEO bounds that wait */
	if (fd < 0 || !buf || !answer || setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0) {
		snprintf(err, errn, "cannot make a socket: %s", strerror(errno));
		goto out;
	}
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		if (errno == ENOENT || errno == ECONNREFUSED)
			snprintf(err, errn, "the inpod agent is not running (no listener on %s); is the inpod agent DaemonSet up on this node?", sock);
		else if (errno == EAGAIN || errno == EINPROGRESS)
			snprintf(err, errn, "the inpod agent did not answer on %s within %g s", sock, timeout_ms / 1000.0);
		else
			snprintf(err, errn, "cannot reach the inpod agent on %s: %s", sock, strerror(errno));
		goto out;
	}
	fcntl(fd, F_SETFL, O_NONBLOCK);
	int len = asprintf(&req, "POST %s HTTP/1.1\r\nHost: inpod-agent\r\nContent-Type: application/json\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s", path, strlen(body), body);
	while (len > 0 && off < (size_t)len) {
		ssize_t w = send(fd, req + off, (size_t)len - off, MSG_NOSIGNAL);
		if (w > 0) off += (size_t)w;
		else if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
			if (!wait_fd(fd, POLLOUT, deadline)) goto timeout;
		} else {
			snprintf(err, errn, "cannot send to the inpod agent on %s: %s", sock, strerror(errno));
			goto out;
		}
	}
	while (!(done = http_answer(buf, got, 0, &status, answer, &blen))) {
		if (got > MAX_ANSWER_BYTES) {
			snprintf(err, errn, "the inpod agent on %s answered more than %d bytes", sock, MAX_ANSWER_BYTES);
			goto out;
		}
		ssize_t n = recv(fd, buf + got, MAX_ANSWER_BYTES + 1 - got, 0);
		if (n > 0) buf[got += (size_t)n] = 0;
		else if (n == 0) {
			done = http_answer(buf, got, 1, &status, answer, &blen);
			break;
		} else if (errno == EAGAIN || errno == EINTR) {
			if (!wait_fd(fd, POLLIN, deadline)) goto timeout;
		} else {
			snprintf(err, errn, "the inpod agent on %s closed the connection without an answer: %s", sock, strerror(errno));
			goto out;
		}
	}
	if (done < 0) snprintf(err, errn, "the inpod agent on %s closed the connection without a whole answer", sock);
	else if (status != 200) refusal(status, answer, blen, err, errn);
	else r = 0;
	goto out;
timeout:
	snprintf(err, errn, "the inpod agent did not answer on %s within %g s", sock, timeout_ms / 1000.0);
out:
	if (fd >= 0) close(fd);
	free(req);
	free(buf);
	free(answer);
	return r;
}

/* 1 if paths a and b name the same netns (the same string, or the same nsfs inode), else 0. */
static int same_netns(const char *a, const char *b)
{
	struct stat sa, sb;
	if (!strcmp(a, b)) return 1;
	return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* 1 if path a is a netns other than b's: both exist and are different inodes. */
static int other_netns(const char *a, const char *b)
{
	struct stat sa, sb;
	return strcmp(a, b) && stat(a, &sa) == 0 && stat(b, &sb) == 0 && (sa.st_dev != sb.st_dev || sa.st_ino != sb.st_ino);
}

/*
 * The pod's addresses are those the result puts in the pod's netns: an entry of prevResult.ips
 * on an interface whose "sandbox" (CNI spec: the netns it is in) is another netns than CNI_NETNS
 * is not the pod's, nor is one on a host-side interface (no sandbox) when the result names the
 * pod's interfaces (some with sandbox CNI_NETNS; the bridge plugin does). Sandboxes are compared
 * by the netns they name, so another spelling of the same path passes; a sandbox path that names
 * nothing here, or a result that names no sandbox at all, says nothing either way: the agent
 * checks every address against the pod's netns. Fails with 7.
 */
static int check_pod_ips(const struct netconf *c, const char *netns)
{
	json_t *ips = c->prev ? member(c->prev, "ips") : NULL, *ifaces = c->prev ? member(c->prev, "interfaces") : NULL;
	int named = 0;
	for (size_t k = 0; k < json_array_size(ifaces); k++) {
		const char *sb = plain_string(member(json_array_get(ifaces, k), "sandbox"));
		named |= sb && same_netns(sb, netns);
	}
	for (size_t i = 0; i < json_array_size(ips); i++) {
		json_t *e = json_array_get(ips, i), *v = member(e, "interface");
		if (!v) continue;
		json_t *iface = json_array_get(ifaces, json_integer_value(v));
		const char *sb = plain_string(member(iface, "sandbox"));
		if (sb ? !other_netns(sb, netns) : !named) continue;
		char a[128], n[128], where[256];
		if (sb) snprintf(where, sizeof(where), "in sandbox %s", show_str(sb, n));
		else snprintf(where, sizeof(where), "on the host side (no sandbox)");
		return fail(CNI_ERR_INVALID_CONFIG, FIX_CONF, "inpod-cni: the network configuration's prevResult.ips[%zu].address %s is on interface %lld (%s) %s, not in the pod's network namespace %s: it is not the pod's address",
			    i, show(json_object_get(e, "address"), a), (long long)json_integer_value(v), plain_string(member(iface, "name")) ? plain_string(member(iface, "name")) : "?", where, netns);
	}
	return 0;
}

/* The event the agent reads (ts/cni/plugin.ts PodEvent), as JSON text. */
static char *pod_event(const struct pod *p, const char *netns, const char *id, json_t *ips)
{
	json_t *e = json_object();
	json_object_set_new(e, "podName", json_string(p->name));
	json_object_set_new(e, "podNamespace", json_string(p->ns));
	json_object_set_new(e, "podUid", json_string(p->uid));
	json_object_set_new(e, "netns", text(netns ? netns : ""));
	json_object_set_new(e, "containerId", text(id ? id : ""));
	json_object_set(e, "ips", ips);
	char *s = json_dumps(e, JSON_COMPACT);
	json_decref(e);
	return s;
}

static int cmd_add(const struct netconf *c)
{
	const char *id = getenv("CNI_CONTAINERID"), *netns = getenv("CNI_NETNS");
	char why[1024], err[1024];
	struct pod p;
	if (!c->prev) {
		fail(CNI_ERR_INVALID_CONFIG, "put inpod-cni last in the conflist's plugins", "inpod-cni must be chained after the plugin that creates the pod network (no prevResult)");
		return error_out(c->version);
	}
	if (check_add_env(id, netns) < 0 || check_pod_ips(c, netns) < 0 || pod_identity(getenv("CNI_ARGS"), &p) < 0) return error_out(c->version);
	/* not a Kubernetes pod, or not one of the mesh: nothing for the agent to do */
	if (!p.name[0] || mesh_lookup(c, &p, why, sizeof(why)) == PASS) return pass_through(c);
	char *event = pod_event(&p, netns, id, c->ips);
	if (!event || call_agent(c->agent_socket, "/cmd/add", event, c->timeout_ms, err, sizeof(err)) < 0) {
		char details[1100];
		snprintf(details, sizeof(details), "the agent was asked because %s", why);
		fail(CNI_ERR_TRY_AGAIN, details, "inpod-cni: pod %s/%s was not added to the mesh: %s; the runtime will retry", p.ns, p.name, event ? err : "out of memory");
		return error_out(c->version);
	}
	return pass_through(c);
}

/* Best effort and idempotent: tells the agent when the pod may be captured; succeeds in every case. */
static int cmd_del(int parsed, const struct netconf *c)
{
	char why[1024], err[1024];
	struct pod p;
	if (!parsed || pod_identity(getenv("CNI_ARGS"), &p) < 0) {
		const char *m = strncmp(failed.msg, "inpod-cni: ", 11) ? failed.msg : failed.msg + 11;
		fprintf(stderr, "inpod-cni: DEL not passed to the agent (%s); the agent removes the pod when it is deleted\n", m);
		return 0;
	}
	if (!p.name[0] || mesh_lookup(c, &p, why, sizeof(why)) == PASS) return 0;
	char *event = pod_event(&p, getenv("CNI_NETNS"), getenv("CNI_CONTAINERID"), c->ips);
	if (!event || call_agent(c->agent_socket, "/cmd/del", event, c->timeout_ms < DEL_TIMEOUT_MS ? c->timeout_ms : DEL_TIMEOUT_MS, err, sizeof(err)) < 0)
		fprintf(stderr, "inpod-cni: DEL of %s/%s not passed to the agent (%s); the agent removes the pod when it is deleted\n", p.ns, p.name, event ? err : "out of memory");
	free(event);
	return 0;
}

int main(void)
{
	const char *cmd = getenv("CNI_COMMAND");
	struct netconf c;
	char *in = NULL;
	size_t n = 0;
	signal(SIGPIPE, SIG_IGN); /* a reader gone away is an error to report, not a reason to die */
	if (parse_command(cmd) < 0) return error_out("1.0.0");
	if (!strcmp(cmd, "VERSION")) {
		put("{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"0.3.0\",\"0.3.1\",\"0.4.0\",\"1.0.0\"]}");
		return 0;
	}
	int parsed = read_stdin(&in, &n) == 0 && parse_netconf(in, n, &c) == 0;
	if (!strcmp(cmd, "DEL")) return cmd_del(parsed, &c);
	/* errors before the configuration is read whole are in the version every runtime reads */
	if (!parsed) return error_out("1.0.0");
	if (!strcmp(cmd, "CHECK")) return 0;
	return cmd_add(&c);
}
