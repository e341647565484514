// The native HBONE engine's HTTP/2 layer (see hbone.h): one nghttp2 session per connection, its
// SETTINGS and keepalive, CONNECT requests and answers, GOAWAY, the rapid-reset bucket. DATA
// that an fd has not taken keeps its flow-control credit (no automatic WINDOW_UPDATE: see
// hbone_relay.cc), so a slow reader back-pressures the peer. Callbacks only record state;
// connections close outside them.
#include "hbone.h"

#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cerrno>
#include <cstring>

namespace inpod {
namespace hbone {

static const char *H2ErrorName(uint32_t code) {
  switch (code) {
    case NGHTTP2_NO_ERROR: return "NO_ERROR";
    case NGHTTP2_PROTOCOL_ERROR: return "PROTOCOL_ERROR";
    case NGHTTP2_INTERNAL_ERROR: return "INTERNAL_ERROR";
    case NGHTTP2_FLOW_CONTROL_ERROR: return "FLOW_CONTROL_ERROR";
    case NGHTTP2_SETTINGS_TIMEOUT: return "SETTINGS_TIMEOUT";
    case NGHTTP2_STREAM_CLOSED: return "STREAM_CLOSED";
    case NGHTTP2_FRAME_SIZE_ERROR: return "FRAME_SIZE_ERROR";
    case NGHTTP2_REFUSED_STREAM: return "REFUSED_STREAM";
    case NGHTTP2_CANCEL: return "CANCEL";
    case NGHTTP2_COMPRESSION_ERROR: return "COMPRESSION_ERROR";
    case NGHTTP2_CONNECT_ERROR: return "CONNECT_ERROR";
    case NGHTTP2_ENHANCE_YOUR_CALM: return "ENHANCE_YOUR_CALM";
    case NGHTTP2_INADEQUATE_SECURITY: return "INADEQUATE_SECURITY";
    case NGHTTP2_HTTP_1_1_REQUIRED: return "HTTP_1_1_REQUIRED";
    default: return "UNKNOWN";
  }
}

// Allows DATA frames up to the peer's SETTINGS_MAX_FRAME_SIZE (nghttp2 defaults to 16 KiB), but
// only 16 KiB until a read from the fd has filled a whole frame (the stream carries bulk): nghttp2
// sizes its one frame buffer per session to the largest frame it was allowed and keeps it, so a
// session that only ever carried small requests would otherwise hold 256 KiB (measured: 1000 idle
// tunnels over 200 sessions held ~23 MB more). Frames grow with the stream as ztunnel's copy
// buffers do (src/copy.rs), and no syscall asks the fd how much it holds.
static ssize_t ReadLength(nghttp2_session *, uint8_t, int32_t sid, int32_t window, int32_t connWindow, uint32_t remoteMaxFrame, void *user) {
  ssize_t n = window < connWindow ? window : connWindow;
  if (n > static_cast<ssize_t>(remoteMaxFrame)) n = remoteMaxFrame;
  if (n > (256 << 10)) n = 256 << 10;
  if (n > static_cast<ssize_t>(kSmallFrame)) {
    Stream *s = Find(static_cast<Conn *>(user), sid);
    if (s && !s->bulk) n = static_cast<ssize_t>(kSmallFrame);
  }
  return n < 1 ? 1 : n;
}

// A stream of `c` (a request it received, or one it sent) under the tunnel id `tunnel`, known to
// the connection and the engine.
static Stream *AddStream(Conn *c, int32_t sid, uint64_t tunnel) {
  auto *s = new Stream();
  s->eng = c->eng;
  s->conn = c;
  s->server = c->server;
  s->announced = !c->server;  // a client's own streams are JS's from the start
  s->sid = sid;
  s->tunnel = tunnel;
  c->streams[sid] = s;
  c->eng->tunnels[tunnel] = s;
  c->eng->statStreams++;
  return s;
}

static int OnBeginHeaders(nghttp2_session *, const nghttp2_frame *f, void *user) {
  Conn *c = static_cast<Conn *>(user);
  if (!c->server || f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  AddStream(c, f->hd.stream_id, c->eng->nextTunnelId++);
  return 0;
}

static int OnHeader(nghttp2_session *, const nghttp2_frame *f, const uint8_t *name, size_t nlen, const uint8_t *value, size_t vlen, uint8_t, void *user) {
  Conn *c = static_cast<Conn *>(user);
  Stream *s = Find(c, f->hd.stream_id);
  if (!s || s->dead) return 0;
  s->headerBytes += nlen + vlen + 32;
  if (s->headerBytes > c->s.maxHeaderListSize) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;  // the stream is reset
  if (!c->server && nlen == 7 && memcmp(name, ":status", 7) == 0) {
    s->status = atoi(std::string(reinterpret_cast<const char *>(value), vlen).c_str());
    return 0;
  }
  if (!c->server && nlen > 0 && name[0] == ':') return 0;
  s->headers.emplace_back(reinterpret_cast<const char *>(name), nlen);
  s->headers.emplace_back(reinterpret_cast<const char *>(value), vlen);
  return 0;
}

static void OnHeadersDone(Conn *c, Stream *s, const nghttp2_frame *f) {
  Engine *e = c->eng;
  if (c->server) {
    if (s->announced) return;  // trailers: nothing to report
    s->announced = true;
    Event ev{"request"};
    ev.conn = static_cast<double>(c->id);
    ev.tunnel = static_cast<double>(s->tunnel);
    ev.strs = std::move(s->headers);
    e->Emit(std::move(ev));
  } else {
    if (s->responded || s->status / 100 == 1) return;
    s->responded = true;
    Event ev{"response"};
    ev.tunnel = static_cast<double>(s->tunnel);
    ev.status = s->status;
    ev.strs = std::move(s->headers);
    e->Emit(std::move(ev));
    if (s->status != 200) {
      s->h2Error = false;
      FinishStream(s, "", false);  // RST_STREAM(CANCEL) at the next flush
    }
  }
  s->headers.clear();
  s->headerBytes = 0;
  (void)f;
}

static int OnFrameRecv(nghttp2_session *, const nghttp2_frame *f, void *user) {
  Conn *c = static_cast<Conn *>(user);
  switch (f->hd.type) {
    case NGHTTP2_SETTINGS:
      if (!c->server && !c->ready && !(f->hd.flags & NGHTTP2_FLAG_ACK)) {
        c->ready = true;
        Event ev{"ready"};
        ev.conn = static_cast<double>(c->id);
        c->eng->Emit(std::move(ev));
      }
      break;
    case NGHTTP2_PING:
      if (f->hd.flags & NGHTTP2_FLAG_ACK) {
        c->pingDeadline = 0;
        c->nextPing = NowMs() + c->s.pingIntervalMs;
      }
      break;
    case NGHTTP2_GOAWAY:
      c->goawayRecv = true;
      c->closing = true;
      c->goawayCode = f->goaway.error_code;
      c->goawayLastSid = f->goaway.last_stream_id;
      if (f->goaway.error_code != NGHTTP2_NO_ERROR) c->closeError = std::string("goaway ") + H2ErrorName(f->goaway.error_code);
      break;
    case NGHTTP2_HEADERS: {
      Stream *s = Find(c, f->hd.stream_id);
      if (!s || s->dead) break;
      if (f->hd.flags & NGHTTP2_FLAG_END_HEADERS) OnHeadersDone(c, s, f);
      if (!s->dead && (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) s->peerEnded = true, FlushToFd(s);
      break;
    }
    case NGHTTP2_DATA: {
      Stream *s = Find(c, f->hd.stream_id);
      if (s && !s->dead && (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) s->peerEnded = true, FlushToFd(s);
      break;
    }
  }
  return 0;
}

static int OnDataChunk(nghttp2_session *session, uint8_t, int32_t sid, const uint8_t *data, size_t len, void *user) {
  Conn *c = static_cast<Conn *>(user);
  Stream *s = Find(c, sid);
  if (!s || s->dead) {
    nghttp2_session_consume(session, sid, len);
    return 0;
  }
  size_t wrote = 0;
  if (s->fd >= 0 && s->Pending() == 0) {
    while (wrote < len) {
      ssize_t n = write(s->fd, data + wrote, len - wrote);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      if (n < 0) {
        nghttp2_session_consume(session, sid, len);
        s->error = (errno == EPIPE || errno == ECONNRESET) ? "reset" : std::string("write: ") + strerror(errno);
        Fail(s);
        return 0;
      }
      wrote += static_cast<size_t>(n);
    }
    if (wrote) {
      s->received += static_cast<double>(wrote);
      nghttp2_session_consume(session, sid, wrote);
      MarkDirty(c);
    }
  }
  if (wrote < len) {
    s->pend.append(reinterpret_cast<const char *>(data) + wrote, len - wrote);
    s->eng->statBuffered += static_cast<int64_t>(len - wrote);
  }
  return 0;
}

static int OnStreamClose(nghttp2_session *, int32_t sid, uint32_t code, void *user) {
  Conn *c = static_cast<Conn *>(user);
  Stream *s = Find(c, sid);
  if (!s || s->dead) return 0;
  s->h2Closed = true;
  if (code == NGHTTP2_REFUSED_STREAM && !s->responded) s->error = "refused", s->h2Error = true;
  else if (code != NGHTTP2_NO_ERROR || s->h2Error) {
    s->h2Error = true;
    if (s->error.empty()) s->error = "reset";
  }
  if (s->h2Error && s->Pending()) DropPending(s);
  if (s->h2Error && s->server && !s->responded) {
    // rapid reset: a stream reset before it was answered takes a token; none left ends the connection
    int64_t now = NowMs();
    c->resetTokens += (now - c->resetRefilled) * c->s.resetPerSecond / 1000.0;
    if (c->resetTokens > c->s.resetBurst) c->resetTokens = c->s.resetBurst;
    c->resetRefilled = now;
    if (--c->resetTokens < 0 && !c->fatal) {
      nghttp2_session_terminate_session(c->h2, NGHTTP2_ENHANCE_YOUR_CALM);
      c->closeError = "goaway ENHANCE_YOUR_CALM";
      c->fatal = true;
    }
  }
  // the fd may still have buffered DATA to take: flush, then finish
  if (!s->h2Error && s->fd >= 0 && s->Pending()) return 0;
  MaybeFinish(s);
  return 0;
}

// After a complete answer other than 200, the client is asked to stop sending (RFC 9113 8.1):
// RST_STREAM(NO_ERROR) once the HEADERS with END_STREAM is out (submitted earlier, it would
// overtake them).
static int OnFrameSend(nghttp2_session *session, const nghttp2_frame *f, void *user) {
  Conn *c = static_cast<Conn *>(user);
  if (f->hd.type == NGHTTP2_GOAWAY) {
    // ours, also the one nghttp2 sends by itself on a peer's protocol violation
    c->closing = true;
    if (f->goaway.error_code != NGHTTP2_NO_ERROR && c->closeError.empty()) c->closeError = std::string("h2: ") + H2ErrorName(f->goaway.error_code);
    return 0;
  }
  if (f->hd.type != NGHTTP2_HEADERS || !(f->hd.flags & NGHTTP2_FLAG_END_STREAM)) return 0;
  Stream *s = Find(c, f->hd.stream_id);
  if (s && !s->dead && s->rstAfterHeaders) nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, s->sid, NGHTTP2_NO_ERROR);
  return 0;
}

static int OnFrameNotSend(nghttp2_session *, const nghttp2_frame *f, int libErr, void *user) {
  Conn *c = static_cast<Conn *>(user);
  if (f->hd.type != NGHTTP2_HEADERS) return 0;
  Stream *s = Find(c, f->hd.stream_id);
  if (!s || s->dead) return 0;
  s->h2Closed = true;
  s->h2Error = true;
  s->error = (libErr == NGHTTP2_ERR_START_STREAM_NOT_ALLOWED || libErr == NGHTTP2_ERR_STREAM_CLOSING) ? "refused" : nghttp2_strerror(libErr);
  MaybeFinish(s);
  return 0;
}

// The callbacks and options every session is made with: built once (a session copies them).
struct SessionSetup {
  nghttp2_session_callbacks *cb = nullptr;
  nghttp2_option *opt = nullptr;
  SessionSetup() {
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, OnBeginHeaders);
    nghttp2_session_callbacks_set_on_header_callback(cb, OnHeader);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, OnFrameRecv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, OnDataChunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, OnStreamClose);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(cb, OnFrameNotSend);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, OnFrameSend);
    nghttp2_session_callbacks_set_data_source_read_length_callback(cb, ReadLength);
    nghttp2_option_new(&opt);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_settings(opt, 64);
  }
};

bool SessionStart(Conn *c) {
  static const SessionSetup setup;  // (thread-safe initialisation; kept for the process's life)
  int r = c->server ? nghttp2_session_server_new2(&c->h2, setup.cb, c, setup.opt) : nghttp2_session_client_new2(&c->h2, setup.cb, c, setup.opt);
  if (r != 0) return false;
  std::vector<nghttp2_settings_entry> iv = {
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, c->s.streamWindowSize},
      {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, c->s.maxFrameSize},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, c->s.maxHeaderListSize},
  };
  if (c->server) iv.push_back({NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, c->s.maxConcurrentStreams});
  else iv.insert(iv.begin(), {NGHTTP2_SETTINGS_ENABLE_PUSH, 0});
  if (nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv.data(), iv.size()) != 0) return false;
  nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0, static_cast<int32_t>(c->s.connectionWindowSize));
  int64_t now = NowMs();
  c->nextPing = now + c->s.pingIntervalMs;
  c->idleSince = now;
  c->resetTokens = c->s.resetBurst;
  c->resetRefilled = now;
  c->state = Conn::kSession;
  return true;
}

