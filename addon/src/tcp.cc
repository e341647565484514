// TCP sockets: one made inside another netns in a single call (socket, options, bind, listen or
// connect, all between entering and leaving the netns on the same thread: see netns_guard.h),
// and the per-socket facts the proxy and the fast path read (original destination, name,
// cookie, send/receive queue counters) without going through Node.
#include "addon.h"
#include "netns_guard.h"

#include <arpa/inet.h>
#include <linux/netfilter_ipv4.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <unistd.h>
#include <algorithm>
#include <cstring>
#include <vector>

#ifndef SO_COOKIE
#define SO_COOKIE 57
#endif

namespace inpod {

static bool ParseAddr(const Napi::Object &o, sockaddr_storage *ss, socklen_t *len) {
  std::string ip = o.Get("ip").As<Napi::String>().Utf8Value();
  int port = o.Get("port").As<Napi::Number>().Int32Value();
  memset(ss, 0, sizeof(*ss));
  auto *s4 = reinterpret_cast<sockaddr_in *>(ss);
  if (inet_pton(AF_INET, ip.c_str(), &s4->sin_addr) == 1) {
    s4->sin_family = AF_INET;
    s4->sin_port = htons(port);
    *len = sizeof(*s4);
    return true;
  }
  auto *s6 = reinterpret_cast<sockaddr_in6 *>(ss);
  if (inet_pton(AF_INET6, ip.c_str(), &s6->sin6_addr) == 1) {
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(port);
    *len = sizeof(*s6);
    return true;
  }
  return false;
}

// A SocketSpec read out of its JavaScript object before the netns is entered.
struct SocketSpec {
  int family = AF_INET;
  bool hasMark = false;
  int mark = 0;
  bool transparent = false;
  bool reuseAddr = false;
  bool reusePort = false;
  int v6only = -1;  // IPV6_V6ONLY: -1 left as the netns's default (net.ipv6.bindv6only)
  bool hasBind = false;
  sockaddr_storage bind;
  socklen_t bindLen = 0;
  bool hasListen = false;
  int backlog = 0;
  bool hasConnect = false;
  sockaddr_storage connect;
  socklen_t connectLen = 0;
  bool noDelay = false;    // TCP_NODELAY
  bool keepalive = false;  // SO_KEEPALIVE on, with these TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT
  int keepIdle = 0, keepInterval = 0, keepCount = 0;
};

static bool ParseSpec(const Napi::Object &o, SocketSpec *s) {
  s->family = o.Get("family").As<Napi::Number>().Int32Value() == 6 ? AF_INET6 : AF_INET;
  if ((s->hasMark = o.Has("mark"))) s->mark = o.Get("mark").As<Napi::Number>().Int32Value();
  s->transparent = o.Has("transparent") && o.Get("transparent").ToBoolean();
  s->reuseAddr = o.Has("reuseAddr") && o.Get("reuseAddr").ToBoolean();
  s->reusePort = o.Has("reusePort") && o.Get("reusePort").ToBoolean();
  if (o.Has("v6only")) s->v6only = o.Get("v6only").ToBoolean() ? 1 : 0;
  if ((s->hasBind = o.Has("bind")) && !ParseAddr(o.Get("bind").As<Napi::Object>(), &s->bind, &s->bindLen)) return false;
  if ((s->hasListen = o.Has("listen"))) s->backlog = o.Get("listen").As<Napi::Number>().Int32Value();
  if ((s->hasConnect = o.Has("connect")) && !ParseAddr(o.Get("connect").As<Napi::Object>(), &s->connect, &s->connectLen))
    return false;
  s->noDelay = o.Has("noDelay") && o.Get("noDelay").ToBoolean();
  if ((s->keepalive = o.Has("keepalive"))) {
    Napi::Object k = o.Get("keepalive").As<Napi::Object>();
    s->keepIdle = k.Get("idleS").As<Napi::Number>().Int32Value();
    s->keepInterval = k.Get("intervalS").As<Napi::Number>().Int32Value();
    s->keepCount = k.Get("count").As<Napi::Number>().Int32Value();
  }
  return true;
}

// The syscalls of socketIn, in the netns the caller's guard entered: the fd, or -1 with `st` set.
static int MakeSocket(const SocketSpec &s, Step *st) {
  int fd = socket(s.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    st->Fail("socket");
    return -1;
  }
  auto fail = [&](const char *what) {
    st->Fail(what);
    close(fd);
    return -1;
  };
  int one = 1;
  if (s.hasMark && setsockopt(fd, SOL_SOCKET, SO_MARK, &s.mark, sizeof(s.mark)) < 0) return fail("setsockopt(SO_MARK)");
  if (s.transparent && setsockopt(fd, s.family == AF_INET ? SOL_IP : SOL_IPV6,
                                  s.family == AF_INET ? IP_TRANSPARENT : IPV6_TRANSPARENT, &one, sizeof(one)) < 0)
    return fail("setsockopt(IP_TRANSPARENT)");
  if (s.reuseAddr && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0) return fail("setsockopt(SO_REUSEADDR)");
  if (s.reusePort && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) return fail("setsockopt(SO_REUSEPORT)");
  if (s.v6only >= 0 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &s.v6only, sizeof(s.v6only)) < 0)
    return fail("setsockopt(IPV6_V6ONLY)");
  if (s.noDelay && setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0) return fail("setsockopt(TCP_NODELAY)");
  if (s.keepalive && (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) < 0 ||
                      setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &s.keepIdle, sizeof(s.keepIdle)) < 0 ||
                      setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &s.keepInterval, sizeof(s.keepInterval)) < 0 ||
                      setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &s.keepCount, sizeof(s.keepCount)) < 0))
    return fail("setsockopt(SO_KEEPALIVE)");
  if (s.hasBind && bind(fd, reinterpret_cast<const sockaddr *>(&s.bind), s.bindLen) < 0) return fail("bind");
  if (s.hasListen && listen(fd, s.backlog) < 0) return fail("listen");
  if (s.hasConnect && connect(fd, reinterpret_cast<const sockaddr *>(&s.connect), s.connectLen) < 0 && errno != EINPROGRESS)
    return fail("connect");
  return fd;
}

