// Sockets and namespaces: a socket made inside another netns in one call (setns there and back
// on the same thread, no JavaScript in between), socket options, SCM_RIGHTS fd passing, statfs.
#include "addon.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/netfilter_ipv4.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <sys/un.h>
#include <unistd.h>
#include <algorithm>
#include <cstring>
#include <vector>

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif
#ifndef SO_COOKIE
#define SO_COOKIE 57
#endif

namespace inpod {

// Runs `fn` inside the netns `nsFd` (-1: the current one) and always comes back.
template <typename F>
static Napi::Value InNetns(Napi::Env env, int nsFd, F fn) {
  if (nsFd < 0) return fn();
  int self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (self < 0) return SysFail(env, "open(/proc/thread-self/ns/net)", errno);
  if (setns(nsFd, CLONE_NEWNET) < 0) {
    int err = errno;
    close(self);
    return SysFail(env, "setns", err);
  }
  Napi::Value r = fn();
  if (setns(self, CLONE_NEWNET) < 0) abort();  // never leave the JS thread in a pod netns
  close(self);
  return r;
}

// netnsCookie(nsFd) -> bigint | {errno, syscall}
static Napi::Value NetnsCookie(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  return InNetns(env, IntArg(info, 0), [&]() -> Napi::Value {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return SysFail(env, "socket", errno);
    uint64_t c = 0;
    socklen_t l = sizeof(c);
    int r = getsockopt(s, SOL_SOCKET, SO_NETNS_COOKIE, &c, &l);
    int err = errno;
    close(s);
    if (r < 0) return SysFail(env, "getsockopt(SO_NETNS_COOKIE)", err);
    return Napi::BigInt::New(env, c);
  });
}

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

// socketIn(nsFd, {family, mark?, transparent?, reuseAddr?, bind?: {ip, port}, listen?: backlog,
//                 connect?: {ip, port}}) -> fd | {errno, syscall}
// The socket is non-blocking and close-on-exec; a connect in progress is not an error.
static Napi::Value SocketIn(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Napi::Object o = info[1].As<Napi::Object>();
  int family = o.Get("family").As<Napi::Number>().Int32Value() == 6 ? AF_INET6 : AF_INET;
  return InNetns(env, IntArg(info, 0), [&]() -> Napi::Value {
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return SysFail(env, "socket", errno);
    auto fail = [&](const char *what) {
      int err = errno;
      close(fd);
      return SysFail(env, what, err);
    };
    int one = 1;
    if (o.Has("mark")) {
      int mark = o.Get("mark").As<Napi::Number>().Int32Value();
      if (setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) < 0) return fail("setsockopt(SO_MARK)");
    }
    if (o.Has("transparent") && o.Get("transparent").ToBoolean() &&
        setsockopt(fd, family == AF_INET ? SOL_IP : SOL_IPV6, family == AF_INET ? IP_TRANSPARENT : IPV6_TRANSPARENT, &one,
                   sizeof(one)) < 0)
      return fail("setsockopt(IP_TRANSPARENT)");
    if (o.Has("reuseAddr") && o.Get("reuseAddr").ToBoolean() &&
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
      return fail("setsockopt(SO_REUSEADDR)");
    sockaddr_storage ss;
    socklen_t len;
    if (o.Has("bind")) {
      if (!ParseAddr(o.Get("bind").As<Napi::Object>(), &ss, &len)) {
        close(fd);
        return SysFail(env, "inet_pton", EINVAL);
      }
      if (bind(fd, reinterpret_cast<sockaddr *>(&ss), len) < 0) return fail("bind");
    }
    if (o.Has("listen") && listen(fd, o.Get("listen").As<Napi::Number>().Int32Value()) < 0) return fail("listen");
    if (o.Has("connect")) {
      if (!ParseAddr(o.Get("connect").As<Napi::Object>(), &ss, &len)) {
        close(fd);
        return SysFail(env, "inet_pton", EINVAL);
      }
      if (connect(fd, reinterpret_cast<sockaddr *>(&ss), len) < 0 && errno != EINPROGRESS) return fail("connect");
    }
    return Napi::Number::New(env, fd);
  });
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

// origDst(fd) -> {ip, port} | -errno : getsockopt(SOL_IP, SO_ORIGINAL_DST)
static Napi::Value OrigDst(const Napi::CallbackInfo &info) {
  sockaddr_storage ss;
  socklen_t len = sizeof(sockaddr_in);
  memset(&ss, 0, sizeof(ss));
  if (getsockopt(IntArg(info, 0), SOL_IP, SO_ORIGINAL_DST, &ss, &len) < 0) return Errno(info.Env(), errno);
  return AddrValue(info.Env(), ss);
}

static Napi::Value SockName(const Napi::CallbackInfo &info) {
  sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  if (getsockname(IntArg(info, 0), reinterpret_cast<sockaddr *>(&ss), &len) < 0) return Errno(info.Env(), errno);
  return AddrValue(info.Env(), ss);
}

static Napi::Value PeerName(const Napi::CallbackInfo &info) {
  sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  if (getpeername(IntArg(info, 0), reinterpret_cast<sockaddr *>(&ss), &len) < 0) return Errno(info.Env(), errno);
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

// unixSocket(type: 'seqpacket'|'stream') -> fd | -errno (non-blocking, close-on-exec)
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

// tcpInq(fd) -> bytes received and not yet read (SIOCINQ) | -errno
static Napi::Value TcpInq(const Napi::CallbackInfo &info) {
  int n = 0;
  if (ioctl(IntArg(info, 0), SIOCINQ, &n) < 0) return Errno(info.Env(), errno);
  return Napi::Number::New(info.Env(), n);
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

static Napi::Value UnixSocket(const Napi::CallbackInfo &info) {
  int type = StrArg(info, 0) == "seqpacket" ? SOCK_SEQPACKET : SOCK_STREAM;
  int fd = socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  return Napi::Number::New(info.Env(), fd < 0 ? -errno : fd);
}

// socketPair(type) -> [fd, fd] | -errno
static Napi::Value SocketPair(const Napi::CallbackInfo &info) {
  int type = StrArg(info, 0) == "seqpacket" ? SOCK_SEQPACKET : SOCK_STREAM;
  int sv[2];
  if (socketpair(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) return Errno(info.Env(), errno);
  Napi::Array a = Napi::Array::New(info.Env(), 2);
  a.Set(0u, sv[0]);
  a.Set(1u, sv[1]);
  return a;
}

static bool UnixAddr(const std::string &path, sockaddr_un *sa) {
  memset(sa, 0, sizeof(*sa));
  sa->sun_family = AF_UNIX;
  if (path.size() >= sizeof(sa->sun_path)) return false;
  memcpy(sa->sun_path, path.c_str(), path.size());
  return true;
}

static Napi::Value UnixBind(const Napi::CallbackInfo &info) {
  sockaddr_un sa;
  if (!UnixAddr(StrArg(info, 1), &sa)) return Errno(info.Env(), ENAMETOOLONG);
  int r = bind(IntArg(info, 0), reinterpret_cast<sockaddr *>(&sa), sizeof(sa));
  return Napi::Number::New(info.Env(), r < 0 ? -errno : 0);
}

static Napi::Value UnixConnect(const Napi::CallbackInfo &info) {
  sockaddr_un sa;
  if (!UnixAddr(StrArg(info, 1), &sa)) return Errno(info.Env(), ENAMETOOLONG);
  int r = connect(IntArg(info, 0), reinterpret_cast<sockaddr *>(&sa), sizeof(sa));
  return Napi::Number::New(info.Env(), r < 0 ? -errno : 0);
}

static Napi::Value Listen(const Napi::CallbackInfo &info) {
  int r = listen(IntArg(info, 0), IntArg(info, 1));
  return Napi::Number::New(info.Env(), r < 0 ? -errno : 0);
}

static Napi::Value Accept(const Napi::CallbackInfo &info) {
  int fd = accept4(IntArg(info, 0), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  return Napi::Number::New(info.Env(), fd < 0 ? -errno : fd);
}

// sendFds(fd, data, fds[]) -> bytes sent | -errno. One message, fds as SCM_RIGHTS.
static Napi::Value SendFds(const Napi::CallbackInfo &info) {
  auto data = info[1].As<Napi::Buffer<uint8_t>>();
  auto arr = info[2].As<Napi::Array>();
  std::vector<int> fds(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) fds[i] = arr.Get(i).As<Napi::Number>().Int32Value();
  iovec iov{data.Data(), data.Length()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> cbuf(CMSG_SPACE(sizeof(int) * (fds.empty() ? 1 : fds.size())));
  if (!fds.empty()) {
    msg.msg_control = cbuf.data();
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t n = sendmsg(IntArg(info, 0), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  return Napi::Number::New(info.Env(), n < 0 ? -errno : n);
}

// recvFds(fd, maxBytes, maxFds) -> {data, fds, truncated, ctruncated} | -errno (EAGAIN: nothing yet).
// Every fd received is returned (close-on-exec), even when the message was truncated, so the
// caller can close strays.
static Napi::Value RecvFds(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  size_t max = U32Arg(info, 1), maxFds = U32Arg(info, 2);
  std::vector<uint8_t> buf(max ? max : 1);
  std::vector<char> cbuf(CMSG_SPACE(sizeof(int) * (maxFds ? maxFds : 1)));
  iovec iov{buf.data(), buf.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf.data();
  msg.msg_controllen = cbuf.size();
  ssize_t n = recvmsg(IntArg(info, 0), &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  if (n < 0) return Errno(env, errno);
  Napi::Array fds = Napi::Array::New(env);
  uint32_t k = 0;
  for (cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const int *p = reinterpret_cast<const int *>(CMSG_DATA(c));
    for (size_t i = 0; i < count; i++) fds.Set(k++, p[i]);
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("data", Napi::Buffer<uint8_t>::Copy(env, buf.data(), static_cast<size_t>(n)));
  o.Set("fds", fds);
  o.Set("truncated", Napi::Boolean::New(env, msg.msg_flags & MSG_TRUNC));
  o.Set("ctruncated", Napi::Boolean::New(env, msg.msg_flags & MSG_CTRUNC));
  return o;
}

// statfsType(path) -> f_type | -errno
static Napi::Value StatfsType(const Napi::CallbackInfo &info) {
  struct statfs st;
  if (statfs(StrArg(info, 0).c_str(), &st) < 0) return Errno(info.Env(), errno);
  return Napi::Number::New(info.Env(), static_cast<double>(static_cast<unsigned long>(st.f_type)));
}

void InitSock(Napi::Env env, Napi::Object exports) {
  exports.Set("netnsCookie", Napi::Function::New(env, NetnsCookie));
  exports.Set("socketIn", Napi::Function::New(env, SocketIn));
  exports.Set("origDst", Napi::Function::New(env, OrigDst));
  exports.Set("sockName", Napi::Function::New(env, SockName));
  exports.Set("peerName", Napi::Function::New(env, PeerName));
  exports.Set("setsockoptInt", Napi::Function::New(env, SetsockoptInt));
  exports.Set("getsockoptInt", Napi::Function::New(env, GetsockoptInt));
  exports.Set("socketCookie", Napi::Function::New(env, SocketCookie));
  exports.Set("tcpWritten", Napi::Function::New(env, TcpWritten));
  exports.Set("tcpInq", Napi::Function::New(env, TcpInq));
  exports.Set("tcpReceived", Napi::Function::New(env, TcpReceived));
  exports.Set("recvPeek", Napi::Function::New(env, RecvPeek));
  exports.Set("recvAll", Napi::Function::New(env, RecvAll));
  exports.Set("unixSocket", Napi::Function::New(env, UnixSocket));
  exports.Set("socketPair", Napi::Function::New(env, SocketPair));
  exports.Set("unixBind", Napi::Function::New(env, UnixBind));
  exports.Set("unixConnect", Napi::Function::New(env, UnixConnect));
  exports.Set("listen", Napi::Function::New(env, Listen));
  exports.Set("accept", Napi::Function::New(env, Accept));
  exports.Set("sendFds", Napi::Function::New(env, SendFds));
  exports.Set("recvFds", Napi::Function::New(env, RecvFds));
  exports.Set("statfsType", Napi::Function::New(env, StatfsType));
}

}  // namespace inpod
