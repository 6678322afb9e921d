"""`transfer serve` in a subprocess on a loopback port: auth, bad input, limits, concurrency and its metrics."""

from __future__ import annotations

import copy
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from transfer_cli.models.exported import save_pretrained

from .conftest import TINY_SHAPE, TRANSFER
from .test_deploy import decisive, reviews

httpx = pytest.importorskip("httpx")
TOKEN = "s3cret-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tokenizer, session_env, data_dir):
    """A decisive tiny model (conftest's tiny_model, built here for a module scope) behind `transfer serve --token`,
    and the labels PyTorch gives the reviews it is sent."""
    from transfer_cli.config import ModelConfig
    from transfer_cli.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(name="tiny", random_init=dict(TINY_SHAPE)), 2, len(tokenizer))
    texts, _ = reviews(data_dir, "books", n=50)
    batch = tokenizer(texts, truncation=True, max_length=64, padding=True, return_tensors="pt")
    model = decisive(copy.deepcopy(model), batch)
    with torch.no_grad():
        expected = [["negative", "positive"][i] for i in model(batch["input_ids"], batch["attention_mask"]).argmax(-1)]
        features = model.encode(batch["input_ids"], batch["attention_mask"]).numpy()
    folder = tmp_path_factory.mktemp("served") / "model"
    reference = {"features": features, "probabilities": np.full((len(features), 2), 0.5)}
    save_pretrained(model, tokenizer, ["negative", "positive"], 64, folder, reference)
    port = free_port()
    process = subprocess.Popen([*TRANSFER, "serve", str(folder), "--port", str(port), "--token", TOKEN,
                                "--max-bytes", "20000", "--max-texts", "64", "--drift-window", "40",
                                "--drift-every", "10"], env=session_env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            assert process.poll() is None, process.communicate()[1]
            time.sleep(0.1)
    yield url, texts, expected
    process.terminate()
    process.wait(timeout=30)


def post(url, token=TOKEN, **kwargs):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{url}/predict", headers=headers, timeout=60, **kwargs)


def test_predict_needs_the_token_and_gives_the_models_labels(served):
    url, texts, expected = served
    assert post(url, token=None, json=texts[:2]).status_code == 401
    assert post(url, token="wrong", json=texts[:2]).status_code == 401
    response = post(url, json=texts[:10])
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == expected[:10]
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-5 for p in predictions)
    assert httpx.get(f"{url}/health").json()["labels"] == ["negative", "positive"]  # open to load balancers


@pytest.mark.parametrize("content, status, message", [
    (b'["unclosed', 400, "not JSON"),
    (b'{"texts": ["a"]}', 400, "list of strings"),
    (b'["fine", 3]', 400, "list of strings"),
    (b'["' + b"x" * 30000 + b'"]', 413, "over 20000 bytes"),
    (b'[' + b",".join([b'"a"'] * 65) + b']', 413, "at most 64"),
])
def test_bad_requests_get_a_clear_status_and_the_service_stays_up(served, content, status, message):
    url, texts, expected = served
    response = post(url, content=content)
    assert response.status_code == status and message in response.json()["error"]
    assert [p["label"] for p in post(url, json=texts[:3]).json()["predictions"]] == expected[:3]


def test_concurrent_requests_are_all_answered_in_micro_batches(served):
    """100 clients at once: every one gets its own texts' labels; the metrics count them and saw batches > 1."""
    from prometheus_client.parser import text_string_to_metric_families

    url, texts, expected = served
    jobs = [(i % 40, 1 + i % 10) for i in range(100)]
    with ThreadPoolExecutor(100) as pool:
        responses = list(pool.map(lambda job: post(url, json=texts[job[0]:job[0] + job[1]]), jobs))
    assert [r.status_code for r in responses] == [200] * 100
    for (start, n), response in zip(jobs, responses):
        assert [p["label"] for p in response.json()["predictions"]] == expected[start:start + n]
    assert httpx.get(f"{url}/metrics").status_code == 401
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("transfer_requests_total", (("route", "/predict"), ("status", "200")))] >= 100
    assert samples[("transfer_texts_total", ())] >= sum(n for _, n in jobs)
    assert samples[("transfer_batch_texts_count", ())] < len(jobs)  # requests shared batches
    assert samples[("transfer_request_seconds_count", ())] >= 100
    # the drift monitor saw the traffic: its window is full and it compared it with the reference
    assert samples[("transfer_drift_window_texts", ())] == 40 and ("transfer_drift_pad", ()) in samples
    drift = httpx.get(f"{url}/drift", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert drift["status"] in ("ok", "drift") and drift["reference_texts"] == 50
    assert drift["pad"] == pytest.approx(samples[("transfer_drift_pad", ())])  # the endpoint and the gauge agree


def test_serve_errors(cli, tmp_path):
    from .test_errors import assert_clean_error

    assert_clean_error(cli("serve", str(tmp_path)), tmp_path, "neither a run folder")
