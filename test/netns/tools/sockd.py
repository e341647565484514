"""A socket daemon for real-namespace tests: run inside a pod netns (and the test's cgroup),
driven by JSON lines on stdin, one JSON reply line per request on stdout.

It stands in for a proxy or an app: listeners that accept in the background, record what each
accepted socket saw (peer, local address, SO_ORIGINAL_DST) and answer every chunk received with
"<tag>:<chunk>"; client connections with SO_MARK / IP_TRANSPARENT / bind options. A host with a
':' (e.g. "::" or "::ffff:10.200.0.2") makes a dual-stack AF_INET6 socket, as Java and other
runtimes use by default (IPv6 only with "v6only"). Every blocking call has a timeout, so a test can never hang on it.
"""
import errno
import json
import socket
import struct
import sys
import threading

SO_ORIGINAL_DST = 80
IP_TRANSPARENT = 19
SO_MARK = 36

lock = threading.Lock()
listeners = {}  # id -> {sock, tag, accepted: [...]}
conns = {}  # id -> socket
next_id = [0]


def new_id(prefix):
    with lock:
        next_id[0] += 1
        return f"{prefix}{next_id[0]}"


def addr(a):
    return {"host": a[0], "port": a[1]}


def err_name(e):
    if isinstance(e, socket.timeout):
        return "ETIMEDOUT"
    code = getattr(e, "errno", None)
    return errno.errorcode.get(code, str(e)) if code else str(e)


def orig_dst(s):
    """SO_ORIGINAL_DST as a proxy asks it: SOL_IP for IPv4 on the wire (an AF_INET socket, or an
    AF_INET6 one whose peer is IPv4-mapped), else IPv6's twin getsockopt(SOL_IPV6,
    IP6T_SO_ORIGINAL_DST), which answers a sockaddr_in6."""
    try:
        if s.family == socket.AF_INET6 and not s.getpeername()[0].startswith("::ffff:"):
            raw = s.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
            port, ip = struct.unpack("!2xH4x16s4x", raw)
            return {"host": socket.inet_ntop(socket.AF_INET6, ip), "port": port}
        raw = s.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, ip = struct.unpack("!2xH4s8x", raw)
        return {"host": socket.inet_ntoa(ip), "port": port}
    except OSError as e:
        return err_name(e)


def serve(conn, tag, echo, hangup=False):
    """Answers each chunk with "<tag>:<chunk>", or (echo) returns the bytes unchanged and
    half-closes after the peer did, so a client can check every byte. `hangup`: answers the
    first chunk and closes at once, before the peer does (as an HTTP/1.0 server)."""
    conn.settimeout(30)
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data if echo else tag.encode() + b":" + data)
            if hangup:
                break
        if echo:
            conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        conn.close()


def accept_loop(lid):
    entry = listeners[lid]
    s = entry["sock"]
    while True:
        try:
            c, peer = s.accept()
        except OSError:
            return
        rec = {"peer": addr(peer), "sockname": addr(c.getsockname()), "origDst": orig_dst(c)}
        with lock:
            entry["accepted"].append(rec)
        threading.Thread(target=serve, args=(c, entry["tag"], entry["echo"], entry["hangup"]), daemon=True).start()


def sockaddr(host, port):
    """(host, port), or for a scoped IPv6 address ("fe80::1%eth0") the 4-tuple with its scope id:
    Python does not read the scope out of a numeric address given as a 2-tuple (EINVAL)."""
    if "%" in host:
        addr, dev = host.split("%", 1)
        return (addr, port, 0, socket.if_nametoindex(dev))
    return (host, port)


def make_socket(req, kind=socket.SOCK_STREAM):
    if ":" in req.get("host", ""):
        s = socket.socket(socket.AF_INET6, kind)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if req.get("v6only") else 0)
    else:
        s = socket.socket(socket.AF_INET, kind)
    if req.get("mark") is not None:
        s.setsockopt(socket.SOL_SOCKET, SO_MARK, req["mark"])
    if req.get("transparent"):
        s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    return s