// socketIn(nsFd, {family, mark?, transparent?, reuseAddr?, reusePort?, v6only?, noDelay?, keepalive?: {idleS, intervalS, count},
//                 bind?: {ip, port}, listen?: backlog, connect?: {ip, port}}) -> fd | {errno, syscall}
// nsFd < 0: this thread's netns. The socket is non-blocking and close-on-exec; a connect in
// progress is not an error.
static Napi::Value SocketIn(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int nsFd = IntArg(info, 0);
  SocketSpec spec;
  if (!ParseSpec(info[1].As<Napi::Object>(), &spec)) return SysFail(env, "inet_pton", EINVAL);
  int fd = -1;
  Step st = InNetns(nsFd, [&](Step *st) { return (fd = MakeSocket(spec, st)) >= 0; });
  if (fd < 0) return SysFail(env, st.syscall, st.err);
  return Napi::Number::New(env, fd);
}

static Napi::Value AddrValue(Napi::Env env, const sockaddr_storage &ss) {
  char buf[INET6_ADDRSTRLEN] = "";
  Napi::Object o = Napi::Object::New(env);
  if (ss.ss_family == AF_INET) {
    auto *s4 = reinterpret_cast<const sockaddr_in *>(&ss);
    inet_ntop(AF_INET, &s4->sin_addr, buf, sizeof(buf));
    o.Set("port", ntohs(s4->sin_port));
  } else {
    auto *s6 = reinterpret_cast<const sockaddr_in6 *>(&ss);
    inet_ntop(AF_INET6, &s6->sin6_addr, buf, sizeof(buf));
    o.Set("port", ntohs(s6->sin6_port));
  }
  o.Set("ip", buf);
  return o;
}

// The address getsockopt(fd, level, opt) answers with, as {ip, port}, or -errno.
static Napi::Value AddrOpt(const Napi::CallbackInfo &info, int level, int opt, socklen_t len) {
  sockaddr_storage ss;
  memset(&ss, 0, sizeof(ss));
  if (getsockopt(IntArg(info, 0), level, opt, &ss, &len) < 0) return Errno(info.Env(), errno);
  return AddrValue(info.Env(), ss);
}

// origDst(fd) -> {ip, port} | -errno : getsockopt(SOL_IP, SO_ORIGINAL_DST)
static Napi::Value OrigDst(const Napi::CallbackInfo &info) { return AddrOpt(info, SOL_IP, SO_ORIGINAL_DST, sizeof(sockaddr_in)); }

// IPv6 netfilter's twin of SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h), not included
// here: that header's IPv4 counterpart clashes with netfilter_ipv4.h.
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif

// origDst6(fd) -> {ip, port} | -errno : getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST), for a
// connection that is IPv6 on the wire (conntrack's IPv6 getorigdst, or the eBPF getsockopt
// program's answer for it).
static Napi::Value OrigDst6(const Napi::CallbackInfo &info) { return AddrOpt(info, SOL_IPV6, IP6T_SO_ORIGINAL_DST, sizeof(sockaddr_in6)); }

// sockName(fd) -> {ip, port} | -errno
static Napi::Value SockName(const Napi::CallbackInfo &info) {
  sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  if (getsockname(IntArg(info, 0), reinterpret_cast<sockaddr *>(&ss), &len) < 0) return Errno(info.Env(), errno);
  return AddrValue(info.Env(), ss);
}

// setsockoptInt(fd, level, name, value) -> 0 | -errno
static Napi::Value SetsockoptInt(const Napi::CallbackInfo &info) {
  int v = IntArg(info, 3);
  int r = setsockopt(IntArg(info, 0), IntArg(info, 1), IntArg(info, 2), &v, sizeof(v));
  return Napi::Number::New(info.Env(), r < 0 ? -errno : 0);
}

// getsockoptInt(fd, level, name) -> value (>= 0 for the options used here) | -errno
static Napi::Value GetsockoptInt(const Napi::CallbackInfo &info) {
  int v = 0;
  socklen_t l = sizeof(v);
  if (getsockopt(IntArg(info, 0), IntArg(info, 1), IntArg(info, 2), &v, &l) < 0) return Errno(info.Env(), errno);
  return Napi::Number::New(info.Env(), v);
}

