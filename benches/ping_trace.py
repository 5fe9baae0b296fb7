#!/usr/bin/env python3
"""Per-hop breakdown of idle pings through two vmsecd daemons from a `perf script` of benches/ping_trace.sh.

Usage: ping_trace.py TRACE H1_PID H2_PID. For each ping (VM1's sendto of an echo request to its receive of the
reply) it finds the three daemon turns (h1 sends the echo out, h2 decrypts it and sends the reply back, h1
delivers the reply) and the wake-up of ping, and prints medians of: the time from the event that woke each
turn to its waking (softirq), from waking to running (wake-up latency: IPI, halt exit, run queue), the turn's
length and its syscalls, and whether the woken task landed on an idle CPU or on the waker's.
"""
import re
import statistics as st
import sys
from collections import Counter, defaultdict

SYSCALLS = {0: "read", 1: "write", 7: "poll", 16: "ioctl", 44: "sendto", 45: "recvfrom", 46: "sendmsg",
            47: "recvmsg", 202: "futex", 228: "clock_gettime", 232: "epoll_wait", 271: "ppoll",
            281: "epoll_pwait", 299: "recvmmsg", 307: "sendmmsg", 441: "epoll_pwait2", 20: "writev", 19: "readv", 335: "uretprobe"}
LINE = re.compile(r"^\s*(.+?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$")


def parse(path):
    ev = []
    with open(path, errors="replace") as f:
        for line in f:
            m = LINE.match(line)
            if not m:
                continue
            comm, pid, tid, cpu, t, name, rest = m.groups()
            ev.append((float(t) * 1e6, int(tid), int(cpu), name.rstrip(":"), rest, comm.strip(), int(pid)))
    return ev


def field(rest, key):
    m = re.search(r"\b" + key + r"=(\S+)", rest)
    return m.group(1) if m else None


def timeline(ev, h1, h2, ping_sends):
    """Per ping, the key points in order; returns a list of dicts (None where a point was not found)."""
    import bisect
    # Index events per kind.
    out = []
    evs = ev  # sorted by time already (perf script is per-cpu merged in time order)
    times = [e[0] for e in evs]
    def find(start, pred, limit):
        i = bisect.bisect_left(times, start)
        while i < len(evs) and evs[i][0] < limit:
            if pred(evs[i]):
                return evs[i]
            i += 1
        return None
    for k, t0 in enumerate(ping_sends):
        lim = ping_sends[k + 1] if k + 1 < len(ping_sends) else t0 + 20000
        p = {"send": t0}
        def nxt(name, start, pred):
            if start is None:
                p[name] = None
                return None
            e = find(start, pred, lim)
            p[name] = e[0] if e else None
            return p[name]
        def sysx(tid, nrs, pos=True):
            # sys_enter of one of nrs by tid whose matching exit returned > 0: approximated by the enter
            return lambda e: e[1] == tid and e[3] == "raw_syscalls:sys_enter" and int(e[4].split()[1]) in nrs
        def sysexit(tid, nrs):
            return lambda e: e[1] == tid and e[3] == "raw_syscalls:sys_exit" and int(e[4].split()[1]) in nrs and int(e[4].split("=")[-1]) > 0
        def waking(tid):
            return lambda e: e[3] == "sched:sched_waking" and f" pid={tid} " in e[4]
        def running(tid):
            return lambda e: e[3] == "sched:sched_switch" and f"next_pid={tid} " in e[4]
        def xmit(tid, dev):
            return lambda e: e[3] == "net:net_dev_start_xmit" and f"dev={dev} " in e[4] and (tid is None or e[1] == tid)
        t = nxt("tun1", t0, xmit(None, "vmsec0"))
        t = nxt("h1 read done", t, sysexit(h1, (0,)))
        p["h1 waking"] = (find(p["tun1"], waking(h1), p["h1 read done"]) or [None])[0] if t else None
        p["h1 running"] = (find(p["h1 waking"], running(h1), p["h1 read done"]) or [None])[0] if p["h1 waking"] else None
        t = nxt("h1 send", t, sysx(h1, (46, 44, 307)))
        t = nxt("u0 out", t, xmit(h1, "u0"))
        t = nxt("h2 recv done", t, sysexit(h2, (47, 299, 45)))
        p["h2 waking"] = (find(p["u0 out"], waking(h2), t) or [None])[0] if t else None
        p["h2 running"] = (find(p["h2 waking"], running(h2), t) or [None])[0] if p["h2 waking"] else None
        t = nxt("h2 write", t, sysx(h2, (1, 20)))
        t = nxt("h2 tun reply", t, xmit(None, "vmsec0"))
        t = nxt("h2 write done", t, sysexit(h2, (1, 20)))
        t = nxt("h2 read done", p["h2 tun reply"], sysexit(h2, (0,)))
        t = nxt("h2 send", t, sysx(h2, (46, 44, 307)))
        t = nxt("u0 back", t, xmit(h2, "u0"))
        t = nxt("h1 recv done", t, sysexit(h1, (47, 299, 45)))
        p["h1 waking 2"] = (find(p["u0 back"], waking(h1), t) or [None])[0] if t else None
        p["h1 running 2"] = (find(p["h1 waking 2"], running(h1), t) or [None])[0] if p["h1 waking 2"] else None
        t = nxt("h1 write", t, sysx(h1, (1, 20)))
        t = nxt("ping waking", t, lambda e: e[3] == "sched:sched_waking" and "comm=ping " in e[4])
        t = nxt("ping running", t, lambda e: e[3] == "sched:sched_switch" and "next_comm=ping " in e[4])
        out.append(p)
    return out


