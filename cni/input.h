/*
 * What inpod-cni reads from the runtime (the network configuration on stdin, the CNI_*
 * environment), decoded and checked before anything acts on it. Pure: no I/O. Every problem is
 * one failure carrying the CNI spec's well-known error code (containernetworking/cni SPEC.md,
 * "Well-known Error Codes"), a message naming the field and what was expected, and details
 * saying what to fix. The codes and messages are those the TypeScript plugin gave (issue 13's
 * malformed-input contract, test/security/input.test.ts), so runtimes and operators see the same.
 */
#ifndef INPOD_CNI_INPUT_H
#define INPOD_CNI_INPUT_H

#include <arpa/inet.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
	CNI_ERR_INCOMPATIBLE_VERSION = 1,
	CNI_ERR_INVALID_ENV = 4,
	CNI_ERR_IO = 5,
	CNI_ERR_DECODE = 6,
	CNI_ERR_INVALID_CONFIG = 7,
	CNI_ERR_TRY_AGAIN = 11,
	CNI_ERR_INTERNAL = 100, /* a defect of inpod-cni itself (never expected) */
};

#define MAX_STDIN_BYTES (1 << 20)      /* real configurations are a few KiB */
#define DEFAULT_TIMEOUT_SECONDS 60
#define MAX_TIMEOUT_SECONDS 600
#define MAX_SOCKET_PATH 107            /* sun_path holds 107 bytes and a NUL */
#define MAX_PATH 4096
#define DEFAULT_AGENT_SOCKET "/var/run/inpod/pluginevent.sock"
#define DEFAULT_MESH_VIEW "/var/run/inpod/meshview.json"

static const char *const SUPPORTED_VERSIONS[] = {"0.3.0", "0.3.1", "0.4.0", "1.0.0"};
/* what the agent writes unless told otherwise (ts/cli/agent.ts): the system and its own namespace */
static const char *const DEFAULT_EXCLUDED[] = {"kube-system", "inpod-system"};
static const char FIX_CONF[] = "fix the inpod-cni entry of the CNI conflist (the inpod agent writes it) or the plugin before it in the chain";

/* The one failure of this run; functions that fail fill it and return -1. */
static struct failure {
	int code;
	char msg[1536];
	char details[512];
} failed;

__attribute__((format(printf, 3, 4)))
static int fail(int code, const char *details, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(failed.msg, sizeof(failed.msg), fmt, ap);
	va_end(ap);
	failed.code = code;
	snprintf(failed.details, sizeof(failed.details), "%s", details ? details : "");
	return -1;
}

/* Appends s[0..n) JSON-quoted, invalid UTF-8 replaced by U+FFFD (as Node decodes it), up to cap bytes. */
static size_t quote(char *out, size_t cap, const unsigned char *s, size_t n)
{
	size_t o = 0;
#define PUT(str, len) do { if (o + (len) < cap) { memcpy(out + o, (str), (len)); o += (len); } } while (0)
	PUT("\"", 1);
	for (size_t i = 0; i < n && o < cap - 8;) {
		unsigned char c = s[i];
		size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
		int ok = len > 0 && i + len <= n;
		for (size_t k = 1; ok && k < len; k++) ok = (s[i + k] & 0xc0) == 0x80;
		if (!ok) { PUT("\xef\xbf\xbd", 3); i++; continue; }
		char esc[8];
		if (c == '"' || c == '\\') { esc[0] = '\\'; esc[1] = (char)c; PUT(esc, 2); }
		else if (c == '\n') PUT("\\n", 2);
		else if (c == '\t') PUT("\\t", 2);
		else if (c == '\r') PUT("\\r", 2);
		else if (c < 0x20) { snprintf(esc, sizeof(esc), "\\u%04x", c); PUT(esc, 6); }
		else PUT((const char *)s + i, len);
		i += len;
	}
	PUT("\"", 1);
#undef PUT
	out[o] = 0;
	return o;
}

/* A number as JavaScript writes it: integers plainly, others in the fewest digits that read back. */
static void js_number(double d, char *out, size_t cap)
{
	if (d == floor(d) && fabs(d) < 1e21) { snprintf(out, cap, "%.0f", d); return; }
	for (int p = 1; p <= 17; p++) {
		snprintf(out, cap, "%.*g", p, d);
		if (strtod(out, NULL) == d) return;
	}
}

/* Cuts a shown value to 80 characters (77 and "..."), never inside a UTF-8 sequence. */
static const char *clip(char *s)
{
	size_t n = strlen(s);
	if (n <= 80) return s;
	n = 77;
	while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80) n--;
	memcpy(s + n, "...", 4);
	return s;
}

