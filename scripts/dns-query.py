#!/usr/bin/python3
"""DNS queries for the lab's DNS capture tests, each the way a class of real resolvers sends them
(standard library only). Prints one JSON line:
  {"answers": [...], "rcode": N, "from": "IP:PORT", "peer": "IP:PORT"|null}  or  {"error": "..."}
"from" is the answer's source as recvfrom reports it; "peer" what getpeername reports.

  --server IP:PORT --name NAME [--type A|AAAA] --via MODE [--timeout S] [--mark N] [--claim IP:PORT]
(--mark: SO_MARK on the query's socket, as the proxy marks its own; --claim, raw only: that source,
sent without waiting, since the answer goes there: prints {"sent": true})
MODE:
  udp            unconnected UDP: sendto, recvfrom (musl's resolver)
  udp-connected  connect, send, recvfrom (glibc's resolver)
  tcp            TCP with two-byte length framing
  mapped         unconnected UDP from an IPv6 socket to the v4-mapped server address (dual-stack apps)
  raw            the query built by hand (IP and UDP headers) and sent from a raw socket, the answer
                 awaited on a UDP socket bound to the source port it claims (IPv4)
"""
import argparse, json, random, socket, struct, sys, os
sys.dont_write_bytecode = True  # no __pycache__ in the checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from labpackets import checksum  # noqa: E402


def query(name, qtype):
    qid = random.randrange(65536)
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    return qid, header + labels + struct.pack("!HH", {"A": 1, "AAAA": 28}[qtype], 1)


def parse(msg, qid):
    rid, flags, qd, an = struct.unpack("!HHHH", msg[:8])
    if rid != qid:
        raise ValueError("answer id %d, query id %d" % (rid, qid))
    i = 12
    for _ in range(qd):
        while msg[i] != 0:
            i += 1 + msg[i]
        i += 5
    answers = []
    for _ in range(an):
        i += 2 if msg[i] & 0xC0 == 0xC0 else msg.index(0, i) + 1 - i
        rtype, _, _, rdlen = struct.unpack("!HHIH", msg[i:i + 10])
        data = msg[i + 10:i + 10 + rdlen]
        if rtype == 1:
            answers.append(socket.inet_ntop(socket.AF_INET, data))
        elif rtype == 28:
            answers.append(socket.inet_ntop(socket.AF_INET6, data))
        i += 10 + rdlen
    return answers, flags & 0xF


def endpoint(sa):
    host, port = sa[0], sa[1]
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)


def raw_send(server, payload, timeout, claim=None):
    # The source address routing picks (connecting to another port: DNS capture would redirect 53).
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect((server[0], 9))
    src = probe.getsockname()[0]
    probe.close()
    answer = None
    if claim:  # another address and port: the answer goes there, not here
        src, sport = claim.rsplit(":", 1)
        sport = int(sport)
    else:
        answer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        answer.bind((src, 0))
        answer.settimeout(timeout)
        sport = answer.getsockname()[1]
    udp = struct.pack("!HHHH", sport, server[1], 8 + len(payload), 0) + payload
    pseudo = socket.inet_aton(src) + socket.inet_aton(server[0]) + struct.pack("!BBH", 0, 17, len(udp))
    udp = udp[:6] + struct.pack("!H", checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0x5353, 0x4000, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(server[0]))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    raw.sendto(ip + udp, (server[0], 0))
    if answer is None:
        return None, None, None
    msg, frm = answer.recvfrom(65535)
    return msg, frm, None


def ask(a):
    host, port = a.server.rsplit(":", 1)
    host = host.strip("[]")
    server = (host, int(port))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    qid, payload = query(a.name, a.type)
    peer = None
    if a.via == "raw":
        msg, frm, peer = raw_send(server, payload, a.timeout, a.claim)
        if msg is None:
            return {"sent": True}
    elif a.via == "tcp":
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(a.timeout)
        s.connect(server)
        peer = endpoint(s.getpeername())
        s.sendall(struct.pack("!H", len(payload)) + payload)
        data = b""
        while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
            chunk = s.recv(65535)
            if not chunk:
                raise ConnectionError("closed before the answer")
            data += chunk
        msg, frm = data[2:], s.getpeername()
    else:
        if a.via == "mapped":
            family, server = socket.AF_INET6, ("::ffff:" + host, server[1])
        s = socket.socket(family, socket.SOCK_DGRAM)
        if a.mark:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, a.mark)
        s.settimeout(a.timeout)
        if a.via == "udp-connected":
            s.connect(server)
            peer = endpoint(s.getpeername())
            s.send(payload)
        else:
            s.sendto(payload, server)
        msg, frm = s.recvfrom(65535)
    answers, rcode = parse(msg, qid)
    return {"answers": answers, "rcode": rcode, "from": endpoint(frm), "peer": peer}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--type", default="A", choices=["A", "AAAA"])
    p.add_argument("--via", default="udp", choices=["udp", "udp-connected", "tcp", "mapped", "raw"])
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--mark", type=lambda v: int(v, 0), default=0)
    p.add_argument("--claim", help="raw only: IP:PORT as the query's source; sends without waiting")
    a = p.parse_args()
    try:
        print(json.dumps(ask(a)))
    except (OSError, ValueError, ConnectionError) as e:
        print(json.dumps({"error": "%s: %s" % (type(e).__name__, e)}))
        sys.exit(2)


if __name__ == "__main__":
    main()