def op_listen(req):
    s = make_socket(req)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((req.get("host", "0.0.0.0"), req["port"]))
    s.listen(req.get("backlog", 128))
    lid = new_id("l")
    listeners[lid] = {"sock": s, "tag": req.get("tag", lid), "accepted": [], "echo": bool(req.get("echo")), "hangup": bool(req.get("hangup"))}
    if not req.get("paused"):  # paused: connections wait in the backlog until "resume"
        threading.Thread(target=accept_loop, args=(lid,), daemon=True).start()
    return {"id": lid, "port": s.getsockname()[1]}


def op_resume(req):
    threading.Thread(target=accept_loop, args=(req["id"],), daemon=True).start()
    return {}


def op_close_listener(req):
    entry = listeners.get(req["id"])
    if entry:
        try:
            entry["sock"].shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        entry["sock"].close()
    return {}


def op_accepted(req):
    with lock:
        return {"accepted": list(listeners[req["id"]]["accepted"])}


def read_reply(s, timeout):
    s.settimeout(timeout)
    try:
        return s.recv(65536).decode(errors="replace")
    except OSError as e:
        return "error:" + err_name(e)


def op_connect(req):
    timeout = req.get("timeoutMs", 3000) / 1000.0
    s = make_socket(req)
    try:
        if req.get("bind"):
            s.bind((req["bind"]["host"], req["bind"].get("port", 0)))
        s.settimeout(timeout)
        s.connect(sockaddr(req["host"], req["port"]))
    except OSError as e:
        s.close()
        return {"ok": False, "error": err_name(e)}
    cid = new_id("c")
    conns[cid] = s
    out = {"ok": True, "connId": cid, "sockname": addr(s.getsockname()), "peername": addr(s.getpeername()),
           "origDst": orig_dst(s)}
    if req.get("send") is not None:
        s.sendall(req["send"].encode())
        out["reply"] = read_reply(s, timeout)
    return out


def op_send(req):
    s = conns[req["connId"]]
    s.sendall(req["data"].encode())
    return {"reply": read_reply(s, req.get("timeoutMs", 3000) / 1000.0)}


def op_close(req):
    s = conns.pop(req["connId"], None)
    if s:
        s.close()
    return {}