/* How a message shows a value: JSON.stringify cut to 80 characters; "nothing" when absent. */
static const char *show(const json_t *v, char out[128])
{
	if (!v) return strcpy(out, "nothing");
	if (json_is_real(v)) { js_number(json_real_value(v), out, 128); return out; }
	if (json_is_string(v)) { quote(out, 128, (const unsigned char *)json_string_value(v), json_string_length(v)); return clip(out); }
	char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
	snprintf(out, 128, "%s", s ? s : "?");
	free(s);
	return clip(out);
}

static const char *show_str(const char *s, char out[128])
{
	quote(out, 128, (const unsigned char *)s, strlen(s));
	return clip(out);
}

static const char *kind(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_NULL: return "null";
	case JSON_ARRAY: return "a list";
	case JSON_OBJECT: return "an object";
	case JSON_STRING: return "a string";
	case JSON_TRUE: case JSON_FALSE: return "a boolean";
	default: return "a number";
	}
}

static int invalid(const char *field, const char *want, const json_t *got)
{
	char s[128];
	return fail(CNI_ERR_INVALID_CONFIG, FIX_CONF, "inpod-cni: the network configuration's %s must be %s, got %s", field, want, show(got, s));
}

/* A JSON string without NUL bytes, or NULL. */
static const char *plain_string(const json_t *v)
{
	if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v)) return NULL;
	return json_string_value(v);
}

/* A member, with null taken as absent (the TypeScript plugin read fields with `??`). */
static json_t *member(const json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);
	return json_is_null(v) ? NULL : v;
}

/* The network configuration fields inpod-cni uses, checked. Borrowed from `root`. */
struct netconf {
	json_t *root;
	const char *version;
	const char *agent_socket;
	const char *mesh_view;
	long timeout_ms;
	json_t *prev;    /* the previous plugin's result, passed through unchanged (NULL: not chained) */
	json_t *exclude; /* namespaces whose pods never concern the mesh (NULL: the defaults) */
	json_t *ips;     /* new: the pod's addresses from prevResult.ips, both families, canonical, no prefix length */
};

/*
 * Why an address cannot be a pod's, or NULL. CNI stdin is a boundary: the plugin before inpod-cni
 * (or whoever can write the conflist) names the pod's addresses, and the capture layer treats
 * them as the pod's (its inbound steering and host probe rules are keyed by them), so an address
 * no pod interface can hold is refused rather than passed on: the unspecified, loopback,
 * link-local, multicast and reserved ranges of both families, IPv4-mapped and IPv4-compatible
 * IPv6, and the health-probe sources (169.254.7.127 is link-local; the IPv6 one is istio-cni's
 * DefaultHostProbeSNATIPV6, cni/pkg/nodeagent/options.go), which would make a pod's own traffic
 * look like the node's probes.
 */
static const char *not_pod_address(int af, const unsigned char *b)
{
	static const unsigned char probe6[16] = {0xfd, 0x16, 0x92, 0x54, 0x71, 0x27, 0x13, 0x37,
						 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
	static const unsigned char zero[12];
	if (af == AF_INET) {
		if (b[0] == 0) return "in 0.0.0.0/8 (this host)";
		if (b[0] == 127) return "a loopback address";
		if (b[0] == 169 && b[1] == 254) return "link-local (169.254.0.0/16, where the health-probe source is)";
		if (b[0] >= 224) return "multicast or reserved (224.0.0.0/3)";
		return NULL;
	}
	if (!memcmp(b, zero, 10) && b[10] == 0xff && b[11] == 0xff) return "IPv4-mapped (::ffff:0:0/96); give the IPv4 address itself";
	if (!memcmp(b, zero, 12)) return "unspecified, loopback or IPv4-compatible (::/96)";
	if (b[0] == 0xff) return "multicast (ff00::/8)";
	if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) return "link-local (fe80::/10)";
	if (!memcmp(b, probe6, 16)) return "the IPv6 health-probe source";
	return NULL;
}

/* An IP address without prefix of either family into bin; its family (AF_INET, AF_INET6) or 0. */
static int parse_ip(const char *s, unsigned char bin[16])
{
	if (!s || strlen(s) >= INET6_ADDRSTRLEN) return 0;
	if (strchr(s, ':')) return inet_pton(AF_INET6, s, bin) == 1 ? AF_INET6 : 0;
	return inet_pton(AF_INET, s, bin) == 1 ? AF_INET : 0;
}

