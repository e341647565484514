// The native HBONE engine's N-API face (see hbone.h): each export parses its arguments on the JS
// thread and posts one command to the engine thread (hbone_engine.cc), never blocking; events
// come back in batches, cb(array of plain objects), through one ThreadSafeFunction. The C addon
// decides nothing (ts/native/hbone.ts is the typed wrapper).
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <memory>
#include <thread>

#include "addon.h"
#include "hbone.h"

namespace inpod {
namespace hbone {

static Napi::Value ToJs(Napi::Env env, const Event &ev) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("kind", ev.kind);
  if (ev.conn >= 0) o.Set("conn", ev.conn);
  if (ev.tunnel >= 0) o.Set("tunnel", ev.tunnel);
  if (ev.listener >= 0) o.Set("listener", ev.listener);
  std::string k = ev.kind;
  if (k == "handshake" || k == "request" || k == "response") {
    Napi::Array a = Napi::Array::New(env, ev.strs.size());
    for (size_t i = 0; i < ev.strs.size(); i++) a.Set(i, Napi::String::New(env, ev.strs[i]));
    o.Set(k == "handshake" ? "uris" : "headers", a);
  }
  if (k == "response") o.Set("status", ev.status);
  if (ev.hasAddrs) {
    Napi::Object r = Napi::Object::New(env), l = Napi::Object::New(env);
    r.Set("ip", ev.rip);
    r.Set("port", ev.rport);
    l.Set("ip", ev.lip);
    l.Set("port", ev.lport);
    o.Set("remote", r);
    o.Set("local", l);
  }
  if (ev.hasBytes) {
    o.Set("sent", ev.sent);
    o.Set("received", ev.received);
  }
  if (ev.hasError) o.Set("error", ev.error);
  return o;
}

void Deliver(Engine *e) {
  if (e->events.empty()) return;
  auto *batch = new std::vector<Event>();
  batch->swap(e->events);
  auto *tsfn = static_cast<Napi::ThreadSafeFunction *>(e->tsfn);
  napi_status st = tsfn->NonBlockingCall(batch, [](Napi::Env env, Napi::Function cb, std::vector<Event> *b) {
    if (env && cb) {
      Napi::Array a = Napi::Array::New(env, b->size());
      for (size_t i = 0; i < b->size(); i++) a.Set(i, ToJs(env, (*b)[i]));
      cb.Call({a});
    }
    delete b;
  });
  if (st != napi_ok) delete batch;
}

// What the External holds: the engine is shared with its thread, which may outlive the handle
// (the engine, its ThreadSafeFunction included, is freed by whichever lets go last).
struct Handle {
  std::shared_ptr<Engine> e;
  std::thread thread;
};

static Handle *GetH(const Napi::CallbackInfo &info) { return info[0].As<Napi::External<Handle>>().Data(); }

// Posts a command; false (and the fd closed, the ctx reference dropped) if the engine stopped.
static bool Post(Handle *h, Command &&c) {
  Engine *e = h->e.get();
  {
    std::lock_guard<std::mutex> g(e->mu);
    if (!e->stopped) {
      if (c.kind == Command::kStop) e->stopped = true;
      // one wake per batch: commands queued behind a pending wake are taken with it (the thread
      // swaps the whole queue after reading the eventfd)
      bool wake = e->cmds.empty();
      e->cmds.push_back(std::move(c));
      if (wake) {
        uint64_t one = 1;
        ssize_t r = write(e->wakeFd, &one, sizeof(one));
        (void)r;
      }
      return true;
    }
  }
  if (c.fd >= 0) close(c.fd);
  if (c.ctx) SSL_CTX_free(c.ctx);
  return false;
}

static double Num(const Napi::Value &v, double dflt = 0) { return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : dflt; }

static Settings ReadSettings(const Napi::Value &v) {
  Settings s;
  if (!v.IsObject()) return s;
  Napi::Object o = v.As<Napi::Object>();
  s.streamWindowSize = static_cast<uint32_t>(Num(o.Get("streamWindowSize"), s.streamWindowSize));
  s.connectionWindowSize = static_cast<uint32_t>(Num(o.Get("connectionWindowSize"), s.connectionWindowSize));
  s.maxFrameSize = static_cast<uint32_t>(Num(o.Get("maxFrameSize"), s.maxFrameSize));
  s.maxHeaderListSize = static_cast<uint32_t>(Num(o.Get("maxHeaderListSize"), s.maxHeaderListSize));
  s.maxConcurrentStreams = static_cast<uint32_t>(Num(o.Get("maxConcurrentStreams"), s.maxConcurrentStreams));
  s.pingIntervalMs = static_cast<int64_t>(Num(o.Get("pingIntervalMs"), static_cast<double>(s.pingIntervalMs)));
  s.pingTimeoutMs = static_cast<int64_t>(Num(o.Get("pingTimeoutMs"), static_cast<double>(s.pingTimeoutMs)));
  s.handshakeTimeoutMs = static_cast<int64_t>(Num(o.Get("handshakeTimeoutMs"), static_cast<double>(s.handshakeTimeoutMs)));
  s.idleTimeoutMs = static_cast<int64_t>(Num(o.Get("idleTimeoutMs"), static_cast<double>(s.idleTimeoutMs)));
  s.resetBurst = Num(o.Get("resetBurst"), s.resetBurst);
  s.resetPerSecond = Num(o.Get("resetPerSecond"), s.resetPerSecond);
  return s;
}

static std::vector<std::string> ReadStrings(const Napi::Value &v) {
  std::vector<std::string> out;
  if (!v.IsArray()) return out;
  Napi::Array a = v.As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); i++) out.push_back(a.Get(i).ToString().Utf8Value());
  return out;
}

