"""An independent HBONE server (python-h2 over Python's ssl) that records what an HBONE client sends.

usage: h2server.py PORT CERT KEY ROOT
Listens on [::]:PORT, both families (run it inside a pod's netns) with mTLS 1.3 and ALPN h2, answers every
CONNECT with 200 and echoes the stream's bytes back. Prints one JSON line per thing it saw:
  {"ready": true}                                    once listening
  {"conn": N, "settings": {"<id>": value, ...}}      the client's SETTINGS, as h2 decoded them
  {"conn": N, "window": delta}                       a connection-level WINDOW_UPDATE (stream 0)
  {"conn": N, "headers": [[name, value], ...]}       a request's header block, in wire order
  {"conn": N, "ping": seconds}                       a PING (h2 acks it), seconds after the handshake
Every socket has a timeout, so it never hangs; it exits when stdin closes.
"""
import json
import socket
import ssl
import sys
import threading
import time

import h2.config
import h2.connection
import h2.events

port, cert, key, root = sys.argv[1:5]
out_lock = threading.Lock()


def emit(obj):
    with out_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def serve(raw, n, ctx):
    try:
        s = ctx.wrap_socket(raw, server_side=True)
    except (ssl.SSLError, OSError):
        raw.close()
        return
    started = time.monotonic()
    s.settimeout(120)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(
        client_side=False, header_encoding="utf-8", validate_inbound_headers=False))
    conn.initiate_connection()
    try:
        s.sendall(conn.data_to_send())
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            for ev in conn.receive_data(chunk):
                if isinstance(ev, h2.events.RemoteSettingsChanged):
                    emit({"conn": n, "settings": {str(int(k)): v.new_value for k, v in ev.changed_settings.items()}})
                elif isinstance(ev, h2.events.WindowUpdated) and ev.stream_id == 0:
                    emit({"conn": n, "window": ev.delta})
                elif isinstance(ev, h2.events.PingReceived):
                    emit({"conn": n, "ping": round(time.monotonic() - started, 3)})
                elif isinstance(ev, h2.events.RequestReceived):
                    emit({"conn": n, "headers": [[k, v] for k, v in ev.headers]})
                    conn.send_headers(ev.stream_id, [(":status", "200")])
                elif isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    if ev.data:
                        conn.send_data(ev.stream_id, ev.data)
                elif isinstance(ev, h2.events.StreamEnded):
                    conn.end_stream(ev.stream_id)
            s.sendall(conn.data_to_send())
    except Exception:  # a peer's bytes never end the server, only this connection
        pass
    finally:
        s.close()


def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(root)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    ls = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("::", int(port)))
    ls.listen(64)
    threading.Thread(target=lambda: (sys.stdin.read(), ls.close(), sys.exit(0)), daemon=True).start()
    emit({"ready": True})
    n = 0
    while True:
        try:
            raw, _ = ls.accept()
        except OSError:
            return
        n += 1
        threading.Thread(target=serve, args=(raw, n, ctx), daemon=True).start()


main()