def op_udp(req):
    """One datagram to host:port (connected or not), and the answer with its source."""
    timeout = req.get("timeoutMs", 2000) / 1000.0
    s = make_socket(req, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        if req.get("connected"):
            s.connect((req["host"], req["port"]))
            s.send(req["send"].encode())
            data, src = s.recv(65536), s.getpeername()
        else:
            s.sendto(req["send"].encode(), (req["host"], req["port"]))
            data, src = s.recvfrom(65536)
        return {"ok": True, "reply": data.decode(errors="replace"), "from": addr(src)}
    except OSError as e:
        return {"ok": False, "error": err_name(e)}
    finally:
        s.close()


def udp_echo_loop(s, tag):
    while True:
        try:
            data, src = s.recvfrom(65536)
            s.sendto(tag.encode() + b":" + data, src)
        except OSError:
            return


def op_udp_listen(req):
    s = make_socket(req, socket.SOCK_DGRAM)
    s.bind((req.get("host", "0.0.0.0"), req["port"]))
    lid = new_id("u")
    listeners[lid] = {"sock": s, "tag": req.get("tag", lid), "accepted": []}
    threading.Thread(target=udp_echo_loop, args=(s, listeners[lid]["tag"]), daemon=True).start()
    return {"id": lid}


def op_load(req):
    """`count` concurrent connections, each sending `size` random bytes, half-closing, and
    checking that exactly those bytes come back."""
    import os
    count, size = req["count"], req["size"]
    timeout = req.get("timeoutMs", 30000) / 1000.0
    results = {"ok": 0, "bad": 0, "errors": {}}
    rlock = threading.Lock()
    barrier = threading.Barrier(count, timeout=timeout)

    def one():
        payload = os.urandom(size)
        s = socket.socket()
        s.settimeout(timeout)
        try:
            s.connect((req["host"], req["port"]))
            barrier.wait()  # all connected at once
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            got = bytearray()
            while True:
                d = s.recv(65536)
                if not d:
                    break
                got += d
            key = "ok" if bytes(got) == payload else "bad"
            with rlock:
                results[key] += 1
        except Exception as e:
            with rlock:
                results["errors"][err_name(e)] = results["errors"].get(err_name(e), 0) + 1
        finally:
            s.close()

    threading.stack_size(256 * 1024)
    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def op_repeat(req):
    """`count` connections one after another, each sending "ping", reading the answer and
    closing (SO_MARK / IP_TRANSPARENT / bind as for connect, a new source port each time);
    counts the answers by the tag before ':' and the errors by name."""
    timeout = req.get("timeoutMs", 3000) / 1000.0
    out = {"tags": {}, "errors": {}}

    def count(d, k):
        d[k] = d.get(k, 0) + 1

    for _ in range(req["count"]):
        s = make_socket(req)
        s.settimeout(timeout)
        try:
            if req.get("bind"):
                s.bind((req["bind"]["host"], 0))
            s.connect((req["host"], req["port"]))
            s.sendall(b"ping")
            count(out["tags"], s.recv(65536).decode(errors="replace").split(":")[0])
        except OSError as e:
            count(out["errors"], err_name(e))
        finally:
            s.close()
    return out


churns = {}  # id -> {"stop": Event, "threads": [...], "out": {...}}


def op_churn_start(req):
    """A steady new-connection load in the background: `threads` loops of connect, "ping",
    read the answer, close, until churnStop. Counts answered connections and the failures by
    errno name ("EOF": closed without an answer)."""
    timeout = req.get("timeoutMs", 3000) / 1000.0
    cid = new_id("c")
    c = {"stop": threading.Event(), "threads": [], "out": {"answered": 0, "errors": {}}, "lock": threading.Lock()}

    def count(key):
        with c["lock"]:
            if key == "answered":
                c["out"]["answered"] += 1
            else:
                c["out"]["errors"][key] = c["out"]["errors"].get(key, 0) + 1

    def loop():
        while not c["stop"].is_set():
            s = make_socket(req)
            s.settimeout(timeout)
            try:
                s.connect((req["host"], req["port"]))
                s.sendall(b"ping")
                count("answered" if s.recv(65536) else "EOF")
            except OSError as e:
                count(err_name(e))
            finally:
                s.close()

    for _ in range(req.get("threads", 2)):
        t = threading.Thread(target=loop, daemon=True)
        c["threads"].append(t)
        t.start()
    churns[cid] = c
    return {"id": cid}


def op_churn_peek(req):
    c = churns[req["id"]]
    with c["lock"]:
        return json.loads(json.dumps(c["out"]))


def op_churn_stop(req):
    c = churns.pop(req["id"])
    c["stop"].set()
    for t in c["threads"]:
        t.join()
    return dict(c["out"])


OPS = {
    "churnStart": op_churn_start,
    "churnPeek": op_churn_peek,
    "churnStop": op_churn_stop,
    "repeat": op_repeat,
    "resume": op_resume,
    "load": op_load,
    "listen": op_listen,
    "closeListener": op_close_listener,
    "accepted": op_accepted,
    "connect": op_connect,
    "send": op_send,
    "close": op_close,
    "udp": op_udp,
    "udpListen": op_udp_listen,
}


def main():
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            out = OPS[req["op"]](req)
            out["ok"] = out.get("ok", True)
        except Exception as e:  # reported to the test, never fatal
            out = {"ok": False, "error": err_name(e)}
        out["seq"] = req["seq"]
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
