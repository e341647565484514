// The native HBONE engine's thread and its N-API face (see hbone.h). Every call from JS posts a
// command (a mutex-protected queue and an eventfd wake) and returns; the thread runs one epoll
// loop (edge-triggered: nothing spins on an fd whose bytes cannot be taken yet) over the wake fd,
// listeners, TLS connections and relayed fds, ticks timers every 100 ms while connections exist,
// and hands events to JS in batches through one ThreadSafeFunction: cb(array of plain objects).
// The C addon decides nothing: which peer is acceptable, where a stream goes, what is logged
// and counted are TypeScript's (ts/native/hbone.ts).
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <memory>
#include <thread>

#include "addon.h"
#include "hbone.h"

namespace inpod {
namespace hbone {

int64_t NowMs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void WatchFd(Engine *e, int fd, Watch *w) {
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0 && !(fl & O_NONBLOCK)) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
  struct epoll_event ev = {};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  if (w->kind == Watch::kListener) ev.events = EPOLLIN;
  ev.data.ptr = w;
  epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev);
}

// 'listenerClosed': an unlistened listener has no connection left (handshaking ones included).
static void ListenerClosed(Engine *e, double listener) {
  Event ev{"listenerClosed"};
  ev.listener = listener;
  e->Emit(std::move(ev));
}

void CloseConn(Conn *c, const std::string &err) {
  if (c->dead) return;
  // dead first: finishing the last stream of a connection at EOF would close it again from
  // FinishStream (twice in the graveyard, two 'connClosed')
  c->dead = true;
  Engine *e = c->eng;
  std::vector<Stream *> ss;
  for (auto &kv : c->streams) ss.push_back(kv.second);
  for (Stream *s : ss) {
    bool refused = !c->server && !s->responded && c->goawayRecv && s->sid > c->goawayLastSid;
    s->h2Error = true;
    FinishStream(s, refused ? "refused" : "connection closed", true);
  }
  c->failed.clear();
  if (c->h2) nghttp2_session_del(c->h2);
  c->h2 = nullptr;
  if (c->ssl && err.empty() && c->state == Conn::kSession) SSL_shutdown(c->ssl);  // close_notify, best effort
  if (c->ssl) SSL_free(c->ssl);
  c->ssl = nullptr;
  free(c->out);
  c->out = nullptr;
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  e->conns.erase(c->id);
  e->statConns--;
  Event ev{"connClosed"};
  ev.conn = static_cast<double>(c->id);
  ev.error = err;
  ev.hasError = true;
  e->Emit(std::move(ev));
  e->graveyard.push_back(c);
  if (c->server && --e->listenerConns[c->listener] == 0) {
    e->listenerConns.erase(c->listener);
    if (e->unlistened.erase(c->listener)) ListenerClosed(e, c->listener);
  }
}

// A connection for `fd` (owned from now on) over `ctx` (this takes a reference).
static Conn *NewConn(Engine *e, uint64_t id, int fd, SSL_CTX *ctx, const Settings &s, bool server, double listener) {
  auto *c = new Conn();
  c->eng = e;
  c->id = id;
  c->fd = fd;
  c->server = server;
  c->listener = listener;
  if (server) e->listenerConns[listener]++;
  c->s = s;
  c->handshakeDeadline = NowMs() + s.handshakeTimeoutMs;
  e->conns[id] = c;
  e->statConns++;
  c->ssl = SSL_new(ctx);
  if (!c->ssl || SSL_set_fd(c->ssl, fd) != 1) {
    CloseConn(c, TlsError(c->ssl, SSL_ERROR_SSL));
    return nullptr;
  }
  if (server) SSL_set_accept_state(c->ssl);
  else SSL_set_connect_state(c->ssl);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  WatchFd(e, fd, c);
  ConnHandshake(c);
  return c;
}

static void Accept(Engine *e, Listener *l) {
  for (;;) {
    int fd = accept4(l->fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;  // EAGAIN, or out of fds (EMFILE): the next connection retries
    }
    NewConn(e, e->nextConnId++, fd, l->ctx, l->s, true, static_cast<double>(l->id));
  }
}

static void OnConnEvent(Conn *c, uint32_t events) {
  if (c->state == Conn::kHandshake) return ConnHandshake(c);
  if (c->state == Conn::kVerdict) return;  // read once the verdict is in
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) ConnRead(c);
  MarkDirty(c);
}

static Stream *Tunnel(Engine *e, double id) {
  auto it = e->tunnels.find(static_cast<uint64_t>(id));
  return it == e->tunnels.end() || it->second->dead ? nullptr : it->second;
}

static Conn *FindConn(Engine *e, double id) {
  auto it = e->conns.find(static_cast<uint64_t>(id));
  return it == e->conns.end() || it->second->dead ? nullptr : it->second;
}

