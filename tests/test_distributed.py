"""Several processes (gloo on the CPU): one run folder written once, exact evaluation, the same accuracy as one
process with the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

# The tiny model learns the generated demo domains; the global batch is 32 either way.
RUN = ["source=demo_gadgets", "target=demo_films", "model=tiny", "data.max_length=48", "data.max_source_train=400",
       "data.max_source_val=240", "data.max_target_pool=64", "data.max_target_test=101", "train.epochs=3",
       "train.lr=1e-3", "hardware=cpu_fp32"]


def test_two_processes_share_one_run_folder_and_match_one_process(cli, tmp_path):
    out = cli("run", *RUN, "train.batch_size=32", "hydra.run.dir=outputs/one")
    assert out.returncode == 0, out.stderr
    out = cli("run", *RUN, "train.batch_size=16", "hardware.processes=2", "hydra.run.dir=outputs/two")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("target_test_accuracy") == 1  # one table: only rank 0 reports
    assert [p.parent.name for p in (tmp_path / "outputs").rglob("status.json")] in (["one", "two"], ["two", "one"])
    one, two = (json.loads((tmp_path / "outputs" / name / "metrics.json").read_text()) for name in ("one", "two"))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["global_batch_size"] == two["global_batch_size"] == 32
    assert two["target_test_size"] == 101 and two["source_val_size"] == 240
    predictions = pd.read_csv(tmp_path / "outputs" / "two" / "test_predictions.csv")  # gathered, each example once
    assert len(predictions) == 101 and (predictions.prediction == predictions.label).mean() == two["target_test_accuracy"]
    assert one["source_val_accuracy"] > 0.75 and two["source_val_accuracy"] > 0.75  # both learned
    assert abs(one["source_val_accuracy"] - two["source_val_accuracy"]) <= 0.05, (one, two)
    lr = {name: pd.read_csv(tmp_path / "outputs" / name / "history.csv")["lr"].tolist() for name in ("one", "two")}
    assert lr["one"] == pytest.approx(lr["two"]) and lr["one"][0] > 0.5e-3  # one schedule, whatever the processes
    log = (tmp_path / "outputs" / "two" / "run.log").read_text()
    assert "global batch 32 = 16 per process x 2 processes x 1 accumulation steps" in log
    assert log.count("train epoch 1/3") == 1  # rank 1 writes nothing into the folder
    assert not list((tmp_path / "outputs").glob("20*"))  # no folder of a rank's own


GATHER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from accelerate import Accelerator
    from transfer_cli.data.batching import TokenizedSet
    from transfer_cli.evaluate import infer

    accelerator = Accelerator(cpu=True)
    # 37 examples in batches of 8: 5 batches, which 2 processes can only share evenly by repeating one
    data = TokenizedSet([np.array([i + 1] * (1 + i % 5)) for i in range(37)], np.zeros(37, dtype=np.int64))
    out = infer(lambda ids, mask: ids[:, :1].float(), data, 8, 0, accelerator)
    if accelerator.is_main_process:
        json.dump({"processes": accelerator.num_processes, "outputs": out.flatten().tolist()}, open(sys.argv[1], "w"))
""")


def test_evaluation_gathers_each_example_once(tmp_path):
    script = tmp_path / "gather.py"
    script.write_text(GATHER)
    result = tmp_path / "result.json"
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(result)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    gathered = json.loads(result.read_text())
    assert gathered["processes"] == 2
    assert gathered["outputs"] == [float(i + 1) for i in range(37)]  # every example once, in order
