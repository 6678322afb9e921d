"""`transfer serve MODEL`: the adapted classifier behind HTTP (FastAPI on uvicorn; `pip install ".[serve]"`).

    POST /predict   a JSON list of texts -> {"predictions": [{"label", "score", "probabilities"}, ...]}
    GET  /health    liveness and the model's labels (no token needed, for load balancers)
    GET  /metrics   Prometheus text: requests by status, latency and batch-size histograms, texts, errors, drift
    GET  /drift     the drift monitor (deploy/drift.py): distance, entropy and class shares of recent traffic

Concurrent requests are micro-batched: a worker takes what has queued (up to --batch-size texts, waiting at most
--max-wait-ms for more), runs one length-sorted batch in a thread, and answers each request its own rows. With a
token (--token, or TRANSFER_SERVE_TOKEN), every route but /health needs `Authorization: Bearer TOKEN` (else 401).
Bodies over --max-bytes get 413, more than --max-texts texts 413, bad JSON or anything but a list of strings 400;
nothing a client sends stops the service. It binds 127.0.0.1 unless --host says otherwise. The service keeps no state
but its counters, so replicas behind a load balancer need nothing shared.
"""

import argparse
import asyncio
import hmac
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import List, Optional

from ..errors import TransferError
from ..outputs import model_folder

TOKEN_VARIABLE = "TRANSFER_SERVE_TOKEN"


class Batcher:
    """Queued requests -> micro-batches through the classifier, one at a time, off the event loop; the drift monitor,
    if any, sees every batch."""

    def __init__(self, classifier, batch_size: int, max_wait: float, metrics, monitor=None):
        self.classifier, self.batch_size, self.max_wait, self.metrics = classifier, batch_size, max_wait, metrics
        self.monitor = monitor
        self.queue: asyncio.Queue = asyncio.Queue()

    async def predict(self, texts: List[str]):
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pending = [await self.queue.get()]
            size, deadline = len(pending[0][0]), loop.time() + self.max_wait
            while size < self.batch_size and (remaining := deadline - loop.time()) > 0:
                try:
                    pending.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
                size += len(pending[-1][0])
            texts = [text for request, _ in pending for text in request]
            self.metrics["batch"].observe(len(texts))
            try:
                probabilities, _ = await loop.run_in_executor(None, self._predict, texts)
            except Exception as error:  # a model failure answers the waiting requests; the worker goes on
                for _, future in pending:
                    future.set_exception(error)
                continue
            start = 0
            for request, future in pending:
                future.set_result(probabilities[start : start + len(request)])
                start += len(request)

    def _predict(self, texts: List[str]):
        probabilities, features = self.classifier.predict(self.classifier.tokenize(texts), self.batch_size)
        if self.monitor is not None:
            self.monitor.observe(features, probabilities)
        return probabilities, features


