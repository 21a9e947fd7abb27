"""A real py2p 0.7.878 peer driven by JSON lines, for rs2p's interop tests.

It speaks the same contract as `rs2p node --json` (values: JSON with
{"$bytes": base64} for bytes and {"$map": [[k, v], ...]} for maps with
non-str keys):

  stdout: {"event":"ready","id":...,"addr":"127.0.0.1:PORT"}
          {"event":"message","kind":"broadcast"|"whisper","sender":...,"time":T,"packets":[...]}
          {"event":"peers","peers":[{"id":...,"addr":...,"outgoing":bool}]}
          {"event":"status","status":...}
          {"event":"update","key":K,"value":V,"owner":...,"timestamp":T}   (--sync)
          {"event":"delete","key":K}                                          (--sync)
          {"event":"value","key":K,"found":bool,"value":V}                    (--sync)
          {"event":"dump","entries":[...]}                                    (--sync)
          {"event":"error","cmd":...,"message":...}
          {"event":"ok","cmd":...}  after every command that succeeded
  stdin:  {"cmd":"connect","addr":"HOST:PORT","id":optional}
          {"cmd":"broadcast","packets":[...]}  {"cmd":"whisper","to":ID,"packets":[...]}
          {"cmd":"reply_last","packets":[...]}  (Message.reply on the last message)
          {"cmd":"peers"} {"cmd":"status"} {"cmd":"quit"}
          {"cmd":"request_peers"} {"cmd":"set_max_outgoing","n":N}
          {"cmd":"set","key":K,"value":V} {"cmd":"get","key":K} {"cmd":"delete","key":K}
          {"cmd":"delta","key":K,"delta":{...}} {"cmd":"dump"}

A command may carry "req" (as in rs2p's JSON contract, for the fault lab):
it is then answered by exactly one event carrying the same "req": the
query's own event, or "ok"/"error".

Flags: --subnet NAME (default mesh / sync), --sync, --no-leasing, --ssl,
--max-outgoing N (py2p's module-level max_outgoing), --bind HOST:PORT
(default 127.0.0.1, a free port), --connect HOST:PORT (repeatable, dialled
at start; a peer that is down is skipped).
"""
import argparse
import base64
import errno
import json
import sys
import threading
import time
import traceback

from py2p import base, flags, mesh

out_lock = threading.Lock()


def emit(obj):
    line = json.dumps(obj)
    with out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def to_json(v):
    if isinstance(v, (bytes, bytearray)):
        return {"$bytes": base64.b64encode(bytes(v)).decode()}
    if isinstance(v, dict):
        if all(isinstance(k, str) for k in v):
            return {k: to_json(x) for k, x in v.items()}
        return {"$map": [[to_json(k), to_json(x)] for k, x in v.items()]}
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return {"$float": "NaN" if v != v else ("inf" if v > 0 else "-inf")}
    return v


def from_json(j):
    if isinstance(j, dict):
        if len(j) == 1:
            (k, v), = j.items()
            if k == "$bytes":
                return base64.b64decode(v)
            if k == "$map":
                return {from_json_key(a): from_json(b) for a, b in v}
            if k == "$float":
                return float({"NaN": "nan", "inf": "inf", "-inf": "-inf"}[v])
        return {k: from_json(v) for k, v in j.items()}
    if isinstance(j, list):
        return [from_json(x) for x in j]
    return j


def from_json_key(j):
    v = from_json(j)
    return tuple(v) if isinstance(v, list) else v


def key_json(k):
    if isinstance(k, (bytes, bytearray)):
        try:
            return bytes(k).decode("utf-8")
        except UnicodeDecodeError:
            return {"$bytes": base64.b64encode(bytes(k)).decode()}
    return k


