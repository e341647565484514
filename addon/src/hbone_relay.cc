// The native HBONE engine's relay of one stream to its fd (see hbone.h), as ztunnel's copy.rs:
// fd -> DATA straight into nghttp2's frame (its data provider reads the fd; DEFERRED while the fd
// is empty, resumed on EPOLLIN), DATA -> fd with what the fd does not take kept and its
// flow-control credit held until written, half-closes carried across, a reset answered with a
// reset (RST_STREAM(CANCEL) one way, SO_LINGER 0 the other).
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cerrno>
#include <cstring>

#include "hbone.h"

namespace inpod {
namespace hbone {

Stream *Find(Conn *c, int32_t sid) {
  auto it = c->streams.find(sid);
  return it == c->streams.end() ? nullptr : it->second;
}

// Closes the fd; with `reset`, as an RST (SO_LINGER {1, 0}), as ztunnel resets the app.
static void CloseFd(Stream *s, bool reset) {
  if (s->fd < 0) return;
  if (reset) {
    struct linger l = {1, 0};
    setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  }
  CloseWatched(s->eng, s->fd);
  s->fd = -1;
}

// Inside an nghttp2 callback: the stream ends (RST_STREAM(CANCEL), the fd reset) at the next flush.
void Fail(Stream *s) {
  s->h2Error = true;
  s->conn->failed.push_back(s);
  MarkDirty(s->conn);
}

void DropPending(Stream *s) {
  size_t n = s->Pending();
  if (n && s->conn && s->conn->h2) nghttp2_session_consume_connection(s->conn->h2, n);
  s->eng->statBuffered -= static_cast<int64_t>(n);
  std::string().swap(s->pend);
  s->pendOff = 0;
}

void FinishStream(Stream *s, const std::string &err, bool resetFd) {
  if (s->dead) return;
  s->dead = true;
  Engine *e = s->eng;
  Conn *c = s->conn;
  DropPending(s);
  CloseFd(s, resetFd);
  if (c) {
    c->streams.erase(s->sid);
    if (c->h2 && !s->h2Closed && s->sid > 0) c->toReset.push_back(s->sid), MarkDirty(c);
    if (c->streams.empty()) c->idleSince = NowMs();
  }
  e->tunnels.erase(s->tunnel);
  e->statStreams--;
  if (s->announced) {
    Event ev{"closed"};
    ev.tunnel = static_cast<double>(s->tunnel);
    ev.sent = s->sent;
    ev.received = s->received;
    ev.hasBytes = true;
    ev.error = err;
    ev.hasError = true;
    e->Emit(std::move(ev));
  }
  e->graveyard.push_back(s);
  // a connection whose peer is gone closes once its last stream is done: in ConnFlush, never
  // here (this may run inside an nghttp2 callback, where the session must not be freed)
  if (c && !c->dead && c->eof && c->streams.empty()) MarkDirty(c);
}

void ResetStream(Stream *s, const std::string &err) {
  s->h2Error = true;
  FinishStream(s, err, true);
}

// Done when nghttp2 closed the stream and what it delivered has reached the fd.
void MaybeFinish(Stream *s) {
  if (s->dead || !s->h2Closed) return;
  if (s->h2Error) return FinishStream(s, s->error.empty() ? "reset" : s->error, true);
  if (s->fd >= 0 && s->Pending()) return;
  FinishStream(s, s->error, false);
}

// Writes buffered DATA to the fd, returning its flow-control credit; after END_STREAM, SHUT_WR.
void FlushToFd(Stream *s) {
  Conn *c = s->conn;
  while (s->fd >= 0 && s->Pending()) {
    ssize_t n = write(s->fd, s->pend.data() + s->pendOff, s->Pending());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n < 0) {
      s->error = (errno == EPIPE || errno == ECONNRESET) ? "reset" : std::string("write: ") + strerror(errno);
      return ResetStream(s, s->error);
    }
    s->pendOff += static_cast<size_t>(n);
    s->received += static_cast<double>(n);
    s->eng->statBuffered -= n;
    if (c && c->h2) {
      if (s->h2Closed) nghttp2_session_consume_connection(c->h2, static_cast<size_t>(n));
      else nghttp2_session_consume(c->h2, s->sid, static_cast<size_t>(n));
      MarkDirty(c);
    }
  }
  if (!s->Pending()) {
    std::string().swap(s->pend);
    s->pendOff = 0;
    if (s->fd >= 0 && s->peerEnded && !s->shutWr) {
      shutdown(s->fd, SHUT_WR);
      s->shutWr = true;
    }
  } else if (s->pendOff > (1 << 20) && s->pendOff > s->pend.size() / 2) {
    s->pend.erase(0, s->pendOff);
    s->pendOff = 0;
  }
  MaybeFinish(s);
}

ssize_t ReadFd(nghttp2_session *, int32_t sid, uint8_t *buf, size_t length, uint32_t *flags, nghttp2_data_source *, void *user) {
  Conn *c = static_cast<Conn *>(user);
  Stream *s = Find(c, sid);
  if (!s || s->dead || !s->relaying || s->fd < 0) {
    if (s) s->deferred = true;
    return NGHTTP2_ERR_DEFERRED;
  }
  for (;;) {
    ssize_t n = read(s->fd, buf, length);
    if (n > 0) {
      s->sent += static_cast<double>(n);
      s->bulk = static_cast<size_t>(n) == length && length >= kSmallFrame;
      return n;
    }
    if (n == 0) {
      s->fdEof = true;
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      return 0;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      s->deferred = true;
      return NGHTTP2_ERR_DEFERRED;
    }
    // the app reset or failed: RST_STREAM(CANCEL) and the fd reset, at the next flush
    s->error = (errno == ECONNRESET || errno == EPIPE) ? "reset" : std::string("read: ") + strerror(errno);
    s->deferred = true;
    Fail(s);
    return NGHTTP2_ERR_DEFERRED;
  }
}

void StreamAttach(Stream *s, int fd) {
  bool watched = s->fd == fd;  // the app's socket the stream watched while it connected (ConnectDone)
  s->fd = fd;
  s->relaying = true;
  if (!watched) WatchFd(s->eng, fd, s);
  if (s->conn && s->conn->h2 && s->deferred) {
    s->deferred = false;
    nghttp2_session_resume_data(s->conn->h2, s->sid);
  }
  FlushToFd(s);
  if (s->conn) MarkDirty(s->conn);
}

// How long an app's connect() may take before the CONNECT is answered 503 (as connectIn's).
static constexpr int64_t kConnectTimeoutMs = 10000;

void StreamConnecting(Stream *s, int fd, std::vector<std::string> &&answer) {
  s->responded = true;  // answered (or about to be): a later respond() is ignored
  s->connecting = true;
  s->fd = fd;
  s->answer = std::move(answer);
  s->connectDeadline = NowMs() + kConnectTimeoutMs;
  WatchFd(s->eng, fd, s);
}

// The app's connect() is over: 200 and the relay, or 503 with the reason as the 'closed' error.
void ConnectDone(Stream *s, int err) {
  s->connecting = false;
  int fd = s->fd;
  if (err == 0) {
    SessionRespond(s, 200, s->answer, fd);  // the relay keeps the fd and its epoll registration
  } else {
    s->error = std::string("connect: ") + strerror(err);
    s->fd = -1;
    CloseWatched(s->eng, fd);
    SessionRespond(s, 503, {}, -1);
  }
  std::vector<std::string>().swap(s->answer);
  if (s->conn) MarkDirty(s->conn);
}

void StreamFdEvent(Stream *s, uint32_t events) {
  Conn *c = s->conn;
  if (s->connecting) {
    int err = 0;
    socklen_t len = sizeof(err);
    if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
    getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (!err && !(events & EPOLLOUT)) err = ECONNREFUSED;
    return ConnectDone(s, err);
  }
  if (events & EPOLLERR) {
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
      s->error = (err == ECONNRESET || err == EPIPE) ? "reset" : std::string("socket: ") + strerror(err);
      return ResetStream(s, s->error);
    }
  }
  if (events & EPOLLOUT) FlushToFd(s);
  if (s->dead) return;
  if ((events & (EPOLLIN | EPOLLHUP | EPOLLRDHUP)) && s->deferred && c && c->h2 && !s->fdEof && s->relaying) {
    s->deferred = false;
    nghttp2_session_resume_data(c->h2, s->sid);
    MarkDirty(c);
  }
}

}  // namespace hbone
}  // namespace inpod
