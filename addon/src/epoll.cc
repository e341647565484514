// Hang-up watching for many sockets on one thread: the fast path's spliced sockets are not read
// by Node (the kernel moves their bytes), so something must notice their FIN or reset. One
// epoll instance and one thread per watcher; each fd is armed one-shot for EPOLLRDHUP (data
// arriving does not wake it) and reported once to JavaScript with a caller's token.
#include "addon.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <thread>

namespace inpod {

struct HupWatcher {
  int epfd;
  int stopFd;
  Napi::ThreadSafeFunction tsfn;
};

static void HupLoop(HupWatcher *w) {
  struct epoll_event ev[64];
  for (;;) {
    int n = epoll_wait(w->epfd, ev, 64, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    bool stop = false;
    for (int i = 0; i < n; i++) {
      if (ev[i].data.u64 == UINT64_MAX) {
        stop = true;
        continue;
      }
      double token = static_cast<double>(ev[i].data.u64);
      int revents = static_cast<int>(ev[i].events);
      w->tsfn.NonBlockingCall(
          [token, revents](Napi::Env env, Napi::Function cb) { cb.Call({Napi::Number::New(env, token), Napi::Number::New(env, revents)}); });
    }
    if (stop) break;
  }
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
  se.data.u64 = UINT64_MAX;
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
  return h;
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
  exports.Set("hupUnwatch", Napi::Function::New(env, HupUnwatch));
  exports.Set("hupWatcherClose", Napi::Function::New(env, HupWatcherClose));
}

}  // namespace inpod
