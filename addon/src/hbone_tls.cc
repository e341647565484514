// The native HBONE engine's TLS layer (see hbone.h): an SSL_CTX from PEM (TLS 1.3 only, ALPN
// h2, the peer's certificate required and verified against the given roots; SAN checks are
// TypeScript's), one connection's handshake, its reads into nghttp2 and its coalesced writes.
// OpenSSL is the node executable's own (its symbols resolve at load time; nothing is linked).
#include "hbone.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace inpod {
namespace hbone {

static constexpr size_t kOutChunk = 64 << 10;

static std::string OpensslError(const char *what) {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  const char *r = e ? ERR_reason_error_string(e) : nullptr;
  return std::string(what) + ": " + (r ? r : "unknown error");
}

static int AlpnSelect(SSL *, const unsigned char **out, unsigned char *outlen, const unsigned char *in, unsigned int inlen, void *) {
  for (unsigned int i = 0; i < inlen;) {
    unsigned int n = in[i];
    if (i + 1 + n > inlen) break;
    if (n == 2 && memcmp(in + i + 1, "h2", 2) == 0) {
      *out = in + i + 1;
      *outlen = 2;
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + n;
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

SSL_CTX *NewTlsContext(const std::string &certPem, const std::string &keyPem, const std::string &rootPem, bool server, std::string *err) {
  ERR_clear_error();
  SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (!ctx) return *err = OpensslError("SSL_CTX_new"), nullptr;
  auto fail = [&](const char *what) {
    *err = OpensslError(what);
    SSL_CTX_free(ctx);
    return nullptr;
  };
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  // a peer closing TCP without close_notify reads as an end (ZERO_RETURN): HTTP/2's GOAWAY, not
  // TLS, says whether the end was clean (and a truncation attack cannot cut a DATA frame short)
  SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
  if (server) {
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_alpn_select_cb(ctx, AlpnSelect, nullptr);
  } else {
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    static const unsigned char h2[] = {2, 'h', '2'};
    if (SSL_CTX_set_alpn_protos(ctx, h2, sizeof(h2)) != 0) return fail("alpn");
  }
  // a server with no certificate (none issued yet, or none valid now): every handshake fails
  // until the listener is given one (hboneListenerContext), as Node's path serves without one
  if (!(server && certPem.empty() && keyPem.empty())) {
    // the chain: the leaf first, then its intermediates
    BIO *b = BIO_new_mem_buf(certPem.data(), static_cast<int>(certPem.size()));
    X509 *leaf = PEM_read_bio_X509(b, nullptr, nullptr, nullptr);
    if (!leaf || SSL_CTX_use_certificate(ctx, leaf) != 1) {
      X509_free(leaf);
      BIO_free(b);
      return fail("certPem");
    }
    X509_free(leaf);
    while (X509 *x = PEM_read_bio_X509(b, nullptr, nullptr, nullptr)) {
      if (SSL_CTX_add0_chain_cert(ctx, x) != 1) {
        X509_free(x);
        BIO_free(b);
        return fail("certPem chain");
      }
    }
    BIO_free(b);
    ERR_clear_error();  // the end of the PEM stream
    b = BIO_new_mem_buf(keyPem.data(), static_cast<int>(keyPem.size()));
    EVP_PKEY *key = PEM_read_bio_PrivateKey(b, nullptr, nullptr, nullptr);
    BIO_free(b);
    if (!key || SSL_CTX_use_PrivateKey(ctx, key) != 1) {
      EVP_PKEY_free(key);
      return fail("keyPem");
    }
    EVP_PKEY_free(key);
    if (SSL_CTX_check_private_key(ctx) != 1) return fail("keyPem does not match certPem");
  }
  X509_STORE *store = SSL_CTX_get_cert_store(ctx);
  BIO *b = BIO_new_mem_buf(rootPem.data(), static_cast<int>(rootPem.size()));
  int roots = 0;
  while (X509 *x = PEM_read_bio_X509(b, nullptr, nullptr, nullptr)) {
    X509_STORE_add_cert(store, x);
    X509_free(x);
    roots++;
  }
  BIO_free(b);
  ERR_clear_error();
  if (roots == 0) {
    *err = "rootPem: no certificate";
    SSL_CTX_free(ctx);
    return nullptr;
  }
  return ctx;
}

std::string TlsError(SSL *ssl, int sslErr) {
  unsigned long e = ERR_peek_error();
  std::string msg;
  if (e) {
    const char *r = ERR_reason_error_string(e);
    msg = std::string("tls: ") + (r ? r : "error");
    long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    if (v != X509_V_OK) msg += std::string(" (") + X509_verify_cert_error_string(v) + ")";
  } else if (sslErr == SSL_ERROR_SYSCALL) {
    msg = errno ? std::string("tls: ") + strerror(errno) : "peer closed";
  } else if (sslErr == SSL_ERROR_ZERO_RETURN) {
    msg = "peer closed";
  } else {
    msg = "tls: error " + std::to_string(sslErr);
  }
  ERR_clear_error();
  return msg;
}

bool PeerUris(SSL *ssl, std::vector<std::string> *uris) {
  X509 *peer = SSL_get0_peer_certificate(ssl);
  if (!peer) return false;
  auto *names = static_cast<GENERAL_NAMES *>(X509_get_ext_d2i(peer, NID_subject_alt_name, nullptr, nullptr));
  if (!names) return true;
  for (int i = 0; i < sk_GENERAL_NAME_num(names); i++) {
    GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
    if (g->type != GEN_URI) continue;
    const ASN1_IA5STRING *s = g->d.uniformResourceIdentifier;
    uris->emplace_back(reinterpret_cast<const char *>(ASN1_STRING_get0_data(s)), ASN1_STRING_length(s));
  }
  GENERAL_NAMES_free(names);
  return true;
}

static void AddrText(const sockaddr_storage &ss, std::string *ip, int *port) {
  char buf[INET6_ADDRSTRLEN] = "";
  if (ss.ss_family == AF_INET) {
    auto *a = reinterpret_cast<const sockaddr_in *>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, buf, sizeof(buf));
    *port = ntohs(a->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    auto *a = reinterpret_cast<const sockaddr_in6 *>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof(buf));
    *port = ntohs(a->sin6_port);
  }
  *ip = buf;
}

void SockAddrs(int fd, Event *ev) {
  sockaddr_storage ss = {};
  socklen_t len = sizeof(ss);
  if (getpeername(fd, reinterpret_cast<sockaddr *>(&ss), &len) == 0) AddrText(ss, &ev->rip, &ev->rport);
  ss = {};
  len = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<sockaddr *>(&ss), &len) == 0) AddrText(ss, &ev->lip, &ev->lport);
  ev->hasAddrs = true;
}

// Drives the handshake; once done (and h2 negotiated), reports it and waits for the verdict.
void ConnHandshake(Conn *c) {
  ERR_clear_error();
  int r = SSL_do_handshake(c->ssl);
  if (r != 1) {
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
    CloseConn(c, TlsError(c->ssl, e));
    return;
  }
  const unsigned char *alpn = nullptr;
  unsigned int alpnLen = 0;
  SSL_get0_alpn_selected(c->ssl, &alpn, &alpnLen);
  if (alpnLen != 2 || memcmp(alpn, "h2", 2) != 0) {
    CloseConn(c, "tls: alpn h2 not negotiated");
    return;
  }
  Event ev{"handshake"};
  ev.conn = static_cast<double>(c->id);
  ev.listener = c->listener;
  if (!PeerUris(c->ssl, &ev.strs)) {
    CloseConn(c, "tls: no peer certificate");
    return;
  }
  SockAddrs(c->fd, &ev);
  c->state = Conn::kVerdict;
  c->readPending = true;
  c->eng->Emit(std::move(ev));
}

// Reads all the TLS socket holds into the nghttp2 session (flow control bounds what a peer may
// send, so reading never has to stop for back-pressure).
void ConnRead(Conn *c) {
  Engine *e = c->eng;
  while (!c->dead && c->h2 && !c->eof) {
    size_t got = 0;
    ERR_clear_error();
    int r = SSL_read_ex(c->ssl, e->rbuf, sizeof(e->rbuf), &got);
    if (r != 1) {
      int err = SSL_get_error(c->ssl, r);
      if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) break;
      std::string msg = TlsError(c->ssl, err);
      // after a GOAWAY (either way) the end is the one it announced
      if (c->closing && (msg == "peer closed" || err == SSL_ERROR_ZERO_RETURN)) msg = c->closeError;
      c->eof = true;
      c->closeError = msg;
      MarkDirty(c);
      return;
    }
    ssize_t n = nghttp2_session_mem_recv(c->h2, reinterpret_cast<const uint8_t *>(e->rbuf), got);
    if (n < 0) {
      if (c->closeError.empty()) c->closeError = std::string("h2: ") + nghttp2_strerror(static_cast<int>(n));
      c->fatal = true;
      MarkDirty(c);
      return;
    }
    MarkDirty(c);
  }
}