/*
 * prevResult.ips[i].address: "ip/prefix-length" of either family (CNI spec 1.0 "ips": address in
 * CIDR notation), the prefix length in decimal without leading zeros. The address goes to `bin`,
 * its family is returned; 0 with the failure set otherwise.
 */
static int check_address(const json_t *a, size_t i, unsigned char bin[16])
{
	char field[64], ip[INET6_ADDRSTRLEN];
	snprintf(field, sizeof(field), "prevResult.ips[%zu].address", i);
	const char *s = plain_string(a), *slash = s ? strchr(s, '/') : NULL;
	if (slash && (size_t)(slash - s) < sizeof(ip)) {
		memcpy(ip, s, slash - s);
		ip[slash - s] = 0;
		const char *p = slash + 1;
		size_t plen = strlen(p);
		int af = parse_ip(ip, bin);
		int digits = plen >= 1 && plen <= 3 && strspn(p, "0123456789") == plen && (plen == 1 || p[0] != '0');
		if (af && digits && atoi(p) <= (af == AF_INET6 ? 128 : 32)) {
			const char *why = not_pod_address(af, bin);
			if (!why) return af;
			char shown[128];
			fail(CNI_ERR_INVALID_CONFIG, FIX_CONF, "inpod-cni: the network configuration's %s %s is %s, which no pod can have", field, show(a, shown), why);
			return 0;
		}
	}
	invalid(field, "an address with prefix length such as \"10.0.0.5/24\" or \"fd00::5/64\"", a);
	return 0;
}

/*
 * One entry of prevResult.ips (CNI spec 1.0 "ips"; 0.3.x/0.4.0 results add "version"): address,
 * gateway of the same family if given, version "4"/"6" matching the address if given, interface
 * (if given) an index into prevResult.interfaces. Appends the address, as inet_ntop writes it
 * (IPv6 lowercase and compressed), to c->ips unless it is there already.
 */
static int check_ip_entry(struct netconf *c, json_t *ifaces, const json_t *e, size_t i)
{
	char field[64], buf[INET6_ADDRSTRLEN];
	unsigned char bin[16], gw[16];
	snprintf(field, sizeof(field), "prevResult.ips[%zu]", i);
	if (!json_is_object(e)) return invalid(field, "an object with an address", e);
	int af = check_address(json_object_get(e, "address"), i, bin);
	if (!af) return -1;
	const char *fam = af == AF_INET ? "4" : "6";
	json_t *v = member(e, "version");
	snprintf(field, sizeof(field), "prevResult.ips[%zu].version", i);
	if (v && (!plain_string(v) || strcmp(json_string_value(v), fam)))
		return invalid(field, af == AF_INET ? "\"4\" (the address is IPv4)" : "\"6\" (the address is IPv6)", v);
	v = member(e, "gateway");
	snprintf(field, sizeof(field), "prevResult.ips[%zu].gateway", i);
	if (v && parse_ip(plain_string(v), gw) != af)
		return invalid(field, af == AF_INET ? "an IPv4 address (as the address is)" : "an IPv6 address (as the address is)", v);
	v = member(e, "interface");
	snprintf(field, sizeof(field), "prevResult.ips[%zu].interface", i);
	if (v) {
		json_int_t n = json_is_integer(v) ? json_integer_value(v) : -1;
		if (n < 0 || (size_t)n >= json_array_size(ifaces) || !json_is_object(json_array_get(ifaces, n)))
			return invalid(field, "the index of an entry of prevResult.interfaces", v);
		json_t *sb = member(json_array_get(ifaces, n), "sandbox");
		if (sb && !plain_string(sb)) {
			snprintf(field, sizeof(field), "prevResult.interfaces[%lld].sandbox", (long long)n);
			return invalid(field, "a network namespace path", sb);
		}
	}
	inet_ntop(af, bin, buf, sizeof(buf));
	for (size_t k = 0; k < json_array_size(c->ips); k++)
		if (!strcmp(json_string_value(json_array_get(c->ips, k)), buf)) return 0;
	json_array_append_new(c->ips, json_string(buf));
	return 0;
}

