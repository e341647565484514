// Hang-up watching for many sockets on one thread: the fast path's spliced sockets are not read
// by Node (the kernel moves their bytes), so something must notice their FIN or reset. One
// epoll instance and one thread per watcher; each fd is armed one-shot for EPOLLRDHUP (data
// arriving does not wake it) and reported once to JavaScript with a caller's token.
#include "addon.h"

#include <bpf/libbpf.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <cstring>
#include <thread>

namespace inpod {

struct HupWatcher {
  int epfd;
  int stopFd;
  Napi::ThreadSafeFunction tsfn;
  // optional: a BPF ring buffer of u64 values (socket cookies), reported with rbToken
  struct ring_buffer *rb = nullptr;
  double rbToken = 0;
};

static constexpr uint64_t kStopToken = UINT64_MAX;
static constexpr uint64_t kRingbufToken = UINT64_MAX - 1;

static int OnRingbufSample(void *ctx, void *data, size_t size) {
  auto *w = static_cast<HupWatcher *>(ctx);
  if (size < sizeof(uint64_t)) return 0;
  uint64_t v;
  memcpy(&v, data, sizeof(v));
  double token = w->rbToken, value = static_cast<double>(v);
  w->tsfn.NonBlockingCall([token, value](Napi::Env env, Napi::Function cb) {
    cb.Call({Napi::Number::New(env, token), Napi::Number::New(env, 0), Napi::Number::New(env, value)});
  });
  return 0;
}

static void HupLoop(HupWatcher *w) {
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
      int revents = static_cast<int>(ev[i].events);
      w->tsfn.NonBlockingCall(
          [token, revents](Napi::Env env, Napi::Function cb) { cb.Call({Napi::Number::New(env, token), Napi::Number::New(env, revents)}); });
    }
    if (stop) break;
  }
  if (w->rb) ring_buffer__free(w->rb);
  w->tsfn.Release();
  close(w->stopFd);
  close(w->epfd);
  delete w;
}

// hupWatcher(cb(token, revents)) -> {epfd, stopFd} | -errno
static Napi::Value HupWatcherNew(const Napi::CallbackInfo &info) {
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
  auto *w = new HupWatcher{epfd, stopFd, Napi::ThreadSafeFunction::New(env, info[0].As<Napi::Function>(), "inpod-hup", 0, 1)};
  std::thread(HupLoop, w).detach();
  // The thread must not keep the process alive on its own.
  w->tsfn.Unref(env);
  Napi::Object h = Napi::Object::New(env);
  h.Set("epfd", epfd);
  h.Set("stopFd", stopFd);
  h.Set("ptr", Napi::External<HupWatcher>::New(env, w));
  return h;
}

// hupRingbuf(h, mapFd, token) -> 0 | -errno: also report each u64 written to the BPF ring buffer
// `mapFd`, as cb(token, 0, value). Once per watcher, before anything is written to the ring.
static Napi::Value HupRingbuf(const Napi::CallbackInfo &info) {
  auto *w = info[0].As<Napi::Object>().Get("ptr").As<Napi::External<HupWatcher>>().Data();
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

// hupWatch(h, fd, token) -> 0 | -errno: report the fd once, when its peer closes or resets.
static Napi::Value HupWatch(const Napi::CallbackInfo &info) {
  int epfd = info[0].As<Napi::Object>().Get("epfd").As<Napi::Number>().Int32Value();
  struct epoll_event ev = {};
  ev.events = EPOLLRDHUP | EPOLLONESHOT;
  ev.data.u64 = static_cast<uint64_t>(info[2].As<Napi::Number>().Int64Value());
  int r = epoll_ctl(epfd, EPOLL_CTL_ADD, IntArg(info, 1), &ev);
  return Napi::Number::New(info.Env(), r < 0 ? -errno : 0);
}

// hupRearm(h, fd, token) -> 0 | -errno: after the FIN was reported, report the fd once more
// only on error or full hang-up (EPOLLERR/EPOLLHUP are always reported).
static Napi::Value HupRearm(const Napi::CallbackInfo &info) {
  int epfd = info[0].As<Napi::Object>().Get("epfd").As<Napi::Number>().Int32Value();
  struct epoll_event ev = {};
  ev.events = EPOLLONESHOT;
  ev.data.u64 = static_cast<uint64_t>(info[2].As<Napi::Number>().Int64Value());
  int r = epoll_ctl(epfd, EPOLL_CTL_MOD, IntArg(info, 1), &ev);
  return Napi::Number::New(info.Env(), r < 0 ? -errno : 0);
}

// hupUnwatch(h, fd) -> 0 | -errno. Call before closing the fd.
static Napi::Value HupUnwatch(const Napi::CallbackInfo &info) {
  int epfd = info[0].As<Napi::Object>().Get("epfd").As<Napi::Number>().Int32Value();
  int r = epoll_ctl(epfd, EPOLL_CTL_DEL, IntArg(info, 1), nullptr);
  return Napi::Number::New(info.Env(), r < 0 ? -errno : 0);
}

// hupWatcherClose(h): the thread exits and frees everything.
static Napi::Value HupWatcherClose(const Napi::CallbackInfo &info) {
  SignalEventfd(info[0].As<Napi::Object>().Get("stopFd").As<Napi::Number>().Int32Value());
  return info.Env().Undefined();
}

void InitEpoll(Napi::Env env, Napi::Object exports) {
  exports.Set("hupWatcher", Napi::Function::New(env, HupWatcherNew));
  exports.Set("hupWatch", Napi::Function::New(env, HupWatch));
  exports.Set("hupRearm", Napi::Function::New(env, HupRearm));
  exports.Set("hupRingbuf", Napi::Function::New(env, HupRingbuf));
  exports.Set("hupUnwatch", Napi::Function::New(env, HupUnwatch));
  exports.Set("hupWatcherClose", Napi::Function::New(env, HupWatcherClose));
}

}  // namespace inpod
