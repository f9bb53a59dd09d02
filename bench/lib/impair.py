#!/usr/bin/env python3
"""Userspace link impairment for `bench/run lossy` (netem is not available here).

  impair.py udp --listen IP:PORT --target IP:PORT [--delay-ms 20] [--loss 0.01] [--seed 1]
  impair.py bridge --if1 IF --if2 IF [--delay-ms 20] [--loss 0.01] [--seed 1]

udp: a forwarding UDP proxy. Every datagram, in either direction, is dropped with probability
--loss (a seeded PRNG per direction, so runs are reproducible) and otherwise forwarded
--delay-ms later, in order. Each client address gets its own upstream socket (connected to the
target), so the target sees the proxy as its peer. Used between two edist gateways: each
gateway's peer address points at a proxy on its own host, forwarding to the other gateway.

bridge: the same impairment for every Ethernet frame between two interfaces (AF_PACKET), i.e. a
userspace netem on a link: used for the TCP of plain OTP and OTP TLS distribution. (A TCP proxy
would not do: it splits the connection, so the TCP that crosses the lossy link would see neither
the delay nor, end to end, the loss; measured here, plain OTP then kept ~12 MB/s at "1% loss,
20 ms" where QUIC through the UDP proxy got 0.4 MB/s.) The sending hosts must not build GSO
frames larger than the MTU (bench/run sets gso_max_segs 1), so that one frame is one packet.

Counters are printed to stderr every 5 s and at exit (SIGTERM/SIGINT).
"""

import argparse
import asyncio
import collections
import random
import signal
import socket
import sys


def addr(s):
    host, _, port = s.rpartition(":")
    return host, int(port)


class Delayer:
    """A FIFO of (due, send) with one timer: constant delay keeps order."""

    def __init__(self, loop, delay):
        self.loop = loop
        self.delay = delay
        self.q = collections.deque()
        self.timer = None

    def push(self, send, data):
        self.q.append((self.loop.time() + self.delay, send, data))
        if self.timer is None:
            self.timer = self.loop.call_at(self.q[0][0], self.flush)

    def flush(self):
        self.timer = None
        now = self.loop.time()
        q = self.q
        while q and q[0][0] <= now + 0.0002:
            _, send, data = q.popleft()
            try:
                send(data)
            except OSError:
                pass
        if q:
            self.timer = self.loop.call_at(q[0][0], self.flush)


class Stats:
    def __init__(self):
        self.c = collections.Counter()

    def line(self):
        return " ".join(f"{k}={v}" for k, v in sorted(self.c.items()))


def udp_socket(bind, rcvbuf=4 << 20):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            s.setsockopt(socket.SOL_SOCKET, opt, rcvbuf)
        except OSError:
            pass
    s.bind(bind)
    s.setblocking(False)
    return s


async def run_udp(args, stats):
    loop = asyncio.get_running_loop()
    delayer = Delayer(loop, args.delay_ms / 1000.0)
    rng_out = random.Random(f"{args.seed}/out")  # client -> target
    rng_back = random.Random(f"{args.seed}/back")  # target -> client
    listen, target = addr(args.listen), addr(args.target)
    upstreams = {}

    class Up(asyncio.DatagramProtocol):
        def __init__(self, client):
            self.client = client

        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, _src):
            if rng_back.random() < args.loss:
                stats.c["back_dropped"] += 1
                return
            stats.c["back_fwd"] += 1
            delayer.push(lambda d, c=self.client: front.sendto(d, c), data)

        def error_received(self, exc):
            stats.c["back_errors"] += 1

    class Front(asyncio.DatagramProtocol):
        def datagram_received(self, data, client):
            if rng_out.random() < args.loss:
                stats.c["out_dropped"] += 1
                return
            up = upstreams.get(client)
            if up is None:
                stats.c["clients"] += 1
                sock = udp_socket((listen[0], 0))
                sock.connect(target)
                up = loop.create_task(loop.create_datagram_endpoint(lambda: Up(client), sock=sock))
                upstreams[client] = up
            stats.c["out_fwd"] += 1
            delayer.push(lambda d, u=up: send_up(u, d), data)

        def error_received(self, exc):
            stats.c["out_errors"] += 1

    def send_up(task, data):
        if task.done():
            task.result()[0].sendto(data)
        else:  # the upstream socket is not ready yet (first datagram of a client): later
            task.add_done_callback(lambda t: t.result()[0].sendto(data))

    front, _ = await loop.create_datagram_endpoint(Front, sock=udp_socket(listen))
    print(f"impair udp {args.listen} -> {args.target}: delay {args.delay_ms} ms, loss {args.loss}, "
          f"seed {args.seed}", file=sys.stderr, flush=True)
    await asyncio.Event().wait()


ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23


def packet_socket(ifname):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    # The virtio-net header carries the checksum-offload state (and GSO, if any) of each frame,
    # so a frame whose checksum the sender left to the "hardware" leaves here as it came in.
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        s.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
    s.bind((ifname, 0))
    s.setblocking(False)
    return s


async def run_bridge(args, stats):
    """An impairing two-port Ethernet bridge: frames from --if1 go out of --if2 and back."""
    loop = asyncio.get_running_loop()
    delayer = Delayer(loop, args.delay_ms / 1000.0)
    s1, s2 = packet_socket(args.if1), packet_socket(args.if2)

    def pump(src, dst, rng, name):
        def send(frame):
            try:
                dst.send(frame)
            except BlockingIOError:
                stats.c[name + "_send_full"] += 1
            except OSError:
                stats.c[name + "_send_errors"] += 1

        def readable():
            while True:
                try:
                    frame = src.recv(65536 + 64)
                except BlockingIOError:
                    return
                if rng.random() < args.loss:
                    stats.c[name + "_dropped"] += 1
                    continue
                stats.c[name + "_fwd"] += 1
                delayer.push(send, frame)
        return readable

    loop.add_reader(s1.fileno(), pump(s1, s2, random.Random(f"{args.seed}/out"), "out"))
    loop.add_reader(s2.fileno(), pump(s2, s1, random.Random(f"{args.seed}/back"), "back"))
    print(f"impair bridge {args.if1} <-> {args.if2}: delay {args.delay_ms} ms, loss {args.loss} each way, "
          f"seed {args.seed}", file=sys.stderr, flush=True)
    await asyncio.Event().wait()


async def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["udp", "bridge"])
    p.add_argument("--listen", help="udp: IP:PORT to listen on")
    p.add_argument("--target", help="udp: IP:PORT to forward to")
    p.add_argument("--if1", help="bridge: first interface")
    p.add_argument("--if2", help="bridge: second interface")
    p.add_argument("--delay-ms", type=float, default=20.0)
    p.add_argument("--loss", type=float, default=0.01)
    p.add_argument("--seed", default="1")
    args = p.parse_args()
    if args.kind == "udp" and not (args.listen and args.target):
        p.error("udp needs --listen and --target")
    if args.kind == "bridge" and not (args.if1 and args.if2):
        p.error("bridge needs --if1 and --if2")
    stats = Stats()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def report():
        while True:
            await asyncio.sleep(5)
            print(f"impair {args.kind}: {stats.line()}", file=sys.stderr, flush=True)

    job = loop.create_task(run_udp(args, stats) if args.kind == "udp" else run_bridge(args, stats))
    rep = loop.create_task(report())
    done, _ = await asyncio.wait([job, loop.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    rep.cancel()
    print(f"impair {args.kind} final: {stats.line()}", file=sys.stderr, flush=True)
    if job in done:
        job.result()


if __name__ == "__main__":
    asyncio.run(main())
