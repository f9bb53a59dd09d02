#!/usr/bin/env python3
"""Table and JSON for one `bench/run` scenario.

Reads WORK/meta.json and WORK/{plain,tls,edist}.json (written by node a, edist_bench.erl), prints
the table (measured values, edist/OTP and edist/TLS ratios, target verdicts) and writes the raw
summary to --out.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

MODES = [("plain", "plain OTP"), ("tls", "OTP TLS"), ("edist", "edist"), ("edist-tcp", "edist TCP")]
# The shaped link (hol, lossy) and the senders per phase, from meta.json.
LINK_RATE = "100mbit"
LINK_MB_S = 100e6 / 8 / 1e6  # 100 Mbit/s in MB/s (10^6 bytes)
SENDERS = 2


def tc_rate_bits(rate):
    """bits/s of a tc rate such as 100mbit, 20Mbit, 512kbit."""
    r = rate.lower().rstrip("ps").rstrip("/")
    for suffix, mult in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)):
        if r.endswith(suffix):
            return float(r[: -len(suffix)]) * mult
    return float(r)


def dig(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


class Row:
    def __init__(self, label, unit, path, fmt, scale=1.0, target=None, ratio=True):
        self.label, self.unit, self.path, self.fmt, self.scale, self.target = label, unit, path, fmt, scale, target
        self.ratio = ratio


def target_p99(limit_ms):
    def t(v):
        e = v.get("edist")
        return f"edist <= {limit_ms:g} ms", (None if e is None else e <= limit_ms)
    return t


def target_link(frac):
    def t(v):
        e = v.get("edist")
        need = frac * LINK_MB_S
        return f"edist >= {need:.2f} MB/s ({frac:.0%} of {LINK_RATE})", (None if e is None else e >= need)
    return t


def target_drain(limit_s):
    def t(v):
        e = v.get("edist")
        return f"edist <= {limit_s:g} s", (None if e is None else e <= limit_s)
    return t


def target_latency(extra_us):
    def t(v):
        e, p = v.get("edist"), v.get("plain")
        return f"edist <= plain + {extra_us} us", (None if e is None or p is None else e <= p + extra_us)
    return t


def target_bulk(v):
    e, p, s = v.get("edist"), v.get("plain"), v.get("tls")
    ok = None
    if e is not None and p is not None and s is not None:
        ok = e >= 10 * s and e >= 0.5 * p
    return "edist >= 10x TLS and >= 0.5x plain", ok


def target_rate(v):
    e, p = v.get("edist"), v.get("plain")
    return "edist >= 1.0x plain", (None if e is None or p is None else e >= p)


CPU_GROUPS = {"*beams": ("a", "b"), "*gateways": ("gw_a", "gw_b"), "*proxies": ("proxy_a", "proxy_b", "bridge")}


def cores_busy(phase, group):
    """Average cores used during the phase by the group's processes (None if none ran)."""
    cpu, wall = dig(phase, "cpu_ms"), dig(phase, "wall_s")
    if not isinstance(cpu, dict) or not wall:
        return None
    ms = [v for k, v in cpu.items() if k in CPU_GROUPS[group] and isinstance(v, (int, float))]
    return sum(ms) / 1000.0 / wall if ms else None


def cpu_rows(ph, proxies=False):
    rows = [Row("CPU, BEAMs a+b", "cores", ph + ("*beams",), "{:.2f}", ratio=False),
            Row("CPU, gateways", "cores", ph + ("*gateways",), "{:.2f}", ratio=False)]
    if proxies:
        rows.append(Row("CPU, impair.py", "cores", ph + ("*proxies",), "{:.2f}", ratio=False))
    return rows


