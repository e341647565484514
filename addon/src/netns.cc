// Facts and settings inside a pod netns without spawning `ip`/`sysctl`: the addresses
// (getifaddrs), one sysctl write, and the fwmark rule + local route the eBPF backend needs
// (rtnetlink). Each export enters the netns, does its one job, and always comes back.
#include "addon.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <linux/fib_rules.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cstring>

namespace inpod {

class NetnsGuard {
 public:
  explicit NetnsGuard(int nsFd) {
    self_ = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (self_ < 0) { err_ = errno; return; }
    if (setns(nsFd, CLONE_NEWNET) < 0) { err_ = errno; close(self_); self_ = -1; }
  }
  ~NetnsGuard() {
    if (self_ >= 0) {
      if (setns(self_, CLONE_NEWNET) < 0) abort();  // never leave the JS thread in a pod netns
      close(self_);
    }
  }
  int err() const { return err_; }

 private:
  int self_ = -1;
  int err_ = 0;
};

// netnsAddrs(nsFd) -> {ipv4: string[], ipv6: string[]} (no loopback, no IPv6 link-local) | {errno, syscall}
static Napi::Value NetnsAddrs(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  NetnsGuard g(IntArg(info, 0));
  if (g.err()) return SysFail(env, "setns", g.err());
  struct ifaddrs *ifa = nullptr;
  if (getifaddrs(&ifa) < 0) return SysFail(env, "getifaddrs", errno);
  Napi::Array v4 = Napi::Array::New(env), v6 = Napi::Array::New(env);
  uint32_t n4 = 0, n6 = 0;
  char buf[INET6_ADDRSTRLEN];
  for (struct ifaddrs *a = ifa; a; a = a->ifa_next) {
    if (!a->ifa_addr) continue;
    if (a->ifa_addr->sa_family == AF_INET) {
      auto *s = reinterpret_cast<sockaddr_in *>(a->ifa_addr);
      if ((ntohl(s->sin_addr.s_addr) >> 24) == 127) continue;
      inet_ntop(AF_INET, &s->sin_addr, buf, sizeof(buf));
      v4.Set(n4++, buf);
    } else if (a->ifa_addr->sa_family == AF_INET6) {
      auto *s = reinterpret_cast<sockaddr_in6 *>(a->ifa_addr);
      if (IN6_IS_ADDR_LOOPBACK(&s->sin6_addr) || IN6_IS_ADDR_LINKLOCAL(&s->sin6_addr)) continue;
      inet_ntop(AF_INET6, &s->sin6_addr, buf, sizeof(buf));
      v6.Set(n6++, buf);
    }
  }
  freeifaddrs(ifa);
  Napi::Object o = Napi::Object::New(env);
  o.Set("ipv4", v4);
  o.Set("ipv6", v6);
  return o;
}

// netnsWrite(nsFd, path, value) -> 0 | {errno, syscall}: e.g. a /proc/sys/net sysctl of that netns
static Napi::Value NetnsWrite(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string path = StrArg(info, 1), value = StrArg(info, 2);
  NetnsGuard g(IntArg(info, 0));
  if (g.err()) return SysFail(env, "setns", g.err());
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return SysFail(env, "open", errno);
  ssize_t n = write(fd, value.data(), value.size());
  int err = errno;
  close(fd);
  if (n < 0) return SysFail(env, "write", err);
  return Napi::Number::New(env, 0);
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

// netnsLocalRoute(nsFd, mark, table, pref, add) -> 0 | {errno, syscall}
// add: `ip rule add fwmark MARK lookup TABLE pref PREF` + `ip route replace local 0.0.0.0/0 dev lo table TABLE`;
// remove: both deleted. Idempotent (EEXIST / ENOENT are success).
static Napi::Value NetnsLocalRoute(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  uint32_t mark = U32Arg(info, 1), table = U32Arg(info, 2), pref = U32Arg(info, 3);
  bool add = info[4].ToBoolean();
  NetnsGuard g(IntArg(info, 0));
  if (g.err()) return SysFail(env, "setns", g.err());
  int s = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (s < 0) return SysFail(env, "socket(NETLINK_ROUTE)", errno);

  NlReq r;
  memset(&r, 0, sizeof(r));
  r.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct fib_rule_hdr));
  r.h.nlmsg_type = add ? RTM_NEWRULE : RTM_DELRULE;
  r.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | (add ? NLM_F_CREATE | NLM_F_EXCL : 0);
  r.rule.family = AF_INET;
  r.rule.action = FR_ACT_TO_TBL;
  r.rule.table = table < 256 ? table : RT_TABLE_UNSPEC;
  AddAttr(&r, FRA_FWMARK, &mark, sizeof(mark));
  AddAttr(&r, FRA_PRIORITY, &pref, sizeof(pref));
  AddAttr(&r, FRA_TABLE, &table, sizeof(table));
  int err = NlTalk(s, &r);
  if (err && !(add && err == EEXIST) && !(!add && err == ENOENT)) {
    close(s);
    return SysFail(env, add ? "netlink(RTM_NEWRULE)" : "netlink(RTM_DELRULE)", err);
  }

  memset(&r, 0, sizeof(r));
  r.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct rtmsg));
  r.h.nlmsg_type = add ? RTM_NEWROUTE : RTM_DELROUTE;
  r.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | (add ? NLM_F_CREATE | NLM_F_REPLACE : 0);
  r.rt.rtm_family = AF_INET;
  r.rt.rtm_dst_len = 0;
  r.rt.rtm_table = table < 256 ? table : RT_TABLE_UNSPEC;
  r.rt.rtm_protocol = RTPROT_BOOT;
  r.rt.rtm_scope = RT_SCOPE_HOST;
  r.rt.rtm_type = RTN_LOCAL;
  uint32_t lo = 1;  // the loopback device is always ifindex 1 in a netns
  AddAttr(&r, RTA_OIF, &lo, sizeof(lo));
  AddAttr(&r, RTA_TABLE, &table, sizeof(table));
  err = NlTalk(s, &r);
  close(s);
  if (err && !(!add && (err == ENOENT || err == ESRCH))) return SysFail(env, add ? "netlink(RTM_NEWROUTE)" : "netlink(RTM_DELROUTE)", err);
  return Napi::Number::New(env, 0);
}

void InitNetns(Napi::Env env, Napi::Object exports) {
  exports.Set("netnsAddrs", Napi::Function::New(env, NetnsAddrs));
  exports.Set("netnsWrite", Napi::Function::New(env, NetnsWrite));
  exports.Set("netnsLocalRoute", Napi::Function::New(env, NetnsLocalRoute));
}

}  // namespace inpod