void MarkDirty(Conn *c) {
  if (c->dirty || c->dead) return;
  c->dirty = true;
  c->eng->dirty.push_back(c);
}

static bool OutAppend(Conn *c, const uint8_t *p, size_t n) {
  if (c->outLen + n > c->outCap) {
    size_t cap = c->outLen + n > kOutChunk ? c->outLen + n : kOutChunk;
    char *o = static_cast<char *>(realloc(c->out, cap));
    if (!o) return false;
    c->out = o;
    c->outCap = cap;
  }
  memcpy(c->out + c->outLen, p, n);
  c->outLen += n;
  return true;
}

// Sends what nghttp2 has queued, in SSL_writes of up to ~64 KiB, until the socket is full.
// Then closes the connection if it is done (GOAWAY exchanged and nothing left, or fatal).
void ConnFlush(Conn *c) {
  c->dirty = false;
  if (c->dead || c->state != Conn::kSession || !c->h2) return;
  for (;;) {
    if (c->outOff < c->outLen) {
      size_t wrote = 0;
      ERR_clear_error();
      int r = SSL_write_ex(c->ssl, c->out + c->outOff, c->outLen - c->outOff, &wrote);
      if (r != 1) {
        int err = SSL_get_error(c->ssl, r);
        if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) break;
        CloseConn(c, c->fatal || c->eof ? c->closeError : TlsError(c->ssl, err));
        return;
      }
      c->outOff += wrote;
      continue;
    }
    c->outOff = c->outLen = 0;
    std::vector<Stream *> failed;
    failed.swap(c->failed);
    for (Stream *s : failed) FinishStream(s, s->error, true);  // no-op for one already dead
    if (c->dead) return;
    for (int32_t sid : c->toReset) nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, sid, NGHTTP2_CANCEL);
    c->toReset.clear();
    while (c->outLen < kOutChunk) {
      const uint8_t *p = nullptr;
      ssize_t n = nghttp2_session_mem_send(c->h2, &p);
      if (n < 0) {
        CloseConn(c, std::string("h2: ") + nghttp2_strerror(static_cast<int>(n)));
        return;
      }
      if (n == 0 || !OutAppend(c, p, static_cast<size_t>(n))) break;
    }
    if (c->outLen == 0) break;
  }
  if (c->outLen == 0 && c->out) {
    free(c->out);
    c->out = nullptr;
    c->outCap = 0;
  }
  bool drained = c->outLen == 0;
  if (c->fatal && (drained || c->eof)) {
    // what the peer sent and nobody read is dropped first: close() with unread input makes the
    // kernel answer RST and discard what is still queued to go out, the GOAWAY just written
    // included (a peer cut off while still sending, as in a rapid reset, then never learned why)
    while (read(c->fd, c->eng->rbuf, sizeof(c->eng->rbuf)) > 0) {
    }
    CloseConn(c, c->closeError);
    return;
  }
  if (c->eof) {
    // the peer is gone: streams with bytes still going to their fd finish first (FinishStream
    // closes the connection once the last one is done); the others end now
    std::vector<Stream *> ss;
    for (auto &kv : c->streams) ss.push_back(kv.second);
    for (Stream *s : ss)
      if (!(s->h2Closed && !s->h2Error && s->fd >= 0)) FinishStream(s, EndOnClose(c, s), true);
    if (!c->dead && c->streams.empty()) CloseConn(c, c->closeError);
    return;
  }
  if (drained && c->streams.empty() && !nghttp2_session_want_read(c->h2) && !nghttp2_session_want_write(c->h2)) CloseConn(c, c->closeError);
}


}  // namespace hbone
}  // namespace inpod