def rows_for(scenario):
    f_us = "{:,.0f}"
    f_ms = "{:,.2f}"
    f_mb = "{:,.1f}"
    f_n = "{:,.0f}"
    if scenario == "latency":
        ph = ("results", "idle")
        return [
            ("idle ping-pong, one process, every 1-2 ms", [
                Row("RTT p50", "us", ph + ("rtt_us", "p50"), f_us, target=target_latency(100)),
                Row("RTT p99", "us", ph + ("rtt_us", "p99"), f_us),
                Row("RTT max", "us", ph + ("rtt_us", "max"), f_us),
                Row("RTT mean", "us", ph + ("rtt_us", "mean"), f_us),
                Row("pings", "", ph + ("rtt_us", "n"), f_n, ratio=False),
            ] + cpu_rows(ph)),
        ]
    if scenario == "throughput":
        b, s = ("results", "bulk_1mb"), ("results", "small_100b")
        return [
            ("1 MB messages, one sender, no rate limit", [
                Row("bulk", "MB/s", b + ("mb_s",), f_mb, target=target_bulk),
                Row("messages", "msg/s", b + ("msgs_s",), f_n),
            ] + cpu_rows(b)),
            ("100-byte messages, four senders, no rate limit", [
                Row("rate", "msg/s", s + ("msgs_s",), f_n, target=target_rate),
                Row("payload", "MB/s", s + ("mb_s",), "{:,.2f}"),
            ] + cpu_rows(s)),
        ]
    groups = []
    n = {1: "one sender", 2: "two senders", 3: "three senders", 4: "four senders"}.get(SENDERS, f"{SENDERS} senders")
    phases = [("bulk_8mb", f"{n} of 8 MB binaries"), ("bulk_64kb", f"{n} of 64 KB binaries")]
    if scenario == "hol":
        phases.append(("bulk_1mib_x4", "four senders of 1 MiB binaries"))
        phases.append(("acked_8mb", f"{n} of 8 MB binaries, each waiting for an ack per message,"))
    for key, title in phases:
        ph = ("results", key)
        hol = scenario == "hol"
        rows = [
            Row("ping RTT p50", "ms", ph + ("rtt_us", "p50"), f_ms, scale=1e-3,
                target=target_p99(3) if hol and LINK_MB_S >= 12.5 else None),
            Row("ping RTT p99", "ms", ph + ("rtt_us", "p99"), f_ms, scale=1e-3,
                target=target_p99(10 if LINK_MB_S >= 12.5 else 20) if hol else None),
            Row("ping RTT max", "ms", ph + ("rtt_us", "max"), f_ms, scale=1e-3),
            Row("pings", "", ph + ("rtt_us", "n"), f_n, ratio=False),
            Row("  unanswered at the end", "", ph + ("rtt_us", "censored"), f_n, ratio=False),
        ]
        if hol:
            rows += [
                Row("bulk, whole msgs delivered", "MB/s", ph + ("mb_s",), "{:,.2f}", target=target_link(0.9)),
                Row("  drain after deadline", "s", ph + ("drain_s",), "{:,.1f}", ratio=False, target=target_drain(1.0)),
            ]
        rows.append(Row("bulk, window goodput at b", "MB/s", ph + ("window_mb_s",), "{:,.2f}"))
        groups.append((f"{title} + one ping every 5 ms", rows + cpu_rows(ph, proxies=not hol)))
    return groups


def value(res, row):
    if row.path[-1] in CPU_GROUPS:
        return cores_busy(dig(res, *row.path[:-1]), row.path[-1])
    v = dig(res, *row.path)
    return None if not isinstance(v, (int, float)) or isinstance(v, bool) else v * row.scale


