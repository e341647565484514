// The one way native code enters another network namespace.
//
// INVARIANT (the one that matters most in this addon): the JavaScript thread never leaves a
// native call while inside a pod's netns, and never runs JavaScript while inside one. A socket,
// a sysctl or a route made by the proxy or the agent after a missed setns-back would land in
// the wrong namespace: a pod's traffic around the proxy, or the node's routing changed from
// inside a pod. So:
//   - NetnsGuard is the only place that calls setns(CLONE_NEWNET); every export that works in
//     another netns holds one for exactly the span of its syscalls.
//   - The destructor switches back on every path out of that span (success, early error
//     return, anything), and aborts the process if it cannot: better no proxy than a proxy
//     whose event loop runs inside a pod.
//   - Nothing inside the guarded span touches the N-API: arguments are read into C++ values
//     before the guard, results are turned into JavaScript values after it (a getter, a Proxy
//     or a prototype setter would otherwise run JavaScript inside the pod's netns).
#pragma once
#include "addon.h"  // Step
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>
#include <cerrno>
#include <cstdlib>

namespace inpod {

class NetnsGuard {
 public:
  // Enters the netns behind `nsFd`; nsFd < 0 stays in the current one (the guard does nothing).
  // On failure the thread has not moved: see err() and syscall().
  explicit NetnsGuard(int nsFd) {
    if (nsFd < 0) return;
    // The thread's own netns, opened at its first guard and kept for the thread's life: a guard
    // per proxied connection (the upstream made inside the pod) would otherwise open and close
    // /proc/thread-self/ns/net each time. It cannot go stale: only a guard moves a thread, and
    // every guard brings it back, so a thread is always in this netns outside a guard.
    // (Closed when the thread exits.)
    static thread_local HomeNetns home;
    if (home.fd < 0) home.fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (home.fd < 0) {
      Fail("open(/proc/thread-self/ns/net)");
      return;
    }
    if (setns(nsFd, CLONE_NEWNET) < 0) {
      Fail("setns");
      return;
    }
    self_ = home.fd;
  }
  ~NetnsGuard() {
    if (self_ < 0) return;
    if (setns(self_, CLONE_NEWNET) < 0) abort();  // see the invariant above
  }
  NetnsGuard(const NetnsGuard &) = delete;
  NetnsGuard &operator=(const NetnsGuard &) = delete;

  // 0 when the thread is where it was asked to be, else the errno of the failed step.
  int err() const { return err_; }
  const char *syscall() const { return syscall_; }

 private:
  struct HomeNetns {
    int fd = -1;
    ~HomeNetns() {
      if (fd >= 0) close(fd);
    }
  };
  void Fail(const char *what) {
    err_ = errno;
    syscall_ = what;
  }
  int self_ = -1;
  int err_ = 0;
  const char *syscall_ = "";
};

// Runs `body(&st)` inside the netns behind `nsFd` (nsFd < 0: this thread's own) and returns the
// step that failed, if any: the move there (st.err set, body not run) or one of body's. The thread
// is back home when it returns; `body` must not touch the N-API (see the invariant above).
template <typename Body>
Step InNetns(int nsFd, Body body) {
  Step st;
  NetnsGuard g(nsFd);
  if (g.err()) st.Fail(g.syscall(), g.err());
  else body(&st);
  return st;
}

}  // namespace inpod
