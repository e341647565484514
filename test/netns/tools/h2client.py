"""An independent HBONE client (python-h2 over Python's ssl) to check inpod's 15008 listener.

usage: h2client.py HOST PORT AUTHORITY MISMATCHED_AUTHORITY CERT KEY ROOT
Prints one JSON object: what CONNECT, GET, a mismatched authority, no client certificate and a
certificate from another CA each produced, and the server's SETTINGS and connection WINDOW_UPDATE
as h2 decoded them on the CONNECT's connection.
"""
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile

import h2.config
import h2.connection
import h2.events

host, port, authority, mismatch, cert, key, root = sys.argv[1:8]


def tls(certfile=None, keyfile=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(root)
    ctx.set_alpn_protocols(["h2"])
    if certfile:
        ctx.load_cert_chain(certfile, keyfile)
    raw = socket.create_connection((host, int(port)), timeout=5)
    s = ctx.wrap_socket(raw)
    assert s.selected_alpn_protocol() == "h2"
    return s


def exchange(s, headers, data=None, wire=None):
    """One request on connection `s`; `wire`, when given, collects the server's SETTINGS and
    connection-level WINDOW_UPDATE increments."""
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8", validate_outbound_headers=False))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, headers)
    s.sendall(conn.data_to_send())
    out = {}
    body = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        for ev in conn.receive_data(chunk):
            if wire is not None and isinstance(ev, h2.events.RemoteSettingsChanged):
                wire.setdefault("settings", {}).update({str(int(k)): v.new_value for k, v in ev.changed_settings.items()})
            elif wire is not None and isinstance(ev, h2.events.WindowUpdated) and ev.stream_id == 0:
                wire.setdefault("connectionWindowUpdates", []).append(ev.delta)
            if isinstance(ev, h2.events.ResponseReceived):
                out["status"] = int(dict(ev.headers)[":status"])
                if out["status"] == 200 and data is not None:
                    conn.send_data(sid, data)
            elif isinstance(ev, h2.events.DataReceived):
                body += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                if body:
                    out["data"] = body.decode()
                s.sendall(conn.data_to_send())
                return out
        s.sendall(conn.data_to_send())
        if "status" in out and out["status"] == 200 and body:
            out["data"] = body.decode()
            return out
    return out


def attempt(fn):
    """TLS 1.3 checks the client certificate after the client's handshake completes, so the
    rejection shows as an alert or as the connection closing before any HTTP/2 response."""
    try:
        return fn() or "handshake failed"
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError, socket.timeout, OSError):
        return "handshake failed"


result = {"wire": {}}
s = tls(cert, key)
result["connect"] = exchange(s, [(":method", "CONNECT"), (":authority", authority)], b"h2-ping", result["wire"])
s.close()
s = tls(cert, key)
result["get"] = exchange(s, [(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", authority)])
s.close()
s = tls(cert, key)
result["mismatch"] = exchange(s, [(":method", "CONNECT"), (":authority", mismatch)])
s.close()
result["noCert"] = attempt(lambda: exchange(tls(), [(":method", "CONNECT"), (":authority", authority)]))

with tempfile.TemporaryDirectory() as d:
    k, c = os.path.join(d, "k.pem"), os.path.join(d, "c.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", k, "-out", c, "-days", "1", "-subj", "/O=other",
                    "-addext", "subjectAltName=URI:spiffe://cluster.local/ns/default/sa/sleep"],
                   check=True, capture_output=True)
    result["otherCa"] = attempt(lambda: exchange(tls(c, k), [(":method", "CONNECT"), (":authority", authority)]))

print(json.dumps(result))