static void ClosedWithoutStream(Engine *e, double tunnel, const char *err) {
  Event ev{"closed"};
  ev.tunnel = tunnel;
  ev.hasBytes = ev.hasError = true;
  ev.error = err;
  e->Emit(std::move(ev));
}

static void Run(Engine *e, Command &cmd) {
  switch (cmd.kind) {
    case Command::kClient:
      if (FindConn(e, cmd.id) || e->conns.count(static_cast<uint64_t>(cmd.id))) {
        close(cmd.fd);  // an id in use: the new one is refused rather than confused
        break;
      }
      NewConn(e, static_cast<uint64_t>(cmd.id), cmd.fd, cmd.ctx, cmd.s, false, -1);
      break;
    case Command::kListen: {
      auto *l = new Listener();
      l->id = static_cast<uint64_t>(cmd.id);
      l->fd = cmd.fd;
      l->ctx = cmd.ctx;
      cmd.ctx = nullptr;
      l->s = cmd.s;
      if (e->listeners.count(l->id)) {
        close(l->fd);
        SSL_CTX_free(l->ctx);
        delete l;
        break;
      }
      e->listeners[l->id] = l;
      WatchFd(e, l->fd, l);
      Accept(e, l);
      break;
    }
    case Command::kListenerCtx: {
      auto it = e->listeners.find(static_cast<uint64_t>(cmd.id));
      if (it == e->listeners.end()) break;
      std::swap(it->second->ctx, cmd.ctx);
      break;
    }
    case Command::kUnlisten: {
      auto it = e->listeners.find(static_cast<uint64_t>(cmd.id));
      if (it == e->listeners.end()) break;
      Listener *l = it->second;
      e->listeners.erase(it);
      close(l->fd);
      SSL_CTX_free(l->ctx);
      l->dead = true;
      e->graveyard.push_back(l);
      // handshakes under way are finished and reported as usual; JS hears when the last is over
      if (e->listenerConns.count(cmd.id)) e->unlistened[cmd.id] = true;
      else ListenerClosed(e, cmd.id);
      break;
    }
    case Command::kVerdict: {
      Conn *c = FindConn(e, cmd.id);
      if (!c || c->state != Conn::kVerdict) break;
      if (!cmd.flag) return CloseConn(c, "rejected");
      if (!SessionStart(c)) return CloseConn(c, "h2: session setup failed");
      ConnRead(c);  // the peer's preface may already be waiting (edge-triggered)
      MarkDirty(c);
      break;
    }
    case Command::kOpen: {
      Conn *c = FindConn(e, cmd.id);
      if (Tunnel(e, cmd.id2)) break;  // an id in use: ignored
      if (!c) return ClosedWithoutStream(e, cmd.id2, "connection closed");
      if (c->state != Conn::kSession || c->server) return ClosedWithoutStream(e, cmd.id2, "connection not ready");
      if (c->closing || c->fatal || c->eof) return ClosedWithoutStream(e, cmd.id2, "refused");
      if (!SessionOpen(c, static_cast<uint64_t>(cmd.id2), cmd.headers)) ClosedWithoutStream(e, cmd.id2, "refused");
      break;
    }
    case Command::kRespond: {
      Stream *s = Tunnel(e, cmd.id);
      if (!s || !s->server || s->responded || !s->conn || !s->conn->h2) {
        if (cmd.fd >= 0) close(cmd.fd);
        break;
      }
      SessionRespond(s, cmd.status, cmd.headers, cmd.status == 200 ? cmd.fd : -1);
      if (cmd.status != 200 && cmd.fd >= 0) close(cmd.fd);
      break;
    }
    case Command::kRelay: {
      Stream *s = Tunnel(e, cmd.id);
      if (!s || s->server || s->fd >= 0 || s->status != 200) {
        close(cmd.fd);
        break;
      }
      StreamAttach(s, cmd.fd);
      break;
    }
    case Command::kReset: {
      Stream *s = Tunnel(e, cmd.id);
      if (s) ResetStream(s, "reset by proxy");
      break;
    }
    case Command::kConnClose: {
      Conn *c = FindConn(e, cmd.id);
      if (!c) break;
      if (!cmd.flag || c->state != Conn::kSession) return CloseConn(c, cmd.flag ? "" : "connection closed");
      if (!c->closing) {
        nghttp2_submit_goaway(c->h2, NGHTTP2_FLAG_NONE, c->server ? nghttp2_session_get_last_proc_stream_id(c->h2) : 0, NGHTTP2_NO_ERROR, nullptr, 0);
        c->closing = true;
      }
      MarkDirty(c);
      break;
    }
    case Command::kStop:
      break;
  }
}

static void Tick(Engine *e, int64_t now) {
  std::vector<Conn *> cs;
  for (auto &kv : e->conns) cs.push_back(kv.second);
  for (Conn *c : cs) {
    if (c->dead) continue;
    if (c->state == Conn::kHandshake && now >= c->handshakeDeadline) CloseConn(c, "tls handshake timeout");
    else if (c->state == Conn::kSession) SessionTick(c, now);
  }
}

