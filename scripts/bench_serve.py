"""`transfer serve` under load: latency and throughput with 1, 8 and 32 concurrent clients, each sending one review
per request (the micro-batcher groups concurrent requests into one model batch).

It starts the service on a loopback port, sends `--requests` requests at each concurrency, and prints the request
latency p50/p95, requests per second, and the mean model batch the service's /metrics reports. Run it on a quiet
machine.

    python scripts/bench_serve.py models/books-dvd --data-dir ../shared/data --target dvd
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def main() -> None:
    import httpx
    import torch
    from prometheus_client.parser import text_string_to_metric_families

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_drift import domain_texts

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a saved run or exported folder")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--target", default="dvd", help="the domain whose test reviews are sent")
    parser.add_argument("--requests", type=int, default=256, help="per concurrency level")
    args = parser.parse_args()

    _, texts = domain_texts(args.target, args.data_dir, 0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TRANSFER_SERVE_TOKEN": "bench"}
    server = subprocess.Popen([sys.executable, "-m", "transfer_cli.cli", "serve", str(args.model), "--port", str(port)],
                              env=env, stderr=subprocess.DEVNULL)
    url, headers = f"http://127.0.0.1:{port}", {"Authorization": "Bearer bench"}
    try:
        for _ in range(600):
            try:
                httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores; one review per request")
        print(f"{'clients':>7} {'p50 ms':>7} {'p95 ms':>7} {'req/s':>7} {'texts/batch':>11}")
        with httpx.Client(headers=headers, timeout=120) as client:
            client.post(f"{url}/predict", json=texts[:8])  # warm-up

            def batches():
                metrics = client.get(f"{url}/metrics").text
                samples = {s.name: s.value for f in text_string_to_metric_families(metrics) for s in f.samples}
                return samples["transfer_batch_texts_count"], samples["transfer_batch_texts_sum"]

            for clients in (1, 8, 32):
                def send(i):
                    start = time.perf_counter()
                    client.post(f"{url}/predict", json=[texts[i % len(texts)]]).raise_for_status()
                    return time.perf_counter() - start

                count0, sum0 = batches()
                start = time.perf_counter()
                with ThreadPoolExecutor(clients) as pool:
                    latencies = list(pool.map(send, range(args.requests)))
                seconds = time.perf_counter() - start
                count1, sum1 = batches()
                print(f"{clients:7d} {1e3 * np.percentile(latencies, 50):7.1f} {1e3 * np.percentile(latencies, 95):7.1f} "
                      f"{args.requests / seconds:7.1f} {(sum1 - sum0) / max(1, count1 - count0):11.1f}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
