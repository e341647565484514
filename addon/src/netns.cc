// Facts and settings inside a pod netns without spawning `ip`/`sysctl`: its cookie, the
// addresses (getifaddrs), one sysctl write, and the fwmark rule + local route the eBPF backend
// needs (rtnetlink); and statfs, which tells a netns file from other paths. Each export enters
// the netns through a NetnsGuard (netns_guard.h), does its one job, and always comes back.
#include "addon.h"
#include "netns_guard.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <linux/fib_rules.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <unistd.h>
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

namespace inpod {

// netnsCookie(nsFd) -> bigint | {errno, syscall}: SO_NETNS_COOKIE of a socket made inside it
static Napi::Value NetnsCookie(const Napi::CallbackInfo &info) {
  uint64_t c = 0;
  Step st = InNetns(IntArg(info, 0), [&c](Step *st) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return st->Fail("socket");
    socklen_t l = sizeof(c);
    if (getsockopt(s, SOL_SOCKET, SO_NETNS_COOKIE, &c, &l) < 0) st->Fail("getsockopt(SO_NETNS_COOKIE)");
    close(s);
    return true;
  });
  if (st.err) return SysFail(info.Env(), st.syscall, st.err);
  return Napi::BigInt::New(info.Env(), c);
}

// Calls `f(ifaddrs)` for each address of the netns but loopback and IPv6 link-local (its global
// addresses, both families), inside the netns.
template <typename F>
static bool EachGlobalAddr(Step *st, F f) {
  struct ifaddrs *ifa = nullptr;
  if (getifaddrs(&ifa) < 0) return st->Fail("getifaddrs");
  for (struct ifaddrs *a = ifa; a; a = a->ifa_next) {
    if (!a->ifa_addr) continue;
    if (a->ifa_addr->sa_family == AF_INET) {
      auto *s = reinterpret_cast<sockaddr_in *>(a->ifa_addr);
      if ((ntohl(s->sin_addr.s_addr) >> 24) != 127) f(a);
    } else if (a->ifa_addr->sa_family == AF_INET6) {
      auto *s = reinterpret_cast<sockaddr_in6 *>(a->ifa_addr);
      if (!IN6_IS_ADDR_LOOPBACK(&s->sin6_addr) && !IN6_IS_ADDR_LINKLOCAL(&s->sin6_addr)) f(a);
    }
  }
  freeifaddrs(ifa);
  return true;
}

// The addresses of EachGlobalAddr as text, by family; filled inside the netns.
static bool ReadAddrs(Step *st, std::vector<std::string> *v4, std::vector<std::string> *v6) {
  char buf[INET6_ADDRSTRLEN];
  return EachGlobalAddr(st, [&](struct ifaddrs *a) {
    bool four = a->ifa_addr->sa_family == AF_INET;
    const void *addr = four ? static_cast<const void *>(&reinterpret_cast<sockaddr_in *>(a->ifa_addr)->sin_addr)
                            : static_cast<const void *>(&reinterpret_cast<sockaddr_in6 *>(a->ifa_addr)->sin6_addr);
    inet_ntop(four ? AF_INET : AF_INET6, addr, buf, sizeof(buf));
    (four ? v4 : v6)->push_back(buf);
  });
}

static Napi::Array Strings(Napi::Env env, const std::vector<std::string> &v) {
  Napi::Array a = Napi::Array::New(env, v.size());
  for (uint32_t i = 0; i < v.size(); i++) a.Set(i, v[i]);
  return a;
}

// netnsAddrs(nsFd) -> {ipv4: string[], ipv6: string[]} (no loopback, no IPv6 link-local) | {errno, syscall}
static Napi::Value NetnsAddrs(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::vector<std::string> v4, v6;
  Step st = InNetns(IntArg(info, 0), [&](Step *st) { return ReadAddrs(st, &v4, &v6); });
  if (st.err) return SysFail(env, st.syscall, st.err);
  Napi::Object o = Napi::Object::New(env);
  o.Set("ipv4", Strings(env, v4));
  o.Set("ipv6", Strings(env, v6));
  return o;
}

// 0, or the failed step of a composite call as {errno, syscall}.
static Napi::Value Done(const Napi::CallbackInfo &info, const Step &st) {
  if (st.err) return SysFail(info.Env(), st.syscall, st.err);
  return Napi::Number::New(info.Env(), 0);
}

