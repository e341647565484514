// The native HBONE engine's thread (see hbone.h). Every call from JS posts a command
// (hbone_napi.cc: a mutex-protected queue and an eventfd wake) and returns; the thread runs one epoll
// loop (edge-triggered: nothing spins on an fd whose bytes cannot be taken yet) over the wake fd,
// listeners, TLS connections and relayed fds, ticks timers every 100 ms while connections exist,
// and hands events to JS in batches through one ThreadSafeFunction: cb(array of plain objects).
// The C addon decides nothing: which peer is acceptable, where a stream goes, what is logged
// and counted are TypeScript's (ts/native/hbone.ts).
#include <fcntl.h>
#include <pthread.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <memory>
#include <thread>

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

// An epoll registration belongs to the socket, not to the fd: close() ends it only when no other
// fd holds the socket. The outbound path's fds are duplicates of sockets Node keeps open until
// the tunnel's end reaches JS, so a registration left behind woke the loop afterwards with its
// Watch already freed (ASan: heap-use-after-free in Loop). Every watched fd is closed here.
void CloseWatched(Engine *e, int fd) {
  epoll_ctl(e->epfd, EPOLL_CTL_DEL, fd, nullptr);
  close(fd);
}

// 'listenerClosed': an unlistened listener has no connection left (handshaking ones included).
static void ListenerClosed(Engine *e, double listener) {
  Event ev{"listenerClosed"};
  ev.listener = listener;
  e->Emit(std::move(ev));
}

// How a stream ends when its connection goes under it: 'refused' when the peer's GOAWAY said it
// never processed it (safe for JS to open elsewhere), else 'connection closed'.
const char *EndOnClose(const Conn *c, const Stream *s) {
  return !c->server && !s->responded && c->goawayRecv && s->sid > c->goawayLastSid ? "refused" : "connection closed";
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
    s->h2Error = true;
    FinishStream(s, EndOnClose(c, s), true);
  }
  c->failed.clear();
  if (c->h2) nghttp2_session_del(c->h2);
  c->h2 = nullptr;
  if (c->ssl && err.empty() && c->state == Conn::kSession) SSL_shutdown(c->ssl);  // close_notify, best effort
  if (c->ssl) SSL_free(c->ssl);
  c->ssl = nullptr;
  free(c->out);
  c->out = nullptr;
  if (c->fd >= 0) CloseWatched(e, c->fd);
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
      CloseWatched(e, l->fd);
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
      // a connection already gone (JS has not heard yet): nothing was sent, so JS may open it elsewhere
      if (!c) return ClosedWithoutStream(e, cmd.id2, "refused");
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
      if (cmd.status == 200 && cmd.fd >= 0 && cmd.flag) {
        StreamConnecting(s, cmd.fd, std::move(cmd.headers));
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


static void Shutdown(Engine *e) {
  std::vector<Conn *> cs;
  for (auto &kv : e->conns) cs.push_back(kv.second);
  for (Conn *c : cs) CloseConn(c, "engine closed");
  for (auto &kv : e->listeners) {
    CloseWatched(e, kv.second->fd);
    SSL_CTX_free(kv.second->ctx);
    e->graveyard.push_back(kv.second);
  }
  e->listeners.clear();
}

void Loop(std::shared_ptr<Engine> e) {
  pthread_setname_np(pthread_self(), "inpod-hbone");  // for top -H and perf
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
  ReleaseEvents(e.get());
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

}  // namespace hbone
}  // namespace inpod
