// The one fd watcher: an epoll instance and its own thread, which tells JavaScript about events
// through a ThreadSafeFunction with the token the caller registered the fd under. What to wait
// for is the caller's choice (ts/native/epoll.ts): the ZDS sockets wait for EPOLLIN one-shot and
// re-arm once drained, so the thread never spins on a level-triggered readable fd; the fast
// path's spliced sockets, which Node does not read, wait for EPOLLRDHUP (data arriving does not
// wake them). A BPF ring buffer can be watched on the same thread. No protocol logic here.
#include "addon.h"

#include <bpf/libbpf.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <cstring>
#include <thread>

namespace inpod {

struct Epoll {
  int epfd;
  int stopFd;
  Napi::ThreadSafeFunction tsfn;
  // optional: a BPF ring buffer of u64 values (socket cookies), reported with rbToken
  struct ring_buffer *rb = nullptr;
  double rbToken = 0;
};

static constexpr uint64_t kStopToken = UINT64_MAX;
static constexpr uint64_t kRingbufToken = UINT64_MAX - 1;

static Epoll *Get(const Napi::CallbackInfo &info) { return info[0].As<Napi::External<Epoll>>().Data(); }

static int OnRingbufSample(void *ctx, void *data, size_t size) {
  auto *w = static_cast<Epoll *>(ctx);
  if (size < sizeof(uint64_t)) return 0;
  uint64_t v;
  memcpy(&v, data, sizeof(v));
  double token = w->rbToken, value = static_cast<double>(v);
  w->tsfn.NonBlockingCall([token, value](Napi::Env env, Napi::Function cb) {
    cb.Call({Napi::Number::New(env, token), Napi::Number::New(env, 0), Napi::Number::New(env, value)});
  });
  return 0;
}

static void Loop(Epoll *w) {
  struct epoll_event ev[64];
  for (;;) {
    int n = epoll_wait(w->epfd, ev, 64, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    bool stop = false;
    for (int i = 0; i < n; i++) {
      if (ev[i].data.u64 == kStopToken) {
        stop = true;
        continue;
      }
      if (ev[i].data.u64 == kRingbufToken) {
        if (w->rb) ring_buffer__consume(w->rb);
        continue;
      }
      double token = static_cast<double>(ev[i].data.u64);
      int events = static_cast<int>(ev[i].events);
      w->tsfn.NonBlockingCall(
          [token, events](Napi::Env env, Napi::Function cb) { cb.Call({Napi::Number::New(env, token), Napi::Number::New(env, events)}); });
    }
    if (stop) break;
  }
  if (w->rb) ring_buffer__free(w->rb);
  w->tsfn.Release();
  close(w->stopFd);
  close(w->epfd);
  delete w;
}

// epollNew(cb(token, events, value?)) -> handle | -errno. The thread starts unref'd: it does not
// keep the process alive unless epollRef(h, true).
static Napi::Value EpollNew(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int epfd = epoll_create1(EPOLL_CLOEXEC);
  int stopFd = eventfd(0, EFD_CLOEXEC);
  struct epoll_event se = {};
  se.events = EPOLLIN;
  se.data.u64 = kStopToken;
  if (epfd < 0 || stopFd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, stopFd, &se) < 0) {
    int err = errno;
    if (epfd >= 0) close(epfd);
    if (stopFd >= 0) close(stopFd);
    return Errno(env, err);
  }
  auto *w = new Epoll{epfd, stopFd, Napi::ThreadSafeFunction::New(env, info[0].As<Napi::Function>(), "inpod-epoll", 0, 1)};
  w->tsfn.Unref(env);
  std::thread(Loop, w).detach();
  return Napi::External<Epoll>::New(env, w);
}

// epollCtl(h, op, fd, events, token) -> 0 | -errno: epoll_ctl(2) as given (events and token
// are ignored for EPOLL_CTL_DEL). Delete an fd before closing it.
static Napi::Value EpollCtl(const Napi::CallbackInfo &info) {
  Epoll *w = Get(info);
  struct epoll_event ev = {};
  ev.events = U32Arg(info, 3);
  ev.data.u64 = static_cast<uint64_t>(info[4].As<Napi::Number>().Int64Value());
  int r = epoll_ctl(w->epfd, IntArg(info, 1), IntArg(info, 2), &ev);
  return Napi::Number::New(info.Env(), r < 0 ? -errno : 0);
}

// epollRingbuf(h, mapFd, token) -> 0 | -errno: also report each u64 written to the BPF ring
// buffer `mapFd`, as cb(token, 0, value). Once per watcher, before anything is written to the ring.
static Napi::Value EpollRingbuf(const Napi::CallbackInfo &info) {
  Epoll *w = Get(info);
  if (w->rb) return Errno(info.Env(), EBUSY);
  w->rbToken = info[2].As<Napi::Number>().DoubleValue();
  struct ring_buffer *rb = ring_buffer__new(IntArg(info, 1), OnRingbufSample, w, nullptr);
  if (!rb) return Errno(info.Env(), errno);
  w->rb = rb;
  struct epoll_event ev = {};
  ev.events = EPOLLIN;
  ev.data.u64 = kRingbufToken;
  if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, ring_buffer__epoll_fd(rb), &ev) < 0) return Errno(info.Env(), errno);
  return Napi::Number::New(info.Env(), 0);
}

// epollRef(h, on): whether the watcher keeps the process alive.
static Napi::Value EpollRef(const Napi::CallbackInfo &info) {
  Epoll *w = Get(info);
  if (info[1].ToBoolean()) w->tsfn.Ref(info.Env());
  else w->tsfn.Unref(info.Env());
  return info.Env().Undefined();
}

// epollClose(h): the thread exits and frees everything; the watched fds stay open. The handle
// must not be used again.
static Napi::Value EpollClose(const Napi::CallbackInfo &info) {
  uint64_t one = 1;
  ssize_t n = write(Get(info)->stopFd, &one, sizeof(one));
  (void)n;
  return info.Env().Undefined();
}

void InitEpoll(Napi::Env env, Napi::Object exports) {
  exports.Set("epollNew", Napi::Function::New(env, EpollNew));
  exports.Set("epollCtl", Napi::Function::New(env, EpollCtl));
  exports.Set("epollRingbuf", Napi::Function::New(env, EpollRingbuf));
  exports.Set("epollRef", Napi::Function::New(env, EpollRef));
  exports.Set("epollClose", Napi::Function::New(env, EpollClose));
}

}  // namespace inpod