static SSL_CTX *CtxRef(const Napi::Value &v) {
  SSL_CTX *ctx = v.As<Napi::External<SSL_CTX>>().Data();
  SSL_CTX_up_ref(ctx);
  return ctx;
}

static Napi::Value HboneEngineNew(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  auto e = std::make_shared<Engine>();
  e->epfd = epoll_create1(EPOLL_CLOEXEC);
  e->wakeFd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  struct epoll_event ev = {};
  ev.events = EPOLLIN;
  ev.data.ptr = static_cast<Watch *>(e.get());
  if (e->epfd < 0 || e->wakeFd < 0 || epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->wakeFd, &ev) < 0) {
    int err = errno;
    if (e->epfd >= 0) close(e->epfd);
    if (e->wakeFd >= 0) close(e->wakeFd);
    return Errno(env, err);
  }
  auto *tsfn = new Napi::ThreadSafeFunction(Napi::ThreadSafeFunction::New(env, info[0].As<Napi::Function>(), "inpod-hbone", 0, 1));
  tsfn->Unref(env);
  e->tsfn = tsfn;  // the thread releases and frees it before it exits (ReleaseEvents)
  auto *h = new Handle{e, std::thread(Loop, e)};
  return Napi::External<Handle>::New(env, h, [](Napi::Env, Handle *h) {
    Command c{Command::kStop};
    Post(h, std::move(c));
    // a thread still stopping keeps the engine (its shared_ptr) until it exits
    if (h->thread.joinable()) h->thread.detach();
    delete h;
  });
}

static Napi::Value HboneEngineRef(const Napi::CallbackInfo &info) {
  Engine *e = GetH(info)->e.get();
  // under the lock: the thread frees the ThreadSafeFunction under it once stopped
  std::lock_guard<std::mutex> g(e->mu);
  auto *tsfn = static_cast<Napi::ThreadSafeFunction *>(e->tsfn);
  if (e->stopped || !tsfn) return info.Env().Undefined();
  if (info[1].ToBoolean()) tsfn->Ref(info.Env());
  else tsfn->Unref(info.Env());
  return info.Env().Undefined();
}

// hboneEngineClose(h, wait): stops the thread; with `wait`, returns once it has exited (every
// connection and fd closed; the events of the shutdown are not delivered). The process exit
// waits so: a thread still calling into a torn-down environment aborts the process.
static Napi::Value HboneEngineClose(const Napi::CallbackInfo &info) {
  Handle *h = GetH(info);
  Command c{Command::kStop};
  Post(h, std::move(c));
  if (info[1].ToBoolean() && h->thread.joinable()) h->thread.join();
  return info.Env().Undefined();
}

