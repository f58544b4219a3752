"""What the write gate costs an edge box's remote write: the same requests sent straight to a real
Prometheus's receiver and through the gate in front of it, side by side.

Starts Prometheus (the host's ``prometheus`` binary, receiver on, basic auth as the stack renders
it) and the gate (``python -m appliance.monitoring.write_gate``, one box account) on free ports,
then for each request size sends ``--requests`` requests one after another straight to Prometheus
and then through the gate (the bodies built beforehand, each a newer sample of its series), and
prints requests/s of each, their ratio, and the gate's CPU a request (``/proc``). The bodies are
snappy-compressed the way Prometheus compresses them (greedy matches of 4 bytes and more, so the
gate's decoder takes the copy path), from series shaped like the model server's (histogram
buckets with model, protocol and le labels). Every request is answered 204 or the run stops. A
benchmark, not a test:

    .venv/bin/python benchmarks/write_gate.py [--sizes 200,2000] [--requests 30]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from proc_stats import cpu_seconds, free_port

from appliance.monitoring.remote_write_wire import Series, sample, snappy_decode, write_request
from appliance.monitoring.web_auth import web_config
from appliance.monitoring.write_gate import accounts_file

BOX, BOX_PASSWORD, CENTRAL_PASSWORD = "shop-12", "box-password-for-the-benchmark", "central-password"
HEADERS = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"}


def compress(data: bytes) -> bytes:
    """A snappy block of ``data`` with copies, as Prometheus's encoder makes (greedy 4-byte hash
    matches; literals between them), so that decoding exercises the copy path."""
    out = bytearray()
    size = len(data)
    while True:  # preamble: the uncompressed length as a varint
        byte = size & 0x7F
        size >>= 7
        out.append(byte | (0x80 if size else 0))
        if not size:
            break
    table: dict[bytes, int] = {}
    pos = literal_start = 0

    def literal(end: int) -> None:
        start = literal_start
        while start < end:
            chunk = data[start : min(end, start + 65536)]
            n = len(chunk) - 1
            out.extend(bytes([n << 2]) if n < 60 else bytes([61 << 2]) + n.to_bytes(2, "little"))
            out.extend(chunk)
            start += len(chunk)

    while pos + 4 <= len(data):
        key = data[pos : pos + 4]
        candidate = table.get(key)
        table[key] = pos
        if candidate is None or pos - candidate > 65535:
            pos += 1
            continue
        length = 4
        while pos + length < len(data) and data[candidate + length] == data[pos + length] and length < 64:
            length += 1
        literal(pos)
        out.append(2 | (length - 1) << 2)
        out.extend((pos - candidate).to_bytes(2, "little"))
        pos += length
        literal_start = pos
    literal(len(data))
    return bytes(out)


def request(series_count: int, tag: str, at_ms: int) -> bytes:
    """One WriteRequest of ``series_count`` series shaped like the model server's, compressed."""
    bounds = ["0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "+Inf"]
    series = [
        Series(
            {
                "__name__": "appliance_inference_request_duration_seconds_bucket",
                "model": f"model-{i // (2 * len(bounds))}",
                "protocol": ("rest", "grpc")[i // len(bounds) % 2],
                "le": bounds[i % len(bounds)],
                "instance": "127.0.0.1:8082",
                "job": "serving",
                "run": tag,
            },
            [sample(float(i), at_ms)],
        )
        for i in range(series_count)
    ]
    raw = write_request(series)
    body = compress(raw)
    assert snappy_decode(body, len(raw)) == raw, "the benchmark's compressor is wrong"
    return body


def wait_up(url: str, auth: tuple[str, str] | None, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited {proc.returncode}")
        try:
            if httpx.get(url, auth=auth, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within 60 s")


def send_all(url: str, auth: tuple[str, str], bodies: list[bytes]) -> float:
    """Send ``bodies`` one after another; the wall seconds it took (every answer a 204)."""
    with httpx.Client(auth=auth, timeout=30) as client:
        started = time.monotonic()
        for body in bodies:
            answer = client.post(url, content=body, headers=HEADERS)
            if answer.status_code != 204:
                raise SystemExit(f"{url} answered {answer.status_code}: {answer.text[:300]}")
        return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="200,2000", help="series a request, comma-separated")
    parser.add_argument("--requests", type=int, default=30, help="requests of each size, each way")
    args = parser.parse_args()
    prometheus_bin = shutil.which("prometheus")
    if prometheus_bin is None:
        raise SystemExit("prometheus not found (apt-get install prometheus)")
    work = Path(tempfile.mkdtemp(prefix="write-gate-bench-"))
    (work / "prometheus.yml").write_text("global: {scrape_interval: 1m}\n")
    (work / "web.yml").write_text(web_config(CENTRAL_PASSWORD))
    (work / "central_password").write_text(CENTRAL_PASSWORD)
    (work / "accounts.json").write_text(accounts_file({f"appliance-edge-{BOX}": BOX_PASSWORD}))
    prom_port, gate_port = free_port(), free_port()
    central = ("appliance", CENTRAL_PASSWORD)
    prometheus = subprocess.Popen(
        [prometheus_bin, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", f"--web.config.file={work / 'web.yml'}",
         "--web.enable-remote-write-receiver"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    upstream = f"http://127.0.0.1:{prom_port}/api/v1/write"
    gate = subprocess.Popen(
        [sys.executable, "-m", "appliance.monitoring.write_gate", "--host", "127.0.0.1",
         "--port", str(gate_port), "--accounts-file", str(work / "accounts.json"), "--upstream", upstream,
         "--upstream-user", "appliance", "--upstream-password-file", str(work / "central_password")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_up(f"http://127.0.0.1:{prom_port}/-/ready", central, prometheus)
        wait_up(f"http://127.0.0.1:{gate_port}/healthz", None, gate)
        rows = []
        box = (f"appliance-edge-{BOX}", BOX_PASSWORD)
        gate_url = f"http://127.0.0.1:{gate_port}/api/v1/write"
        for size in (int(s) for s in args.sizes.split(",")):
            now = int(time.time() * 1000)  # each request a newer sample of the same series
            direct = [request(size, f"direct-{size}", now + i) for i in range(args.requests)]
            through = [request(size, f"gate-{size}", now + i) for i in range(args.requests)]
            direct_s = send_all(upstream, central, direct)
            before = cpu_seconds(gate.pid)
            through_s = send_all(gate_url, box, through)
            gate_cpu = (cpu_seconds(gate.pid) - before) / args.requests
            rows.append(
                f"| {size} | {len(direct[0]) / 1024:.0f} KiB | {args.requests / direct_s:.1f} | "
                f"{args.requests / through_s:.1f} | {direct_s / through_s:.2f} | {gate_cpu * 1000:.1f} | "
                f"{gate_cpu / size * 1e6:.1f} |"
            )
        print("| series a request | body (snappy) | straight to Prometheus (req/s) "
              "| through the gate (req/s) | ratio | gate CPU ms/request | gate CPU us/series |")  # fmt: skip
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        print("\n".join(rows))
    finally:
        for proc in (gate, prometheus):
            proc.terminate()
            proc.wait(15)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
