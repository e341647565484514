// fd readiness for raw sockets Node cannot wrap (SOCK_SEQPACKET carrying SCM_RIGHTS): a
// dedicated thread per watched fd waits in poll(2) and tells JavaScript through a
// ThreadSafeFunction; it then waits until JavaScript has drained the fd and re-armed the watch,
// so it never spins on a level-triggered readable fd. No protocol logic here.
#include "addon.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <atomic>
#include <thread>

namespace inpod {

struct Watch {
  int fd;
  int stopFd;
  int rearmFd;
  Napi::ThreadSafeFunction tsfn;
};

void SignalEventfd(int efd) {
  uint64_t one = 1;
  ssize_t n = write(efd, &one, sizeof(one));
  (void)n;
}

static void Loop(Watch *w) {
  bool armed = true;
  for (;;) {
    struct pollfd p[2] = {{armed ? w->fd : w->rearmFd, POLLIN, 0}, {w->stopFd, POLLIN, 0}};
    int r = poll(p, 2, -1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 || (p[1].revents & POLLIN)) break;
    if (!armed) {
      uint64_t v;
      ssize_t n = read(w->rearmFd, &v, sizeof(v));
      (void)n;
      armed = true;
      continue;
    }
    int revents = p[0].revents;
    armed = false;
    w->tsfn.NonBlockingCall([revents](Napi::Env env, Napi::Function cb) { cb.Call({Napi::Number::New(env, revents)}); });
  }
  w->tsfn.Release();
  close(w->stopFd);
  close(w->rearmFd);
  delete w;
}

// watchFd(fd, cb(revents)) -> handle | -errno. cb runs on the JS thread each time the fd is
// readable (or hung up); call rearmWatch(handle) once the fd was drained.
static Napi::Value WatchFd(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int stopFd = eventfd(0, EFD_CLOEXEC);
  int rearmFd = eventfd(0, EFD_CLOEXEC);
  if (stopFd < 0 || rearmFd < 0) {
    int err = errno;
    if (stopFd >= 0) close(stopFd);
    if (rearmFd >= 0) close(rearmFd);
    return Errno(env, err);
  }
  auto *w = new Watch{IntArg(info, 0), stopFd, rearmFd,
                      Napi::ThreadSafeFunction::New(env, info[1].As<Napi::Function>(), "inpod-watch", 0, 1)};
  std::thread(Loop, w).detach();
  Napi::Object h = Napi::Object::New(env);
  h.Set("stopFd", stopFd);
  h.Set("rearmFd", rearmFd);
  return h;
}

static Napi::Value RearmWatch(const Napi::CallbackInfo &info) {
  SignalEventfd(info[0].As<Napi::Object>().Get("rearmFd").As<Napi::Number>().Int32Value());
  return info.Env().Undefined();
}

// unwatchFd(handle): the thread exits on its own and frees everything; the fd is not closed.
static Napi::Value UnwatchFd(const Napi::CallbackInfo &info) {
  SignalEventfd(info[0].As<Napi::Object>().Get("stopFd").As<Napi::Number>().Int32Value());
  return info.Env().Undefined();
}

void InitWatch(Napi::Env env, Napi::Object exports) {
  exports.Set("watchFd", Napi::Function::New(env, WatchFd));
  exports.Set("rearmWatch", Napi::Function::New(env, RearmWatch));
  exports.Set("unwatchFd", Napi::Function::New(env, UnwatchFd));
}

}  // namespace inpod
