// Unix sockets and fd passing for ZDS (ts/zds/): SOCK_SEQPACKET sockets, which Node cannot
// make, bound or connected by path, and one message with its fds as SCM_RIGHTS per call.
// listen and accept take any socket.
#include "addon.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <cstring>
#include <vector>

namespace inpod {

static int SockType(const Napi::CallbackInfo &info, size_t i) {
  return StrArg(info, i) == "seqpacket" ? SOCK_SEQPACKET : SOCK_STREAM;
}

// unixSocket(type: 'seqpacket'|'stream') -> fd | -errno (non-blocking, close-on-exec)
static Napi::Value UnixSocket(const Napi::CallbackInfo &info) {
  int fd = socket(AF_UNIX, SockType(info, 0) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  return Napi::Number::New(info.Env(), fd < 0 ? -errno : fd);
}

// socketPair(type) -> [fd, fd] | -errno
static Napi::Value SocketPair(const Napi::CallbackInfo &info) {
  int sv[2];
  if (socketpair(AF_UNIX, SockType(info, 0) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) return Errno(info.Env(), errno);
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

// unixBind(fd, path) -> 0 | -errno
static Napi::Value UnixBind(const Napi::CallbackInfo &info) {
  sockaddr_un sa;
  if (!UnixAddr(StrArg(info, 1), &sa)) return Errno(info.Env(), ENAMETOOLONG);
  int r = bind(IntArg(info, 0), reinterpret_cast<sockaddr *>(&sa), sizeof(sa));
  return Napi::Number::New(info.Env(), r < 0 ? -errno : 0);
}

// unixConnect(fd, path) -> 0 | -errno
static Napi::Value UnixConnect(const Napi::CallbackInfo &info) {
  sockaddr_un sa;
  if (!UnixAddr(StrArg(info, 1), &sa)) return Errno(info.Env(), ENAMETOOLONG);
  int r = connect(IntArg(info, 0), reinterpret_cast<sockaddr *>(&sa), sizeof(sa));
  return Napi::Number::New(info.Env(), r < 0 ? -errno : 0);
}

// listen(fd, backlog) -> 0 | -errno
static Napi::Value Listen(const Napi::CallbackInfo &info) {
  int r = listen(IntArg(info, 0), IntArg(info, 1));
  return Napi::Number::New(info.Env(), r < 0 ? -errno : 0);
}

// accept(fd) -> fd | -errno (-EAGAIN: nobody waiting); non-blocking, close-on-exec
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

void InitUnix(Napi::Env env, Napi::Object exports) {
  exports.Set("unixSocket", Napi::Function::New(env, UnixSocket));
  exports.Set("socketPair", Napi::Function::New(env, SocketPair));
  exports.Set("unixBind", Napi::Function::New(env, UnixBind));
  exports.Set("unixConnect", Napi::Function::New(env, UnixConnect));
  exports.Set("listen", Napi::Function::New(env, Listen));
  exports.Set("accept", Napi::Function::New(env, Accept));
  exports.Set("sendFds", Napi::Function::New(env, SendFds));
  exports.Set("recvFds", Napi::Function::New(env, RecvFds));
}

}  // namespace inpod