// A stream's DATA comes from its fd (hbone_relay.cc ReadFd); nghttp2 copies the provider.
static nghttp2_data_provider FromFd() {
  nghttp2_data_provider p;
  p.source.ptr = nullptr;
  p.read_callback = ReadFd;
  return p;
}
static const nghttp2_data_provider kFromFd = FromFd();

static std::vector<nghttp2_nv> Nva(const std::vector<std::string> &h) {
  std::vector<nghttp2_nv> nva;
  for (size_t i = 0; i + 1 < h.size(); i += 2) {
    nghttp2_nv nv;
    nv.name = reinterpret_cast<uint8_t *>(const_cast<char *>(h[i].data()));
    nv.namelen = h[i].size();
    nv.value = reinterpret_cast<uint8_t *>(const_cast<char *>(h[i + 1].data()));
    nv.valuelen = h[i + 1].size();
    nv.flags = NGHTTP2_NV_FLAG_NONE;
    nva.push_back(nv);
  }
  return nva;
}

bool SessionOpen(Conn *c, uint64_t tunnel, const std::vector<std::string> &headers) {
  auto nva = Nva(headers);
  int32_t sid = nghttp2_submit_request(c->h2, nullptr, nva.data(), nva.size(), &kFromFd, nullptr);
  if (sid < 0) return false;
  AddStream(c, sid, tunnel);
  MarkDirty(c);
  return true;
}