SPANS = [
    ("ping send -> echo enters h1's TUN", "send", "tun1"),
    ("h1 out: TUN -> daemon woken (waking)", "tun1", "h1 waking"),
    ("h1 out: waking -> running", "h1 waking", "h1 running"),
    ("h1 out: running -> TUN read returns", "h1 running", "h1 read done"),
    ("h1 out: TUN read -> sendmsg", "h1 read done", "h1 send"),
    ("h1 out: sendmsg -> ESP leaves u0", "h1 send", "u0 out"),
    ("h2: ESP on u0 -> h2 woken (softirq)", "u0 out", "h2 waking"),
    ("h2: waking -> running", "h2 waking", "h2 running"),
    ("h2: running -> recvmsg returns", "h2 running", "h2 recv done"),
    ("h2: recvmsg -> TUN write", "h2 recv done", "h2 write"),
    ("h2: TUN write (VM2's reply made inside)", "h2 write", "h2 write done"),
    ("h2: write done -> reply read", "h2 write done", "h2 read done"),
    ("h2: reply read -> sendmsg", "h2 read done", "h2 send"),
    ("h2: sendmsg -> ESP leaves u0", "h2 send", "u0 back"),
    ("h1 in: ESP on u0 -> h1 woken", "u0 back", "h1 waking 2"),
    ("h1 in: waking -> running", "h1 waking 2", "h1 running 2"),
    ("h1 in: ESP on u0 -> recvmsg returns", "u0 back", "h1 recv done"),
    ("h1 in: recvmsg -> TUN write", "h1 recv done", "h1 write"),
    ("h1 in: TUN write -> ping woken", "h1 write", "ping waking"),
    ("ping: waking -> running", "ping waking", "ping running"),
    ("total: ping send -> ping running", "send", "ping running"),
]


def print_spans(tl):
    print(f"{'span':48s} {'p50 us':>8s} {'p25':>7s} {'p75':>7s}  n")
    for name, a, b in SPANS:
        v = [p[b] - p[a] for p in tl if p.get(a) is not None and p.get(b) is not None and p[b] >= p[a]]
        if not v:
            print(f"{name:48s} {'-':>8s}")
            continue
        q = st.quantiles(v, n=4) if len(v) > 1 else [v[0]] * 3
        print(f"{name:48s} {st.median(v):8.1f} {q[0]:7.1f} {q[2]:7.1f}  {len(v)}")