static void Deliver(Engine *e);

static void Shutdown(Engine *e) {
  std::vector<Conn *> cs;
  for (auto &kv : e->conns) cs.push_back(kv.second);
  for (Conn *c : cs) CloseConn(c, "engine closed");
  for (auto &kv : e->listeners) {
    close(kv.second->fd);
    SSL_CTX_free(kv.second->ctx);
    e->graveyard.push_back(kv.second);
  }
  e->listeners.clear();
}

static void Loop(std::shared_ptr<Engine> e) {
  struct epoll_event evs[128];
  bool stop = false;
  int64_t nextTick = NowMs() + 100;
  while (!stop) {
    int timeout = e->conns.empty() ? -1 : static_cast<int>(std::max<int64_t>(0, nextTick - NowMs()));
    int n = epoll_wait(e->epfd, evs, 128, timeout);
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < n; i++) {
      auto *w = static_cast<Watch *>(evs[i].data.ptr);
      if (w->dead) continue;
      switch (w->kind) {
        case Watch::kWake: {
          uint64_t v;
          ssize_t r = read(e->wakeFd, &v, sizeof(v));
          (void)r;
          std::vector<Command> cmds;
          {
            std::lock_guard<std::mutex> g(e->mu);
            cmds.swap(e->cmds);
          }
          for (Command &c : cmds) {
            if (c.kind == Command::kStop) stop = true;
            Run(e.get(), c);
            if (c.ctx) SSL_CTX_free(c.ctx);
            c.ctx = nullptr;
          }
          break;
        }
        case Watch::kListener: Accept(e.get(), static_cast<Listener *>(w)); break;
        case Watch::kConn: OnConnEvent(static_cast<Conn *>(w), evs[i].events); break;
        case Watch::kStream: StreamFdEvent(static_cast<Stream *>(w), evs[i].events); break;
      }
    }
    int64_t now = NowMs();
    if (now >= nextTick) {
      Tick(e.get(), now);
      nextTick = now + 100;
    }
    if (stop) Shutdown(e.get());
    for (size_t i = 0; i < e->dirty.size(); i++) ConnFlush(e->dirty[i]);  // may append
    e->dirty.clear();
    Deliver(e.get());
    for (Watch *w : e->graveyard) delete w;
    e->graveyard.clear();
  }
  auto *tsfn = static_cast<Napi::ThreadSafeFunction *>(e->tsfn);
  tsfn->Release();
  {
    std::lock_guard<std::mutex> g(e->mu);
    for (Command &c : e->cmds) {
      if (c.fd >= 0) close(c.fd);
      if (c.ctx) SSL_CTX_free(c.ctx);
    }
    e->cmds.clear();
  }
  close(e->epfd);
  close(e->wakeFd);
}

// ---- JS thread ----

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

static void Deliver(Engine *e) {
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

// What the External holds: the engine is shared with its thread, which may outlive the handle.
struct Handle {
  std::shared_ptr<Engine> e;
  Napi::ThreadSafeFunction tsfn;
};

static Handle *GetH(const Napi::CallbackInfo &info) { return info[0].As<Napi::External<Handle>>().Data(); }

// Posts a command; false (and the fd closed, the ctx reference dropped) if the engine stopped.
static bool Post(Handle *h, Command &&c) {
  Engine *e = h->e.get();
  {
    std::lock_guard<std::mutex> g(e->mu);
    if (!e->stopped) {
      if (c.kind == Command::kStop) e->stopped = true;
      e->cmds.push_back(std::move(c));
      uint64_t one = 1;
      ssize_t r = write(e->wakeFd, &one, sizeof(one));
      (void)r;
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
  auto *h = new Handle{e, Napi::ThreadSafeFunction::New(env, info[0].As<Napi::Function>(), "inpod-hbone", 0, 1)};
  h->tsfn.Unref(env);
  e->tsfn = &h->tsfn;  // the thread releases it before it exits; the Handle outlives that (below)
  std::thread(Loop, e).detach();
  return Napi::External<Handle>::New(env, h, [](Napi::Env, Handle *h) {
    Command c{Command::kStop};
    Post(h, std::move(c));
    // the thread may still use h->tsfn: the Handle is leaked on purpose (one per engine)
  });
}

static Napi::Value HboneEngineRef(const Napi::CallbackInfo &info) {
  Handle *h = GetH(info);
  {
    std::lock_guard<std::mutex> g(h->e->mu);
    if (h->e->stopped) return info.Env().Undefined();
  }
  if (info[1].ToBoolean()) h->tsfn.Ref(info.Env());
  else h->tsfn.Unref(info.Env());
  return info.Env().Undefined();
}

static Napi::Value HboneEngineClose(const Napi::CallbackInfo &info) {
  Command c{Command::kStop};
  Post(GetH(info), std::move(c));
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