def git_info(root):
    def git(*a):
        try:
            return subprocess.run(["git", "-C", root, *a], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None
    changed = git("status", "--porcelain", "--", "crates", "Cargo.toml", "Cargo.lock")
    return {"commit": git("rev-parse", "HEAD"), "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "crates_dirty": bool(changed), "crates_changed_files": len(changed.splitlines()) if changed else 0}


def machine():
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), None)
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model, "kernel": platform.release()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    with open(os.path.join(a.work, "meta.json")) as f:
        meta = json.load(f)
    global LINK_RATE, LINK_MB_S, SENDERS
    LINK_RATE = meta.get("rate", LINK_RATE)
    LINK_MB_S = tc_rate_bits(LINK_RATE) / 8 / 1e6
    SENDERS = int(meta.get("senders", SENDERS))
    results = {}
    for m, _ in MODES:
        p = os.path.join(a.work, f"{m}.json")
        if os.path.exists(p):
            try:
                with open(p) as f:
                    results[m] = json.load(f)
            except ValueError as e:
                results[m] = {"ok": False, "error": f"unreadable result: {e}"}
    # Each mode must have gone the way it claims: plain TCP and TLS to host B, edist to the
    # local gateway impersonating b on loopback.
    for m, r in results.items():
        d = r.get("dist") or {}
        proto, address = d.get("protocol"), str(d.get("address", ""))
        want = {"plain": proto == "tcp" and not address.startswith("127."),
                "tls": proto == "tls" and d.get("controller") == "process",
                "edist": proto == "tcp" and address.startswith("127.0.0.1:"),
                "edist-tcp": proto == "tcp" and address.startswith("127.0.0.1:")}[m]
        if r.get("ok") and not want:
            r["ok"] = False
            r["error"] = f"connection is not what {m} should be: {d}"
    modes = [(m, name) for m, name in MODES if m in results]

    out_rows = []
    lines = []
    link = meta.get("link", "")
    dur = meta.get("duration_ms", 0) / 1000
    lines.append(f"== {a.scenario}: {link}; {dur:g} s per phase; MB = 10^6 bytes")
    head = f"{'':<28}" + "".join(f"{name:>12}" for _, name in modes) + f"{'edist/OTP':>11}{'edist/TLS':>11}  target / verdict"
    for title, rows in rows_for(a.scenario):
        lines.append(f"-- {title}")
        lines.append(head)
        for r in rows:
            vals = {m: value(results[m], r) for m, _ in modes if results[m].get("ok")}
            cells = "".join(f"{(r.fmt.format(vals[m]) if vals.get(m) is not None else 'n/a'):>12}" for m, _ in modes)

            def ratio(den):
                e, d = vals.get("edist"), vals.get(den)
                return None if e is None or d in (None, 0) else e / d
            rp, rt = (ratio("plain"), ratio("tls")) if r.ratio else (None, None)
            rat = "".join(f"{(f'{x:.2f}x' if x is not None else '-'):>11}" for x in (rp, rt))
            tgt, verdict = (r.target(vals) if r.target else ("", None))
            vtxt = "" if not r.target else ("PASS" if verdict else ("FAIL" if verdict is False else "n/a"))
            label = f"{r.label} ({r.unit})" if r.unit else r.label
            lines.append(f"{label:<28}{cells}{rat}  {tgt}{'  ' + vtxt if vtxt else ''}")
            out_rows.append({"group": title, "metric": r.label, "unit": r.unit, "values": vals,
                             "edist_over_plain": rp, "edist_over_tls": rt, "target": tgt or None,
                             "verdict": vtxt or None})
    for m, name in MODES:
        r = results.get(m)
        if r is None:
            if m in meta.get("modes", "").split():
                lines.append(f"!! {name}: no result")
        elif not r.get("ok"):
            err = str(r.get("error", "?")).splitlines()[0][:200]
            lines.append(f"!! {name}: FAILED: {err}")
        else:
            d = r.get("dist", {})
            cc = d.get("tcp_congestion_control")
            lines.append(f"   {name}: node a -> {d.get('address')} over {d.get('protocol')} "
                         f"({d.get('proto_dist')}, epmd module {d.get('epmd_module')}"
                         + {"edist": ", edist fabric: QUIC, congestion control from the gateway config (default BBR)",
                            "edist-tcp": ", edist fabric: TLS 1.3 over TCP (yamux), the kernel's congestion control"}.get(
                                m, f", TCP congestion control {cc}") + ")")
    for n in meta.get("notes", []):
        lines.append(f"   note: {n}")
    print("\n".join(lines))

    doc = {
        "scenario": a.scenario,
        "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "git": git_info(a.root),
        "machine": machine(),
        "otp_release": next((dig(r, "dist", "otp_release") for r in results.values() if dig(r, "dist")), None),
        "config": meta,
        "rows": out_rows,
        "modes": results,
        "table": lines,
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=False)
        f.write("\n")
    rel = os.path.relpath(a.out)
    print(f"   raw figures: {a.out if rel.startswith('..') else rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
