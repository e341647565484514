// The native HBONE engine's shared types: one engine thread owns TLS connections (OpenSSL),
// their HTTP/2 sessions (nghttp2) and the plain TCP sockets each stream is relayed to. It moves
// bytes and reports events; TypeScript decides everything (peer identity, policy, routing,
// metrics, logs) and tells the engine through commands. The C addon decides nothing.
//   hbone_tls.cc      SSL_CTX from PEM, the TLS handshake and TLS reads/writes of one connection
//   hbone_session.cc  the nghttp2 session of one connection and the relay of its streams
//   hbone_relay.cc    one stream's relay to its fd (flow control held until the fd took the bytes)
//   hbone_engine.cc   the thread: its epoll loop, timers, the commands
//   hbone_napi.cc     the N-API exports, the command queue and the event batches
#pragma once
#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>

#include <atomic>
#include <memory>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace inpod {
namespace hbone {

// What JS passed as the settings object (ts/proxy/hbone/limits.ts HboneLimits).
struct Settings {
  uint32_t streamWindowSize = 4 << 20;
  uint32_t connectionWindowSize = 16 << 20;
  uint32_t maxFrameSize = 1 << 20;
  uint32_t maxHeaderListSize = 64 << 10;
  uint32_t maxConcurrentStreams = 200;
  int64_t pingIntervalMs = 10000, pingTimeoutMs = 20000, handshakeTimeoutMs = 10000, idleTimeoutMs = 600000;
  double resetBurst = 100, resetPerSecond = 10;
};

// An event for JS, built on the engine thread and turned into a plain object on the JS thread.
struct Event {
  const char *kind;
  double conn = -1, tunnel = -1, listener = -1;
  int status = 0;
  double sent = 0, received = 0;
  std::string error;
  std::vector<std::string> strs;  // uris, or flat headers
  std::string rip, lip;
  int rport = 0, lport = 0;
  bool hasError = false, hasBytes = false, hasAddrs = false;
};

// Everything the epoll loop can be woken for starts with this; objects are freed only at the end
// of a loop iteration (dead ones first), so an event for a closed object later in the same batch
// sees dead == true instead of freed memory.
// nghttp2's own DATA chunk: frames up to this need no larger frame buffer
constexpr size_t kSmallFrame = 16 << 10;

struct Watch {
  enum Kind { kWake, kConn, kStream, kListener } kind;
  bool dead = false;
  explicit Watch(Kind k) : kind(k) {}
  virtual ~Watch() {}
};

struct Engine;
struct Conn;

struct Stream : Watch {
  Stream() : Watch(kStream) {}
  Engine *eng = nullptr;
  Conn *conn = nullptr;
  uint64_t tunnel = 0;
  int32_t sid = -1;
  int fd = -1;
  bool server = false;
  bool announced = false;   // JS has heard of it (client: always; server: 'request' emitted)
  bool responded = false;   // server: JS answered; client: a final response arrived
  bool relaying = false;    // the fd is attached and the data provider may read it
  bool deferred = false;    // the data provider returned DEFERRED (waiting for the fd)
  bool fdEof = false;       // the fd gave EOF: END_STREAM sent (or queued)
  bool peerEnded = false;   // END_STREAM received
  bool shutWr = false;      // shutdown(fd, SHUT_WR) done
  bool h2Closed = false;    // nghttp2 closed the stream (on_stream_close)
  bool h2Error = false;     // ... with an error code, or we reset it
  bool rstAfterHeaders = false;  // server: a non-200 answer, RST_STREAM(NO_ERROR) once it is sent
  std::string error;        // the 'closed' error, once known
  bool bulk = false;        // the last read from the fd filled a whole frame: frames may grow past 16 KiB
  bool connecting = false;  // server: 200 waits for the fd's connect() (then the app is there, or 503)
  int64_t connectDeadline = 0;
  std::vector<std::string> answer;  // the 200's headers, while connecting
  int status = 0;
  double sent = 0, received = 0;
  std::string pend;         // DATA not yet written to the fd (its window is not returned yet)
  size_t pendOff = 0;
  size_t headerBytes = 0;   // header list size received so far
  std::vector<std::string> headers;
  size_t Pending() const { return pend.size() - pendOff; }
};

struct Listener : Watch {
  Listener() : Watch(kListener) {}
  uint64_t id = 0;
  int fd = -1;
  SSL_CTX *ctx = nullptr;
  Settings s;
};

struct Conn : Watch {
  Conn() : Watch(kConn) {}
  enum State { kHandshake, kVerdict, kSession } state = kHandshake;
  Engine *eng = nullptr;
  uint64_t id = 0;
  double listener = -1;
  bool server = false;
  int fd = -1;
  SSL *ssl = nullptr;
  nghttp2_session *h2 = nullptr;
  Settings s;
  std::unordered_map<int32_t, Stream *> streams;
  // output: nghttp2's frames coalesced for one SSL_write; freed when drained
  char *out = nullptr;
  size_t outLen = 0, outOff = 0, outCap = 0;
  bool dirty = false;          // queued for Flush at the end of this loop iteration
  bool readPending = false;    // bytes may be waiting (read deferred while the verdict is out)
  bool ready = false;          // 'ready' emitted (client)
  bool fatal = false;          // close once the output is flushed (or now, if it cannot be)
  bool goawayRecv = false;
  uint32_t goawayCode = 0;
  int32_t goawayLastSid = INT32_MAX;
  bool closing = false;        // a GOAWAY was sent or received: close when nothing is left
  bool eof = false;            // the peer's TLS stream ended: close once flushing streams finish
  std::string closeError;      // the connClosed error when it closes
  std::vector<Stream *> failed;  // streams whose fd failed inside a callback: finished at Flush
  std::vector<int32_t> toReset;  // streams to RST_STREAM(CANCEL) at the next Flush
  int64_t handshakeDeadline = 0, nextPing = 0, pingDeadline = 0, idleSince = 0;
  double resetTokens = 0;
  int64_t resetRefilled = 0;
};

struct Command {
  enum Kind { kClient, kListen, kListenerCtx, kUnlisten, kVerdict, kOpen, kRespond, kRelay, kReset, kConnClose, kStop } kind;
  double id = 0;  // conn, listener or tunnel id
  double id2 = 0; // tunnel id for kOpen
  int fd = -1;
  SSL_CTX *ctx = nullptr;  // one reference, owned by the command
  Settings s;
  bool flag = false;
  int status = 0;
  std::vector<std::string> headers;
};

struct Engine : Watch {
  Engine() : Watch(kWake) {}
  int epfd = -1, wakeFd = -1;
  std::mutex mu;
  std::vector<Command> cmds;
  bool stopped = false;  // under mu: no command is accepted any more
  std::unordered_map<uint64_t, Conn *> conns;
  std::unordered_map<uint64_t, Stream *> tunnels;
  std::unordered_map<uint64_t, Listener *> listeners;
  // connections each listener accepted that are still open (any state: handshaking ones too),
  // and the listeners closed (hboneUnlisten) whose last connection is still open: when it
  // closes, 'listenerClosed' tells JS the listener has nothing left
  std::unordered_map<double, int> listenerConns;
  std::unordered_map<double, bool> unlistened;
  std::vector<Watch *> graveyard;
  std::vector<Conn *> dirty;
  std::vector<Event> events;
  uint64_t nextConnId = uint64_t(1) << 40, nextTunnelId = uint64_t(1) << 41;
  char rbuf[256 << 10];  // the one TLS read buffer
  std::atomic<int64_t> statConns{0}, statStreams{0}, statBuffered{0};
  void *tsfn = nullptr;  // Napi::ThreadSafeFunction*, opaque here; owned, freed by ReleaseEvents (under mu)
  void Emit(Event &&e) { events.push_back(std::move(e)); }
};

int64_t NowMs();
void WatchFd(Engine *e, int fd, Watch *w);
// Closes an fd WatchFd watched, its epoll registration first (see hbone_engine.cc).
void CloseWatched(Engine *e, int fd);

// hbone_tls.cc
SSL_CTX *NewTlsContext(const std::string &certPem, const std::string &keyPem, const std::string &rootPem, bool server, std::string *err);
std::string TlsError(SSL *ssl, int sslErr);
bool PeerUris(SSL *ssl, std::vector<std::string> *uris);
void SockAddrs(int fd, Event *ev);
void ConnHandshake(Conn *c);
void ConnRead(Conn *c);
void ConnFlush(Conn *c);
void MarkDirty(Conn *c);

// hbone_session.cc
bool SessionStart(Conn *c);
void StreamFdEvent(Stream *s, uint32_t events);
void StreamAttach(Stream *s, int fd);
// server: answer 200 once the app socket `fd` (connect() under way) is connected, else 503
void StreamConnecting(Stream *s, int fd, std::vector<std::string> &&answer);
void ConnectDone(Stream *s, int err);
bool SessionOpen(Conn *c, uint64_t tunnel, const std::vector<std::string> &headers);
void SessionRespond(Stream *s, int status, const std::vector<std::string> &headers, int fd);
void FinishStream(Stream *s, const std::string &err, bool resetFd);
void ResetStream(Stream *s, const std::string &err);
void SessionTick(Conn *c, int64_t now);

// hbone_engine.cc
void CloseConn(Conn *c, const std::string &err);
const char *EndOnClose(const Conn *c, const Stream *s);
void Loop(std::shared_ptr<Engine> e);  // the engine thread: returns once stopped

// hbone_napi.cc
void Deliver(Engine *e);        // hands the events gathered so far to JS, as one batch
void ReleaseEvents(Engine *e);  // the thread is done with the ThreadSafeFunction: released and freed

// hbone_relay.cc (stream <-> fd)
void FlushToFd(Stream *s);
ssize_t ReadFd(nghttp2_session *, int32_t sid, uint8_t *buf, size_t length, uint32_t *flags, nghttp2_data_source *, void *user);
void MaybeFinish(Stream *s);
void Fail(Stream *s);
void DropPending(Stream *s);
Stream *Find(Conn *c, int32_t sid);

}  // namespace hbone
}  // namespace inpod