def main():
    ev = parse(sys.argv[1])
    h1, h2 = int(sys.argv[2]), int(sys.argv[3])
    daemons = {h1: "h1", h2: "h2"}
    # Per CPU: is it idle (the last switch went to swapper)?
    idle = defaultdict(lambda: False)
    ping_tid = None
    turns = []  # dicts for daemon and ping turns
    cur = {}  # tid -> open turn
    waking = {}  # tid -> (time, waker cpu, target idle?, waker comm)
    last_xmit = {}  # tid context -> time of last net_dev_start_xmit by dev
    xmit = []  # (time, tid, dev)
    ping_send = []
    for t, tid, cpu, name, rest, comm, pid in ev:
        if name == "sched:sched_switch":
            prev, nxt = int(field(rest, "prev_pid")), int(field(rest, "next_pid"))
            idle[cpu] = nxt == 0
            if prev in cur:
                tr = cur.pop(prev)
                tr["out"] = t
                turns.append(tr)
            if nxt in daemons or (ping_tid is not None and nxt == ping_tid):
                w = waking.pop(nxt, None)
                cur[nxt] = {"tid": nxt, "who": daemons.get(nxt, "ping"), "in": t, "cpu": cpu, "wake": w,
                            "sys": [], "enter": None, "xmit": []}
        elif name == "sched:sched_waking":
            p = int(field(rest, "pid"))
            tgt = int(field(rest, "target_cpu"))
            if p in daemons or (ping_tid is not None and p == ping_tid):
                waking[p] = (t, cpu, tgt, idle[tgt], comm)
        elif name == "raw_syscalls:sys_enter":
            nr = int(rest.split()[1])
            if comm == "ping" and nr in (44, 46) and ping_tid in (None, tid):
                ping_tid = tid
                ping_send.append(t)
            if tid in cur:
                cur[tid]["enter"] = (t, nr)
        elif name == "raw_syscalls:sys_exit":
            if tid in cur and cur[tid]["enter"] is None and not cur[tid]["sys"]:
                # The call the task slept in (epoll_wait) returns: kernel time after the switch.
                cur[tid]["sys"].append((cur[tid]["in"], t, int(rest.split()[1]), int(rest.split("=")[-1])))
            elif tid in cur and cur[tid]["enter"]:
                t0, nr = cur[tid]["enter"]
                ret = int(rest.split("=")[-1])
                cur[tid]["sys"].append((t0, t, nr, ret))
                cur[tid]["enter"] = None
        elif name == "net:net_dev_start_xmit":
            dev = field(rest, "dev")
            xmit.append((t, tid, dev))
            if tid in cur:
                cur[tid]["xmit"].append((t, dev))
    turns.sort(key=lambda x: x["in"])
    rows = defaultdict(list)
    sysc = Counter()
    nturn = Counter()
    sysall = defaultdict(list)
    seqsteps = defaultdict(list)
    used = 0
    for i, t0 in enumerate(ping_send):
        t_end = ping_send[i + 1] if i + 1 < len(ping_send) else t0 + 20000
        seq = [tr for tr in turns if t0 <= tr["in"] < t_end and tr["who"] != "ping"]
        pings = [tr for tr in turns if t0 < tr["in"] < t_end and tr["who"] == "ping"
                 and len([x for x in seq[:3]]) == 3 and tr["in"] > seq[2]["in"]]
        # Expected: h1 (out), h2, h1 (in), then ping woken.
        want = ["h1", "h2", "h1"]
        if [tr["who"] for tr in seq[:3]] != want or not pings:
            continue
        used += 1
        prev_t = t0
        for name, tr in zip(["h1 out", "h2 turn", "h1 in"], seq[:3]):
            w = tr["wake"]
            if w is None:
                continue
            wt, wcpu, tgt, tidle, wcomm = w
            rows[name + ": cause to waking"].append(wt - prev_t)
            rows[name + ": waking to running"].append(tr["in"] - wt)
            rows[name + ": turn (running)"].append(tr["out"] - tr["in"])
            insys = sum(x[1] - x[0] for x in tr["sys"])
            rows[name + ": of which in syscalls"].append(insys)
            rows[name + ": of which user"].append(tr["out"] - tr["in"] - insys)
            rows[name + ": target CPU idle"].append(100.0 if tidle else 0.0)
            rows[name + ": woken on waker's CPU"].append(100.0 if tgt == wcpu else 0.0)
            sends = [x for x in tr["sys"] if x[2] in (1, 44, 46, 307, 20)]
            if sends:
                rows[name + ": running to first send/write"].append(sends[0][0] - tr["in"])
            steps = []
            last = tr["in"]
            for (a, b, nr, ret) in tr["sys"]:
                steps.append(a - last)
                steps.append(b - a)
                last = b
            steps.append(tr["out"] - last)
            names = tuple(SYSCALLS.get(x[2], str(x[2])) + ("=EAGAIN" if x[3] == -11 else "") for x in tr["sys"])
            sysall[name].append(names)
            seqsteps[(name, names)].append(steps)
            for n in names:
                sysc[(name, n)] += 1
            nturn[name] += 1
            # The next hop's cause: the last u0 / TUN transmit in this turn, else its end.
            xs = [x[0] for x in tr["xmit"]]
            prev_t = xs[-1] if xs else tr["out"]
        pg = pings[0]
        w = pg["wake"]
        if w:
            rows["ping: cause to waking"].append(w[0] - prev_t)
            rows["ping: waking to running"].append(pg["in"] - w[0])
            rows["ping: target CPU idle"].append(100.0 if w[3] else 0.0)
        rows["round trip (ping send to ping running)"].append(pg["in"] - t0)
    ev.sort(key=lambda e: e[0])
    print_spans(timeline(ev, h1, h2, ping_send))
    print(f"per-turn view: pings with three separate daemon turns: {used} of {len(ping_send)}")
    for k, v in rows.items():
        unit = "%" if "CPU" in k else "us"
        if unit == "%":
            print(f"{k:45s} {st.mean(v):6.0f} %   (n={len(v)})")
        else:
            q = st.quantiles(v, n=4) if len(v) > 1 else [v[0]] * 3
            print(f"{k:45s} p50 {st.median(v):7.1f} us   p25 {q[0]:7.1f}  p75 {q[2]:7.1f}")
    for name in ["h1 out", "h2 turn", "h1 in"]:
        if nturn[name]:
            c = Counter(sysall[name])
            top, n = c.most_common(1)[0]
            print(f"{name}: syscalls per turn {sum(v for (k, _), v in sysc.items() if k == name) / nturn[name]:.1f};"
                  f" most common sequence ({n}/{nturn[name]}):")
            steps = seqsteps[(name, top)]
            med = [st.median(x[j] for x in steps) for j in range(len(steps[0]))]
            out = []
            for j, sc in enumerate(top):
                out.append(f"[user {med[2 * j]:.1f}]")
                out.append(f"{sc} {med[2 * j + 1]:.1f}")
            out.append(f"[user {med[-1]:.1f}] (us, medians; the first call is the one it slept in, from the switch)")
            print("   ", " ".join(out))


if __name__ == "__main__":
    main()