// socketCookie(fd) -> bigint | -errno
static Napi::Value SocketCookie(const Napi::CallbackInfo &info) {
  uint64_t c = 0;
  socklen_t l = sizeof(c);
  if (getsockopt(IntArg(info, 0), SOL_SOCKET, SO_COOKIE, &c, &l) < 0) return Errno(info.Env(), errno);
  return Napi::BigInt::New(info.Env(), c);
}

// dupFd(fd) -> a new fd (close-on-exec) for the same open socket | -errno: the native HBONE
// engine is handed a copy while Node keeps its own (ts/proxy/hbone/native.ts handOver).
static Napi::Value DupFd(const Napi::CallbackInfo &info) {
  int fd = fcntl(IntArg(info, 0), F_DUPFD_CLOEXEC, 0);
  return Napi::Number::New(info.Env(), fd < 0 ? -errno : fd);
}

// tcpWritten(fd) -> bytes the socket has taken for sending so far (acked + still queued), up to
// a constant fixed at connection setup | -errno. Read acked first: an ACK landing between the two
// reads can only make the sum smaller, never larger than what was written.
static Napi::Value TcpWritten(const Napi::CallbackInfo &info) {
  int fd = IntArg(info, 0);
  struct tcp_info ti = {};
  socklen_t l = sizeof(ti);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l) < 0) return Errno(info.Env(), errno);
  int outq = 0;
  if (ioctl(fd, SIOCOUTQ, &outq) < 0) return Errno(info.Env(), errno);
  return Napi::Number::New(info.Env(), static_cast<double>(ti.tcpi_bytes_acked) + outq);
}

// tcpReceived(fd) -> bytes the socket has received in order so far (tcpi_bytes_received; it follows
// rcv_nxt, so a received FIN counts as one) | -errno
static Napi::Value TcpReceived(const Napi::CallbackInfo &info) {
  struct tcp_info ti = {};
  socklen_t l = sizeof(ti);
  if (getsockopt(IntArg(info, 0), IPPROTO_TCP, TCP_INFO, &ti, &l) < 0) return Errno(info.Env(), errno);
  return Napi::Number::New(info.Env(), static_cast<double>(ti.tcpi_bytes_received));
}

// recvPeek(fd) -> bytes readable (peeked, not consumed; 0 at EOF) | -errno (-EAGAIN: none).
// On a socket in a SOCKHASH with a verdict program, a read also runs the program over data
// that was queued before the socket joined.
static Napi::Value RecvPeek(const Napi::CallbackInfo &info) {
  char b[1];
  ssize_t n = recv(IntArg(info, 0), b, sizeof(b), MSG_PEEK | MSG_DONTWAIT);
  return Napi::Number::New(info.Env(), n < 0 ? -errno : static_cast<double>(n));
}

// recvAll(fd, max) -> {data, eof, more} | -errno: reads until EAGAIN, EOF or `max` bytes.
static Napi::Value RecvAll(const Napi::CallbackInfo &info) {
  int fd = IntArg(info, 0);
  size_t max = info[1].As<Napi::Number>().Int64Value();
  std::vector<char> buf;
  bool eof = false, more = false;
  for (;;) {
    if (buf.size() >= max) {
      more = true;
      break;
    }
    size_t off = buf.size(), want = std::min<size_t>(65536, max - off);
    buf.resize(off + want);
    ssize_t n = recv(fd, buf.data() + off, want, MSG_DONTWAIT);
    if (n < 0) {
      int err = errno;
      buf.resize(off);
      if (err == EAGAIN || err == EWOULDBLOCK) break;
      if (err == EINTR) continue;
      return Errno(info.Env(), err);
    }
    buf.resize(off + n);
    if (n == 0) {
      eof = true;
      break;
    }
  }
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("data", Napi::Buffer<char>::Copy(info.Env(), buf.data(), buf.size()));
  o.Set("eof", eof);
  o.Set("more", more);
  return o;
}

void InitTcp(Napi::Env env, Napi::Object exports) {
  exports.Set("socketIn", Napi::Function::New(env, SocketIn));
  exports.Set("origDst", Napi::Function::New(env, OrigDst));
  exports.Set("origDst6", Napi::Function::New(env, OrigDst6));
  exports.Set("sockName", Napi::Function::New(env, SockName));
  exports.Set("setsockoptInt", Napi::Function::New(env, SetsockoptInt));
  exports.Set("getsockoptInt", Napi::Function::New(env, GetsockoptInt));
  exports.Set("socketCookie", Napi::Function::New(env, SocketCookie));
  exports.Set("dupFd", Napi::Function::New(env, DupFd));
  exports.Set("tcpWritten", Napi::Function::New(env, TcpWritten));
  exports.Set("tcpReceived", Napi::Function::New(env, TcpReceived));
  exports.Set("recvPeek", Napi::Function::New(env, RecvPeek));
  exports.Set("recvAll", Napi::Function::New(env, RecvAll));
}

}  // namespace inpod