def create_app(classifier, token: Optional[str], batch_size: int = 32, max_wait_ms: float = 5.0,
               max_texts: int = 256, max_bytes: int = 1_000_000, monitor=None):
    # (no `from __future__ import annotations` in this module: FastAPI reads the handlers' annotations, `Request`)
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    registry = CollectorRegistry()
    metrics = {
        "requests": Counter("transfer_requests", "HTTP requests by route and status", ["route", "status"], registry=registry),
        "latency": Histogram("transfer_request_seconds", "time to answer a /predict request", registry=registry,
                             buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)),
        "batch": Histogram("transfer_batch_texts", "texts per model batch", registry=registry,
                           buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)),
        "texts": Counter("transfer_texts", "texts classified", registry=registry),
        "errors": Counter("transfer_errors", "requests that failed, by reason", ["reason"], registry=registry),
        "drift_pad": Gauge("transfer_drift_pad", "proxy A-distance, recent traffic vs the target reference", registry=registry),
        "drift_alert": Gauge("transfer_drift_alert", "1 while the distance is over the threshold", registry=registry),
        "drift_entropy": Gauge("transfer_drift_entropy", "mean prediction entropy", ["sample"], registry=registry),
        "drift_share": Gauge("transfer_drift_class_share", "share of predictions per class", ["sample", "label"], registry=registry),
        "drift_window": Gauge("transfer_drift_window_texts", "texts in the drift window", registry=registry),
    }
    batcher = Batcher(classifier, batch_size, max_wait_ms / 1000, metrics, monitor)

    def drift_gauges() -> None:
        state = monitor.report()
        metrics["drift_window"].set(state["window_texts"])
        metrics["drift_alert"].set(int(state["alert"]))
        for sample, prefix in (("reference", "reference_"), ("window", "")):
            if f"{prefix}entropy" in state:
                metrics["drift_entropy"].labels(sample).set(state[f"{prefix}entropy"])
                for label, share in state[f"{prefix}class_share"].items():
                    metrics["drift_share"].labels(sample, label).set(share)
        if "pad" in state:
            metrics["drift_pad"].set(state["pad"])

    @asynccontextmanager
    async def lifespan(_):
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()

    app = FastAPI(title="transfer serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    def answer(route: str, status: int, body: dict, reason: Optional[str] = None):
        metrics["requests"].labels(route, str(status)).inc()
        if reason:
            metrics["errors"].labels(reason).inc()
        return JSONResponse(body, status_code=status)

    def refused(request: Request) -> bool:
        if not token:
            return False
        given = request.headers.get("authorization", "")
        return not hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    @app.get("/health")
    async def health():
        return answer("/health", 200, {"status": "ok", "labels": classifier.labels, "runtime": classifier.device})

    @app.get("/metrics")
    async def prometheus(request: Request):
        if refused(request):
            return answer("/metrics", 401, {"error": "missing or wrong bearer token"}, "unauthorized")
        metrics["requests"].labels("/metrics", "200").inc()
        if monitor is not None:
            drift_gauges()
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/drift")
    async def drift(request: Request):
        if refused(request):
            return answer("/drift", 401, {"error": "missing or wrong bearer token"}, "unauthorized")
        if monitor is None:
            return answer("/drift", 404, {"error": "this model folder has no drift reference (saved before drift "
                                                   "monitoring existed?)"}, "no_reference")
        return answer("/drift", 200, monitor.report())

    @app.post("/predict")
    async def predict(request: Request):
        started = time.perf_counter()
        if refused(request):
            return answer("/predict", 401, {"error": "missing or wrong bearer token"}, "unauthorized")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            return answer("/predict", 413, {"error": f"the body is over {max_bytes} bytes"}, "too_large")
        body = b""
        async for piece in request.stream():
            body += piece
            if len(body) > max_bytes:
                return answer("/predict", 413, {"error": f"the body is over {max_bytes} bytes"}, "too_large")
        try:
            texts = json.loads(body)
        except ValueError as e:
            return answer("/predict", 400, {"error": f"the body is not JSON ({e})"}, "bad_json")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return answer("/predict", 400, {"error": 'send a JSON list of strings, e.g. ["great film", "dull"]'},
                          "bad_request")
        if len(texts) > max_texts:
            return answer("/predict", 413, {"error": f"{len(texts)} texts; send at most {max_texts} per request"},
                          "too_many_texts")
        try:
            probabilities = await batcher.predict(texts) if texts else []
        except Exception as e:  # the model failed: the client is told, the service stays up
            return answer("/predict", 500, {"error": f"prediction failed: {type(e).__name__}: {e}"}, "model_error")
        labels = classifier.labels
        predictions = [{"label": labels[int(p.argmax())], "score": float(p.max()),
                        "probabilities": {label: float(v) for label, v in zip(labels, p)}} for p in probabilities]
        metrics["texts"].inc(len(texts))
        metrics["latency"].observe(time.perf_counter() - started)
        return answer("/predict", 200, {"predictions": predictions})

    return app


def main(argv: List[str]) -> None:
    from .drift import DEFAULT_THRESHOLD, DriftMonitor, load_reference
    from .runtime import Classifier

    parser = argparse.ArgumentParser(prog="transfer serve", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a run folder (saved with train.save_model=true) or an exported folder")
    parser.add_argument("--host", default="127.0.0.1", help="(default: %(default)s; 0.0.0.0 to listen on every interface)")
    parser.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    parser.add_argument("--token", default=os.environ.get(TOKEN_VARIABLE),
                        help=f"require this bearer token (default: ${TOKEN_VARIABLE}; none: no auth)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per model batch (default: %(default)s)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more (default: %(default)s)")
    parser.add_argument("--max-texts", type=int, default=256, help="texts per request (default: %(default)s)")
    parser.add_argument("--max-bytes", type=int, default=1_000_000, help="request body size (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="the model's CPU threads (default: all cores)")
    parser.add_argument("--drift-window", type=int, default=500, help="recent texts the drift monitor compares (default: %(default)s)")
    parser.add_argument("--drift-every", type=int, default=100, help="compare every N texts (default: %(default)s)")
    parser.add_argument("--drift-threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="warn when the proxy A-distance exceeds it (default: %(default)s)")
    args = parser.parse_args(argv)
    for name in ("batch_size", "max_texts", "max_bytes", "drift_window", "drift_every"):
        if getattr(args, name) < 1:
            raise TransferError(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    model_folder(args.model)  # before torch and transformers load (seconds)
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn
    except ImportError:
        raise TransferError('transfer serve needs the serve extra: pip install ".[serve]" in the transfer checkout') from None
    with socket.socket() as probe:  # a clear error now, not uvicorn's after the model has loaded
        try:
            probe.bind((args.host, args.port))
        except OSError as e:
            raise TransferError(f"cannot listen on {args.host}:{args.port} ({e.strerror}); choose another --port") from None
    classifier = Classifier(args.model, args.threads)
    reference = load_reference(classifier.folder)
    monitor = None if reference is None else DriftMonitor(reference, classifier.labels, args.drift_window,
                                                          args.drift_every, args.drift_threshold)
    app = create_app(classifier, args.token, args.batch_size, args.max_wait_ms, args.max_texts, args.max_bytes, monitor)
    auth = "bearer token required" if args.token else "no token (anyone who can reach it can use it)"
    print(f"serving {classifier.folder} on http://{args.host}:{args.port} ({classifier.device}; {auth})", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