def key_from_json(j):
    return from_json(j) if isinstance(j, dict) else j


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--subnet", default=None)
    ap.add_argument("--sync", action="store_true")
    ap.add_argument("--no-leasing", action="store_true")
    ap.add_argument("--max-outgoing", type=int, default=None)
    ap.add_argument("--ssl", action="store_true")
    ap.add_argument("--bind", default="127.0.0.1:0")
    ap.add_argument("--connect", action="append", default=[])
    args = ap.parse_args()
    host, bind_port = args.bind.rsplit(":", 1)
    if args.max_outgoing is not None:
        mesh.max_outgoing = args.max_outgoing

    enc = "SSL" if args.ssl else "Plaintext"

    def make():
        if args.sync:
            from py2p import sync
            return sync.SyncSocket(host, int(bind_port), prot=base.Protocol(args.subnet or "sync", enc),
                                   leasing=not args.no_leasing)
        return mesh.MeshSocket(host, int(bind_port), prot=base.Protocol(args.subnet or "mesh", enc))
    # py2p binds without SO_REUSEADDR: restarted on a fixed port (the fault
    # lab), it fails while its old connections are in TIME_WAIT (60 s).
    for attempt in range(90):
        try:
            sock = make()
            break
        except OSError as e:
            if e.errno != errno.EADDRINUSE or bind_port == "0" or attempt == 89:
                raise
            time.sleep(1)
    # Bound to port 0: tell peers the port the OS picked.
    port = sock.daemon.sock.getsockname()[1]
    sock.out_addr = (host, port)

    if args.sync:
        def on_update(conn, key, data, meta):
            emit({"event": "update", "key": key_json(key), "value": to_json(data),
                  "owner": meta.owner.decode() if isinstance(meta.owner, bytes) else meta.owner,
                  "timestamp": meta.timestamp})

        def on_delete(conn, key):
            emit({"event": "delete", "key": key_json(key)})
        sock.on("update", on_update)
        sock.on("delete", on_delete)

    emit({"event": "ready", "id": sock.id.decode(), "addr": "%s:%d" % (host, port)})
    for addr in args.connect:
        h, p = addr.rsplit(":", 1)
        try:
            sock.connect(h, int(p))
        except Exception:
            pass
    alive = [True]
    last = [None]

    def poll():
        while alive[0]:
            try:
                msg = sock.recv()
            except Exception:
                msg = None
            if msg is None:
                time.sleep(0.002)
                continue
            last[0] = msg
            packets = msg.packets
            emit({"event": "message",
                  "kind": "broadcast" if msg.msg.msg_type == flags.broadcast else "whisper",
                  "sender": msg.sender.decode(), "time": msg.time,
                  "packets": [to_json(p) for p in packets[1:]]})
    threading.Thread(target=poll, daemon=True).start()

    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        cmd = json.loads(line)
        name = cmd.get("cmd")
        req = cmd.get("req")
        answered = [False]

        def answer(obj):
            if req is not None:
                obj["req"] = req
                answered[0] = True
            emit(obj)
        try:
            if name == "connect":
                host, p = cmd["addr"].rsplit(":", 1)
                expected = cmd.get("id")
                sock.connect(host, int(p), expected.encode() if expected else None)
            elif name == "broadcast":
                sock.send(*from_json(cmd.get("packets", [])))
            elif name == "whisper":
                sock.routing_table[cmd["to"].encode()].send(
                    flags.whisper, flags.whisper, *from_json(cmd.get("packets", [])))
            elif name == "reply_last":
                last[0].reply(*from_json(cmd.get("packets", [])))
            elif name == "request_peers":
                sock.request_peers()
            elif name == "set_max_outgoing":
                mesh.max_outgoing = int(cmd["n"])
            elif name == "peers":
                answer({"event": "peers", "peers": [
                    {"id": k.decode(), "addr": "%s:%d" % tuple(h.addr) if h.addr else None,
                     "outgoing": bool(h.outgoing)}
                    for k, h in list(sock.routing_table.items())]})
            elif name == "status":
                st = sock.status
                answer({"event": "status", "status": st if isinstance(st, str) else [str(x) for x in st]})
            elif name == "set":
                sock.set(key_from_json(cmd["key"]), from_json(cmd["value"]))
            elif name == "get":
                k = key_from_json(cmd["key"])
                missing = object()
                v = sock.get(k, missing)
                answer({"event": "value", "key": cmd["key"], "found": v is not missing,
                      "value": None if v is missing else to_json(v)})
            elif name == "delete":
                del sock[key_from_json(cmd["key"])]
            elif name == "delta":
                sock.apply_delta(key_from_json(cmd["key"]), from_json(cmd["delta"]))
            elif name == "dump":
                answer({"event": "dump", "entries": dump(sock)})
            elif name == "quit":
                break
            else:
                raise ValueError("unknown command %r" % name)
            if not answered[0]:
                answer({"event": "ok", "cmd": name})
        except Exception as e:
            answer({"event": "error", "cmd": name, "message": "%s: %s" % (type(e).__name__, e),
                  "trace": traceback.format_exc()})
    alive[0] = False
    try:
        sock.close()
    except Exception:
        pass


def dump(sock):
    """A snapshot of py2p's dictionary with its metadata. py2p's own thread
    updates ``data`` and ``metadata`` one after the other, so a snapshot
    taken in between can miss a key's metadata (KeyError) or meet a dict
    changing size (RuntimeError): py2p's race, not what a test looks at;
    take the snapshot again."""
    for attempt in range(50):
        try:
            return [{"key": key_json(k), "value": to_json(v),
                     "owner": sock.metadata[k].owner.decode(),
                     "timestamp": sock.metadata[k].timestamp}
                    for k, v in list(sock.data.items())]
        except (KeyError, RuntimeError):
            if attempt == 49:
                raise
            time.sleep(0.01)


if __name__ == "__main__":
    main()
