"""Turns the JSON lines of ourwhats-bench runs (benches/compare.sh) into the side-by-side
table of docs/benchmarks.md: per measure, the median over runs for each server, the ratio
ours/Synapse, and server CPU per operation. The table replaces what stands between the
markers "<!-- compare.sh:begin -->" and "<!-- compare.sh:end -->" in the document.
Usage: compare_table.py RESULTS.jsonl DOC.md --runs N --synapse-version V --command CMD"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys

BEGIN, END = "<!-- compare.sh:begin -->", "<!-- compare.sh:end -->"

# (scenario, measure, field, row title, lower is better). Fields are those of the JSON
# lines, plus the derived rss_start_mib and rss_growth_mib (peak minus start).
ROWS = [
    ("idle", "idle", "rss_start_mib", "idle RSS after start-up (MiB)", True),
    ("requests", "versions", "rate", "GET /versions: requests/s ({connections} connections)", False),
    ("requests", "versions", "cpu_ms_per_op", "GET /versions: server CPU per request (ms)", True),
    ("requests", "whoami", "rate", "GET /account/whoami: requests/s ({connections} connections)", False),
    ("requests", "whoami", "cpu_ms_per_op", "GET /account/whoami: server CPU per request (ms)", True),
    ("send", "send", "rate", "send: events/s ({senders} senders, room of {members})", False),
    ("send", "send", "p50_ms", "send: latency p50 (ms)", True),
    ("send", "send", "p99_ms", "send: latency p99 (ms)", True),
    ("send", "send", "cpu_ms_per_op", "send: server CPU per event (ms)", True),
    ("send", "send", "client_cpu_ms_per_op", "send: load generator's CPU per event (ms)", True),
    ("messages", "page", "p50_ms", "GET /messages, {limit} events: median (ms)", True),
    ("messages", "page", "p99_ms", "GET /messages: p99 (ms)", True),
    ("messages", "page", "cpu_ms_per_op", "GET /messages: server CPU per page (ms)", True),
    ("delivery", "delivery", "p50_ms", "delivery to a long-poll: p50 (ms)", True),
    ("delivery", "delivery", "p99_ms", "delivery to a long-poll: p99 (ms)", True),
    ("delivery", "delivery", "cpu_ms_per_op", "delivery: server CPU per message (ms)", True),
    ("sync", "initial", "p50_ms", "initial /sync, {rooms} rooms: median (ms)", True),
    ("sync", "initial", "cpu_ms_per_op", "initial /sync: server CPU (ms)", True),
    ("sync", "incremental_empty", "p50_ms", "incremental /sync, nothing new: median (ms)", True),
    ("sync", "incremental_empty", "cpu_ms_per_op", "incremental /sync: server CPU (ms)", True),
    ("longpolls", "held", "rss_growth_mib", "{clients} long-polls held: RSS growth (MiB)", True),
    ("longpolls", "held", "ops", "long-polls still parked after {hold_seconds} s", False),
    ("rooms", "create", "rate", "createRoom: rooms/s (one client)", False),
    ("rooms", "create", "p50_ms", "createRoom: latency p50 (ms)", True),
    ("rooms", "create", "cpu_ms_per_op", "createRoom: server CPU per room (ms)", True),
    ("media", "upload", "rate", "upload {size_mib} MiB: MiB/s", False),
    ("media", "upload", "cpu_ms_per_op", "upload: server CPU per file (ms)", True),
    ("media", "download", "rate", "download {size_mib} MiB: MiB/s", False),
    ("media", "download", "cpu_ms_per_op", "download: server CPU per file (ms)", True),
    ("big_upload", "upload", "rate", "upload {size_mib} MiB (streamed): MiB/s", False),
    ("big_upload", "upload", "rss_growth_mib", "upload {size_mib} MiB: RSS growth (MiB)", True),
    ("thumbnail", "upload", "p50_ms", "upload a {width}×{height} JPEG ({kib} KiB): ms", True),
    ("thumbnail", "first", "p50_ms", "its 256×256 thumbnail, first request (ms)", True),
    ("thumbnail", "cached", "p50_ms", "its thumbnail again: median (ms)", True),
    ("keys", "claim", "p50_ms", "POST /keys/claim, {devices} devices: median (ms)", True),
    ("keys", "claim", "cpu_ms_per_op", "/keys/claim: server CPU (ms)", True),
    ("keys", "query", "p50_ms", "POST /keys/query, {users} users: median (ms)", True),
    ("keys", "query", "cpu_ms_per_op", "/keys/query: server CPU (ms)", True),
]


def load(path):
    by_key = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            m = json.loads(line)
            start, peak = m.get("rss_start_kib"), m.get("rss_peak_kib")
            if start is not None:
                m["rss_start_mib"] = start / 1024
            if start is not None and peak is not None:
                m["rss_growth_mib"] = (peak - start) / 1024
            by_key.setdefault((m["scenario"], m["measure"], m["server"]), []).append(m)
    return by_key


def median_of(records, field):
    values = [r[field] for r in records if r.get(field) is not None]
    return statistics.median(values) if values else None


def fmt(v):
    if v is None:
        return "–"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}" if v >= 0.01 else f"{v:.4f}"


def table(by_key, runs, synapse_version, command):
    lines = [
        f"Command: `{command}`. Synapse {synapse_version} from PyPI (SQLite, rate limits off, "
        f"warnings-only log) and ourwhats (release build, rate limits off) on loopback; "
        f"{os.cpu_count()} cores, {platform.machine()}, {datetime.date.today().isoformat()}. "
        f"Medians of {runs} runs; each run measures both servers, alternating which goes first. "
        "Server CPU is user + system time of the server process over the phase "
        "(/proc/PID/stat), divided by its operations. The load generator shares the cores.",
        "",
        "| measure | ourwhats | Synapse | ours/Synapse |",
        "|---|---|---|---|",
    ]
    for scenario, measure, field, title, lower_better in ROWS:
        ours = by_key.get((scenario, measure, "ourwhats"), [])
        theirs = by_key.get((scenario, measure, "synapse"), [])
        if not ours and not theirs:
            continue
        params = (ours or theirs)[0].get("params", {})
        a, b = median_of(ours, field), median_of(theirs, field)
        ratio = f"{a / b:.3g}" if a is not None and b else "–"
        if a is not None and b and a > 0:
            better = (b / a) if lower_better else (a / b)
            ratio += f" ({better:,.1f}× {'less' if lower_better else 'more'})" if better >= 1 else ""
        lines.append(f"| {title.format(**params)} | {fmt(a)} | {fmt(b)} | {ratio} |")
    peaks = {}
    for server in ("ourwhats", "synapse"):
        values = [r["rss_peak_kib"] / 1024 for (_, _, s), rs in by_key.items() if s == server
                  for r in rs if r.get("rss_peak_kib")]
        peaks[server] = max(values) if values else None
    if any(peaks.values()):
        lines.append(f"| RSS peak over all runs (MiB) | {fmt(peaks['ourwhats'])} | "
                     f"{fmt(peaks['synapse'])} | |")
    errors = sum(r.get("errors", 0) for rs in by_key.values() for r in rs)
    lines.append("")
    lines.append(f"Failed requests over all runs: {errors}.")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("results")
    p.add_argument("doc")
    p.add_argument("--runs", default="?")
    p.add_argument("--synapse-version", default="?")
    p.add_argument("--command", default="benches/compare.sh")
    a = p.parse_args()
    results = load(a.results)
    text = table(results, a.runs, a.synapse_version, a.command)
    print(text)
    if not any(server == "synapse" for (_, _, server) in results):
        print("no Synapse figures: the document is left as it is", file=sys.stderr)
        return
    with open(a.doc) as f:
        doc = f.read()
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        doc = f"{head}{BEGIN}\n{text}\n{END}{tail}"
    else:
        doc = doc.rstrip("\n") + f"\n\n## Side by side with Synapse\n\n{BEGIN}\n{text}\n{END}\n"
    with open(a.doc, "w") as f:
        f.write(doc)
    print(f"written to {a.doc}", file=sys.stderr)


if __name__ == "__main__":
    main()