void SessionRespond(Stream *s, int status, const std::vector<std::string> &headers, int fd) {
  Conn *c = s->conn;
  s->responded = true;
  std::vector<std::string> h = {":status", std::to_string(status)};
  h.insert(h.end(), headers.begin(), headers.end());
  auto nva = Nva(h);
  if (status == 200 && fd >= 0) {
    nghttp2_submit_response(c->h2, s->sid, nva.data(), nva.size(), &kFromFd);
    StreamAttach(s, fd);
  } else {
    if (fd >= 0) close(fd);
    nghttp2_submit_response(c->h2, s->sid, nva.data(), nva.size(), nullptr);
    s->rstAfterHeaders = true;  // OnFrameSend: once the answer is out, RST_STREAM(NO_ERROR)
    MarkDirty(c);
  }
}

void SessionTick(Conn *c, int64_t now) {
  if (c->pingDeadline && now >= c->pingDeadline) return CloseConn(c, "ping timeout");
  if (c->server) {
    std::vector<Stream *> late;
    for (auto &kv : c->streams)
      if (kv.second->connecting && now >= kv.second->connectDeadline) late.push_back(kv.second);
    for (Stream *s : late) ConnectDone(s, ETIMEDOUT);
  }
  if (!c->pingDeadline && now >= c->nextPing && !c->fatal) {
    nghttp2_submit_ping(c->h2, NGHTTP2_FLAG_NONE, nullptr);
    c->pingDeadline = now + c->s.pingTimeoutMs;
    MarkDirty(c);
  }
  if (c->server && c->streams.empty() && !c->closing && now - c->idleSince >= c->s.idleTimeoutMs) {
    nghttp2_session_terminate_session(c->h2, NGHTTP2_NO_ERROR);
    c->closing = true;
    c->closeError = "idle timeout";
    MarkDirty(c);
  }
}

}  // namespace hbone
}  // namespace inpod