static int check_prev_ips(struct netconf *c)
{
	json_t *ips = c->prev ? member(c->prev, "ips") : NULL;
	json_t *ifaces = c->prev ? member(c->prev, "interfaces") : NULL;
	c->ips = json_array();
	if (!ips) return 0;
	if (!json_is_array(ips)) return invalid("prevResult.ips", "a list", ips);
	if (ifaces && !json_is_array(ifaces)) return invalid("prevResult.interfaces", "a list", ifaces);
	for (size_t i = 0; i < json_array_size(ips); i++)
		if (check_ip_entry(c, ifaces, json_array_get(ips, i), i) < 0) return -1;
	return 0;
}

/* Decodes stdin and checks every field inpod-cni reads. Fails with 6, 7 or 1. */
static int parse_netconf(const char *buf, size_t n, struct netconf *c)
{
	json_error_t err;
	memset(c, 0, sizeof(*c));
	c->root = json_loadb(buf, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
	if (!c->root) return fail(CNI_ERR_DECODE, err.text, "inpod-cni: the network configuration on stdin is not valid JSON");
	if (!json_is_object(c->root))
		return fail(CNI_ERR_DECODE, "the runtime passes the plugin its entry of the CNI conflist on stdin", "inpod-cni: the network configuration on stdin must be a JSON object, got %s", kind(c->root));
	json_t *v = json_object_get(c->root, "cniVersion");
	c->version = plain_string(v);
	if (!c->version || !*c->version) return invalid("cniVersion", "a version string such as \"1.0.0\"", v);
	int supported = 0;
	for (size_t i = 0; i < sizeof(SUPPORTED_VERSIONS) / sizeof(*SUPPORTED_VERSIONS); i++) supported |= !strcmp(c->version, SUPPORTED_VERSIONS[i]);
	if (!supported) {
		char s[128];
		return fail(CNI_ERR_INCOMPATIBLE_VERSION, "set the conflist cniVersion to one of the supported versions", "inpod-cni: CNI version %s is not supported (0.3.0, 0.3.1, 0.4.0, 1.0.0)", show(v, s));
	}
	v = member(c->root, "agentSocket");
	c->agent_socket = v ? plain_string(v) : DEFAULT_AGENT_SOCKET;
	if (!c->agent_socket || c->agent_socket[0] != '/' || strlen(c->agent_socket) > MAX_SOCKET_PATH)
		return invalid("agentSocket", "an absolute path of at most 107 bytes (a unix socket)", v);
	v = member(c->root, "meshView");
	c->mesh_view = v ? plain_string(v) : DEFAULT_MESH_VIEW;
	if (!c->mesh_view || c->mesh_view[0] != '/' || strlen(c->mesh_view) >= MAX_PATH)
		return invalid("meshView", "an absolute path (the agent's mesh view file)", v);
	v = member(c->root, "timeoutSeconds");
	double t = v ? json_number_value(v) : DEFAULT_TIMEOUT_SECONDS;
	if ((v && !json_is_number(v)) || !isfinite(t) || t <= 0 || t > MAX_TIMEOUT_SECONDS)
		return invalid("timeoutSeconds", "a number of seconds above 0 and at most 600", v);
	c->timeout_ms = lround(t * 1000);
	c->exclude = member(c->root, "excludeNamespaces");
	if (c->exclude && !json_is_array(c->exclude)) return invalid("excludeNamespaces", "a list of namespace names", c->exclude);
	for (size_t i = 0; c->exclude && i < json_array_size(c->exclude); i++) {
		char field[48];
		snprintf(field, sizeof(field), "excludeNamespaces[%zu]", i);
		if (!plain_string(json_array_get(c->exclude, i))) return invalid(field, "a namespace name", json_array_get(c->exclude, i));
	}
	c->prev = member(c->root, "prevResult");
	if (c->prev && !json_is_object(c->prev)) return invalid("prevResult", "an object (the previous plugin's result)", c->prev);
	return check_prev_ips(c);
}

static int excluded(const struct netconf *c, const char *ns)
{
	if (!c->exclude) {
		for (size_t i = 0; i < sizeof(DEFAULT_EXCLUDED) / sizeof(*DEFAULT_EXCLUDED); i++)
			if (!strcmp(ns, DEFAULT_EXCLUDED[i])) return 1;
		return 0;
	}
	for (size_t i = 0; i < json_array_size(c->exclude); i++)
		if (!strcmp(ns, json_string_value(json_array_get(c->exclude, i)))) return 1;
	return 0;
}

/* CNI_COMMAND, checked. Fails with 4. */
static int parse_command(const char *cmd)
{
	char s[128];
	if (!cmd || !*cmd)
		return fail(CNI_ERR_INVALID_ENV, "inpod-cni is a CNI plugin: a container runtime runs it with CNI_COMMAND=ADD, DEL, CHECK or VERSION", "inpod-cni: CNI_COMMAND is not set");
	if (!strcmp(cmd, "ADD") || !strcmp(cmd, "DEL") || !strcmp(cmd, "CHECK") || !strcmp(cmd, "VERSION")) return 0;
	return fail(CNI_ERR_INVALID_ENV, "supported: ADD, DEL, CHECK, VERSION", "inpod-cni: unknown CNI_COMMAND %s", show_str(cmd, s));
}

/* Every byte of s in `set`, its length within [min, max], first and last byte in `ends` (if given). */
static int charset(const char *s, const char *set, size_t min, size_t max, const char *ends)
{
	size_t n = strlen(s);
	if (n < min || n > max || strspn(s, set) != n) return 0;
	return !ends || n == 0 || (strchr(ends, s[0]) && strchr(ends, s[n - 1]));
}

#define ALNUM "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
#define LOWER_ALNUM "abcdefghijklmnopqrstuvwxyz0123456789"

/* CNI_CONTAINERID and CNI_NETNS as ADD needs them. Fails with 4 naming the variable. */
static int check_add_env(const char *id, const char *netns)
{
	char s[128];
	if (!id || !*id) return fail(CNI_ERR_INVALID_ENV, "the runtime must pass the container ID", "inpod-cni: CNI_CONTAINERID is not set");
	if (!charset(id, ALNUM "_.-", 1, 1024, NULL) || !strchr(ALNUM, id[0]))
		return fail(CNI_ERR_INVALID_ENV, "the spec allows letters, digits, \"_\", \".\" and \"-\", starting with a letter or digit", "inpod-cni: CNI_CONTAINERID %s is not a container ID", show_str(id, s));
	if (!netns || !*netns) return fail(CNI_ERR_INVALID_ENV, NULL, "inpod-cni: CNI_NETNS is not set; the runtime must pass the pod network namespace");
	if (netns[0] != '/' || strlen(netns) > MAX_PATH)
		return fail(CNI_ERR_INVALID_ENV, "the runtime passes a path such as /var/run/netns/<name> or /proc/<pid>/ns/net", "inpod-cni: CNI_NETNS %s is not an absolute path", show_str(netns, s));
	return 0;
}

/* The Kubernetes pod in CNI_ARGS. name and namespace empty: not a Kubernetes pod. */
struct pod {
	char name[256], ns[64], uid[129];
};

static int pod_field(const char *field, const char *v, int ok, const char *want)
{
	char s[128];
	if (ok) return 0;
	return fail(CNI_ERR_INVALID_ENV, "the runtime takes these from the pod; Kubernetes allows nothing else", "inpod-cni: CNI_ARGS %s=%s is not %s", field, show_str(v, s), want);
}

/*
 * K8S_POD_NAME, K8S_POD_NAMESPACE and K8S_POD_UID from CNI_ARGS ("K=V;K=V", the last of a key
 * wins). A value Kubernetes would never give fails with 4 naming it.
 */
static int pod_identity(const char *args, struct pod *p)
{
	const char *name = "", *ns = "", *uid = "";
	char *copy = strdup(args ? args : ""), *save = NULL;
	memset(p, 0, sizeof(*p));
	for (char *kv = strtok_r(copy, ";", &save); kv; kv = strtok_r(NULL, ";", &save)) {
		char *eq = strchr(kv, '=');
		if (!eq || eq == kv) continue;
		*eq = 0;
		if (!strcmp(kv, "K8S_POD_NAME")) name = eq + 1;
		else if (!strcmp(kv, "K8S_POD_NAMESPACE")) ns = eq + 1;
		else if (!strcmp(kv, "K8S_POD_UID")) uid = eq + 1;
	}
	int r = 0;
	if (*name && *ns) {
		r = pod_field("K8S_POD_NAME", name, charset(name, LOWER_ALNUM "-.", 1, 253, LOWER_ALNUM), "a Kubernetes pod name");
		if (!r) r = pod_field("K8S_POD_NAMESPACE", ns, charset(ns, LOWER_ALNUM "-", 1, 63, LOWER_ALNUM), "a Kubernetes namespace name");
		if (!r && *uid) r = pod_field("K8S_POD_UID", uid, charset(uid, ALNUM "-", 1, 128, NULL), "a Kubernetes UID");
		if (!r) {
			strcpy(p->name, name);
			strcpy(p->ns, ns);
			strcpy(p->uid, uid);
		}
	}
	free(copy);
	return r;
}

#endif