// netnsWrite(nsFd, path, value) -> 0 | {errno, syscall}: e.g. a /proc/sys/net sysctl of that netns
static Napi::Value NetnsWrite(const Napi::CallbackInfo &info) {
  int nsFd = IntArg(info, 0);
  std::string path = StrArg(info, 1), value = StrArg(info, 2);
  return Done(info, InNetns(nsFd, [&](Step *st) {
    int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return st->Fail("open");
    if (write(fd, value.data(), value.size()) < 0) st->Fail("write");
    close(fd);
    return true;
  }));
}

struct NlReq {
  struct nlmsghdr h;
  union {
    struct fib_rule_hdr rule;
    struct rtmsg rt;
  };
  char attrs[128];
};

static void AddAttr(NlReq *r, unsigned short type, const void *data, size_t len) {
  auto *a = reinterpret_cast<struct rtattr *>(reinterpret_cast<char *>(r) + NLMSG_ALIGN(r->h.nlmsg_len));
  a->rta_type = type;
  a->rta_len = RTA_LENGTH(len);
  memcpy(RTA_DATA(a), data, len);
  r->h.nlmsg_len = NLMSG_ALIGN(r->h.nlmsg_len) + RTA_ALIGN(a->rta_len);
}

// An RTM_NEWROUTE (add: created, `addFlag` NLM_F_REPLACE or NLM_F_EXCL) or RTM_DELROUTE request
// for a `local` route of host scope: the header only, attributes to follow (AddAttr).
static void LocalRouteReq(NlReq *r, bool add, uint16_t addFlag, int family, uint8_t dstLen, uint8_t table) {
  memset(r, 0, sizeof(*r));
  r->h.nlmsg_len = NLMSG_LENGTH(sizeof(struct rtmsg));
  r->h.nlmsg_type = add ? RTM_NEWROUTE : RTM_DELROUTE;
  r->h.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | (add ? NLM_F_CREATE | addFlag : 0);
  r->rt.rtm_family = family;
  r->rt.rtm_dst_len = dstLen;
  r->rt.rtm_table = table;
  r->rt.rtm_protocol = RTPROT_BOOT;
  r->rt.rtm_scope = RT_SCOPE_HOST;
  r->rt.rtm_type = RTN_LOCAL;
}

// One request, one ack; returns 0 or the kernel's errno.
static int NlTalk(int s, NlReq *r) {
  if (send(s, r, r->h.nlmsg_len, 0) < 0) return errno;
  char buf[4096];
  ssize_t n = recv(s, buf, sizeof(buf), 0);
  if (n < 0) return errno;
  auto *h = reinterpret_cast<struct nlmsghdr *>(buf);
  if (h->nlmsg_type == NLMSG_ERROR) return -reinterpret_cast<struct nlmsgerr *>(NLMSG_DATA(h))->error;
  return 0;
}

// The rule and the route of netnsLocalRoute, inside the netns. Idempotent: EEXIST on add and
// ENOENT/ESRCH on remove are success.
static bool LocalRoute(Step *st, int family, uint32_t mark, uint32_t table, uint32_t pref, bool add) {
  int s = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (s < 0) return st->Fail("socket(NETLINK_ROUTE)");

  NlReq r;
  memset(&r, 0, sizeof(r));
  r.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct fib_rule_hdr));
  r.h.nlmsg_type = add ? RTM_NEWRULE : RTM_DELRULE;
  r.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | (add ? NLM_F_CREATE | NLM_F_EXCL : 0);
  r.rule.family = family;
  r.rule.action = FR_ACT_TO_TBL;
  r.rule.table = table < 256 ? table : RT_TABLE_UNSPEC;
  AddAttr(&r, FRA_FWMARK, &mark, sizeof(mark));
  AddAttr(&r, FRA_PRIORITY, &pref, sizeof(pref));
  AddAttr(&r, FRA_TABLE, &table, sizeof(table));
  int err = NlTalk(s, &r);
  if (err && !(add && err == EEXIST) && !(!add && err == ENOENT)) {
    close(s);
    return st->Fail(add ? "netlink(RTM_NEWRULE)" : "netlink(RTM_DELRULE)", err);
  }

  LocalRouteReq(&r, add, NLM_F_REPLACE, family, 0, table < 256 ? table : RT_TABLE_UNSPEC);
  uint32_t lo = 1;  // the loopback device is always ifindex 1 in a netns
  AddAttr(&r, RTA_OIF, &lo, sizeof(lo));
  AddAttr(&r, RTA_TABLE, &table, sizeof(table));
  err = NlTalk(s, &r);
  close(s);
  if (err && !(!add && (err == ENOENT || err == ESRCH))) return st->Fail(add ? "netlink(RTM_NEWROUTE)" : "netlink(RTM_DELROUTE)", err);
  return true;
}

