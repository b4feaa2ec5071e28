#!/usr/bin/python3
"""Crafted TCP for the adversarial lab suite (IPv4, standard library only).

  sniff --iface IF --src IP:PORT --dst IP:PORT [--timeout S]
      Prints READY, then one JSON line {"seq","ack","len"} for the first segment with payload
      from src to dst seen on IF (an AF_PACKET socket: what the wire carries, nothing else).
  send --src IP:PORT --dst IP:PORT --seq N --ack N [--flags PA] [--payload TEXT] [--tsval N --tsecr N]
      Sends one segment from a raw socket (IP header built here), so any source may be claimed.
  frame --iface IF --dst-mac MAC --src IP:PORT --dst IP:PORT [--seq N --ack N --flags PA --payload TEXT] [--qdisc-bypass]
      Sends the same segment as a whole Ethernet frame from an AF_PACKET socket bound to IF; with
      --qdisc-bypass, after asking for PACKET_QDISC_BYPASS (which skips the device's qdisc and tc).
      Prints {"sent": N}, or {"refused": "setsockopt"|"socket", "errno": E} and exits 3.
  xsk
      Opens an AF_XDP socket. Prints {"opened": true}, or {"refused": "socket", "errno": E} and exits 3.
"""
import argparse, fcntl, json, os, select, socket, struct, sys, time
sys.dont_write_bytecode = True  # no __pycache__ in the checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from labpackets import checksum  # noqa: E402

SOL_PACKET, PACKET_QDISC_BYPASS, AF_XDP, SIOCGIFHWADDR = 263, 20, 44, 0x8927


def addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


FLAGS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10}


def segment(src, dst, seq, ack, flags, payload, ts=None):
    bits = sum(FLAGS[c] for c in flags)
    # A connection that negotiated timestamps drops segments without them (RFC 7323).
    options = b"" if ts is None else struct.pack("!BBBBII", 1, 1, 8, 10, ts[0], ts[1])
    tcp = struct.pack("!HHIIBBHHH", src[1], dst[1], seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, (5 + len(options) // 4) << 4, bits, 65535, 0, 0) + options
    pseudo = socket.inet_aton(src[0]) + socket.inet_aton(dst[0]) + struct.pack("!BBH", 0, 6, len(tcp) + len(payload))
    csum = checksum(pseudo + tcp + payload)
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    total = 20 + len(tcp) + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0x4242, 0x4000, 64, 6, 0, socket.inet_aton(src[0]), socket.inet_aton(dst[0]))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + tcp + payload


def send(a):
    src, dst = addr(a.src), addr(a.dst)
    ts = None if a.tsval is None else (a.tsval, a.tsecr or 0)
    packet = segment(src, dst, a.seq, a.ack, a.flags, a.payload.encode(), ts)
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.sendto(packet, (dst[0], 0))
    print(json.dumps({"sent": len(packet)}))


def refused(step, e):
    print(json.dumps({"refused": step, "errno": e.errno, "error": os.strerror(e.errno)}), flush=True)
    sys.exit(3)


def frame(a):
    src, dst = addr(a.src), addr(a.dst)
    packet = segment(src, dst, a.seq, a.ack, a.flags, a.payload.encode())
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except OSError as e:
        refused("socket", e)
    if a.qdisc_bypass:
        try:
            s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        except OSError as e:
            refused("setsockopt", e)
    s.bind((a.iface, 0))
    own = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("256s", a.iface.encode()[:15]))[18:24]
    dst_mac = bytes(int(b, 16) for b in a.dst_mac.split(":"))
    sent = s.send(dst_mac + own + b"\x08\x00" + packet)
    print(json.dumps({"sent": sent}), flush=True)


def xsk(_):
    try:
        s = socket.socket(AF_XDP, socket.SOCK_RAW, 0)
    except OSError as e:
        refused("socket", e)
    s.close()
    print(json.dumps({"opened": True}), flush=True)


def timestamps(options):
    """The TSval and TSecr of a TCP option block, if it carries them."""
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2:
            break
        if kind == 8 and options[i + 1] == 10:
            tsval, tsecr = struct.unpack("!II", options[i + 2:i + 10])
            return {"tsval": tsval, "tsecr": tsecr}
        i += options[i + 1]
    return {}


def sniff(a):
    src, dst = addr(a.src), addr(a.dst)
    want = (socket.inet_aton(src[0]), socket.inet_aton(dst[0]), src[1], dst[1])
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind((a.iface, 0))
    print("READY", flush=True)
    deadline = time.time() + a.timeout
    while time.time() < deadline:
        ready, _, _ = select.select([s], [], [], max(0.0, deadline - time.time()))
        if not ready:
            break
        frame = s.recv(65535)
        if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 6 or (ip[12:16], ip[16:20]) != want[:2]:
            continue
        tcp = ip[ihl:]
        sport, dport, seq, ack, off = struct.unpack("!HHIIB", tcp[:13])
        length = struct.unpack("!H", ip[2:4])[0] - ihl - (off >> 4) * 4
        if (sport, dport) == want[2:] and length > 0:
            seen = {"seq": seq, "ack": ack, "len": length}
            seen.update(timestamps(tcp[20:(off >> 4) * 4]))
            print(json.dumps(seen), flush=True)
            return
    print(json.dumps({"error": "no segment seen"}), flush=True)
    sys.exit(1)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    sn = sub.add_parser("sniff")
    sn.add_argument("--iface", required=True)
    sn.add_argument("--src", required=True)
    sn.add_argument("--dst", required=True)
    sn.add_argument("--timeout", type=float, default=5)
    se = sub.add_parser("send")
    se.add_argument("--src", required=True)
    se.add_argument("--dst", required=True)
    se.add_argument("--seq", type=int, required=True)
    se.add_argument("--ack", type=int, required=True)
    se.add_argument("--flags", default="PA")
    se.add_argument("--payload", default="")
    se.add_argument("--tsval", type=int)
    se.add_argument("--tsecr", type=int)
    fr = sub.add_parser("frame")
    fr.add_argument("--iface", required=True)
    fr.add_argument("--dst-mac", required=True)
    fr.add_argument("--src", required=True)
    fr.add_argument("--dst", required=True)
    fr.add_argument("--seq", type=int, default=1)
    fr.add_argument("--ack", type=int, default=1)
    fr.add_argument("--flags", default="PA")
    fr.add_argument("--payload", default="")
    fr.add_argument("--qdisc-bypass", action="store_true")
    sub.add_parser("xsk")
    a = p.parse_args()
    {"sniff": sniff, "send": send, "frame": frame, "xsk": xsk}[a.cmd](a)


if __name__ == "__main__":
    main()