static Napi::Value HboneTlsContext(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Napi::Object o = info[0].As<Napi::Object>();
  std::string err;
  SSL_CTX *ctx = NewTlsContext(o.Get("certPem").ToString().Utf8Value(), o.Get("keyPem").ToString().Utf8Value(),
                               o.Get("rootPem").ToString().Utf8Value(), o.Get("server").ToBoolean(), &err);
  if (!ctx) {
    Napi::Error::New(env, err).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::External<SSL_CTX>::New(env, ctx, [](Napi::Env, SSL_CTX *c) { SSL_CTX_free(c); });
}

static Napi::Value Conn_(const Napi::CallbackInfo &info, Command::Kind kind) {
  Command c{kind};
  c.id = Num(info[1]);
  c.fd = IntArg(info, 2);
  c.ctx = CtxRef(info[3]);
  c.s = ReadSettings(info[4]);
  Post(GetH(info), std::move(c));
  return info.Env().Undefined();
}
static Napi::Value HboneClient(const Napi::CallbackInfo &info) { return Conn_(info, Command::kClient); }
static Napi::Value HboneListen(const Napi::CallbackInfo &info) { return Conn_(info, Command::kListen); }

static Napi::Value HboneListenerContext(const Napi::CallbackInfo &info) {
  Command c{Command::kListenerCtx};
  c.id = Num(info[1]);
  c.ctx = CtxRef(info[2]);
  Post(GetH(info), std::move(c));
  return info.Env().Undefined();
}

static Napi::Value Simple(const Napi::CallbackInfo &info, Command::Kind kind) {
  Command c{kind};
  c.id = Num(info[1]);
  c.flag = info.Length() > 2 && info[2].ToBoolean();
  Post(GetH(info), std::move(c));
  return info.Env().Undefined();
}
static Napi::Value HboneUnlisten(const Napi::CallbackInfo &info) { return Simple(info, Command::kUnlisten); }
static Napi::Value HboneVerdict(const Napi::CallbackInfo &info) { return Simple(info, Command::kVerdict); }
static Napi::Value HboneReset(const Napi::CallbackInfo &info) { return Simple(info, Command::kReset); }
static Napi::Value HboneConnClose(const Napi::CallbackInfo &info) { return Simple(info, Command::kConnClose); }

static Napi::Value HboneOpen(const Napi::CallbackInfo &info) {
  Command c{Command::kOpen};
  c.id = Num(info[1]);
  c.id2 = Num(info[2]);
  c.headers = ReadStrings(info[3]);
  Post(GetH(info), std::move(c));
  return info.Env().Undefined();
}

static Napi::Value HboneRespond(const Napi::CallbackInfo &info) {
  Command c{Command::kRespond};
  c.id = Num(info[1]);
  c.status = IntArg(info, 2);
  c.headers = ReadStrings(info[3]);
  c.fd = info.Length() > 4 ? IntArg(info, 4) : -1;
  c.flag = info.Length() > 5 && info[5].ToBoolean();  // the fd's connect() is still under way
  Post(GetH(info), std::move(c));
  return info.Env().Undefined();
}

static Napi::Value HboneRelay(const Napi::CallbackInfo &info) {
  Command c{Command::kRelay};
  c.id = Num(info[1]);
  c.fd = IntArg(info, 2);
  Post(GetH(info), std::move(c));
  return info.Env().Undefined();
}

static Napi::Value HboneStats(const Napi::CallbackInfo &info) {
  Engine *e = GetH(info)->e.get();
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("conns", static_cast<double>(e->statConns.load()));
  o.Set("streams", static_cast<double>(e->statStreams.load()));
  o.Set("bufferedBytes", static_cast<double>(e->statBuffered.load()));
  return o;
}

void ReleaseEvents(Engine *e) {
  std::lock_guard<std::mutex> g(e->mu);
  e->stopped = true;  // (a loop that ended on an epoll error was not told to stop)
  auto *tsfn = static_cast<Napi::ThreadSafeFunction *>(e->tsfn);
  e->tsfn = nullptr;
  if (!tsfn) return;
  tsfn->Release();
  delete tsfn;
}

}  // namespace hbone

void InitHbone(Napi::Env env, Napi::Object exports) {
  using namespace hbone;
  exports.Set("hboneEngineNew", Napi::Function::New(env, HboneEngineNew));
  exports.Set("hboneEngineRef", Napi::Function::New(env, HboneEngineRef));
  exports.Set("hboneEngineClose", Napi::Function::New(env, HboneEngineClose));
  exports.Set("hboneTlsContext", Napi::Function::New(env, HboneTlsContext));
  exports.Set("hboneClient", Napi::Function::New(env, HboneClient));
  exports.Set("hboneListen", Napi::Function::New(env, HboneListen));
  exports.Set("hboneListenerContext", Napi::Function::New(env, HboneListenerContext));
  exports.Set("hboneUnlisten", Napi::Function::New(env, HboneUnlisten));
  exports.Set("hboneVerdict", Napi::Function::New(env, HboneVerdict));
  exports.Set("hboneOpen", Napi::Function::New(env, HboneOpen));
  exports.Set("hboneRespond", Napi::Function::New(env, HboneRespond));
  exports.Set("hboneRelay", Napi::Function::New(env, HboneRelay));
  exports.Set("hboneReset", Napi::Function::New(env, HboneReset));
  exports.Set("hboneConnClose", Napi::Function::New(env, HboneConnClose));
  exports.Set("hboneStats", Napi::Function::New(env, HboneStats));
}

}  // namespace inpod