// netnsLocalRoute(nsFd, mark, table, pref, add, family = AF_INET) -> 0 | {errno, syscall}
// add: `ip [-6] rule add fwmark MARK lookup TABLE pref PREF` + `ip [-6] route replace local
// 0.0.0.0/0 (::/0) dev lo table TABLE`; remove: both deleted. Idempotent (EEXIST / ENOENT are success).
static Napi::Value NetnsLocalRoute(const Napi::CallbackInfo &info) {
  int nsFd = IntArg(info, 0);
  uint32_t mark = U32Arg(info, 1), table = U32Arg(info, 2), pref = U32Arg(info, 3);
  bool add = info[4].ToBoolean();
  int family = info.Length() > 5 ? IntArg(info, 5) : AF_INET;
  return Done(info, InNetns(nsFd, [=](Step *st) { return LocalRoute(st, family, mark, table, pref, add); }));
}

// `local ::1 dev IFINDEX table local` for each link with a global IPv6 address, inside the netns.
// Why: a packet from ::1 to the pod's own IPv6 address crosses lo, but its input route is the
// address's local route, whose device is the link holding it, so the kernel records that link as
// its incoming interface; an answer without a socket of its own (a RST, a TIME_WAIT ACK) to ::1
// is routed strictly by that interface (rt6_need_strict), misses `local ::1 dev lo`, leaves by
// the default route and is dropped by the peer (loopback address on a link). This route makes
// that strict lookup local. Idempotent: EEXIST on add, ENOENT/ESRCH on remove are success.
static bool Loopback6OnLinks(Step *st, bool add) {
  std::vector<uint32_t> links;
  bool read = EachGlobalAddr(st, [&links](struct ifaddrs *a) {
    if (a->ifa_addr->sa_family != AF_INET6) return;
    uint32_t idx = if_nametoindex(a->ifa_name);
    if (idx > 1 && std::find(links.begin(), links.end(), idx) == links.end()) links.push_back(idx);
  });
  if (!read) return false;
  int s = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (s < 0) return st->Fail("socket(NETLINK_ROUTE)");
  for (uint32_t idx : links) {
    NlReq r;
    LocalRouteReq(&r, add, NLM_F_EXCL, AF_INET6, 128, RT_TABLE_LOCAL);
    struct in6_addr lo = IN6ADDR_LOOPBACK_INIT;
    AddAttr(&r, RTA_DST, &lo, sizeof(lo));
    AddAttr(&r, RTA_OIF, &idx, sizeof(idx));
    int err = NlTalk(s, &r);
    if (err && !(add && err == EEXIST) && !(!add && (err == ENOENT || err == ESRCH))) {
      close(s);
      return st->Fail(add ? "netlink(RTM_NEWROUTE ::1)" : "netlink(RTM_DELROUTE ::1)", err);
    }
  }
  close(s);
  return true;
}

// netnsLoopback6OnLinks(nsFd, add) -> 0 | {errno, syscall}: `ip -6 route add local ::1 dev LINK
// table local` for every link with a global IPv6 address (add), or those routes deleted.
static Napi::Value NetnsLoopback6OnLinks(const Napi::CallbackInfo &info) {
  int nsFd = IntArg(info, 0);
  bool add = info[1].ToBoolean();
  return Done(info, InNetns(nsFd, [add](Step *st) { return Loopback6OnLinks(st, add); }));
}

// statfsType(path) -> f_type | -errno: tells an nsfs file, a bpffs and a cgroup2 mount apart
static Napi::Value StatfsType(const Napi::CallbackInfo &info) {
  struct statfs st;
  if (statfs(StrArg(info, 0).c_str(), &st) < 0) return Errno(info.Env(), errno);
  return Napi::Number::New(info.Env(), static_cast<double>(static_cast<unsigned long>(st.f_type)));
}

void InitNetns(Napi::Env env, Napi::Object exports) {
  exports.Set("netnsCookie", Napi::Function::New(env, NetnsCookie));
  exports.Set("netnsAddrs", Napi::Function::New(env, NetnsAddrs));
  exports.Set("netnsWrite", Napi::Function::New(env, NetnsWrite));
  exports.Set("netnsLocalRoute", Napi::Function::New(env, NetnsLocalRoute));
  exports.Set("netnsLoopback6OnLinks", Napi::Function::New(env, NetnsLoopback6OnLinks));
  exports.Set("statfsType", Napi::Function::New(env, StatfsType));
}

}  // namespace inpod
