"""Several processes (gloo on the CPU): one run folder written once, exact evaluation, the same accuracy as one
process with the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

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
    accelerator.end_training()  # the process group ends before the interpreter does (else gloo may abort at exit)
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


GATE = textwrap.dedent("""
    import json, sys
    from types import SimpleNamespace
    import torch
    from accelerate import PartialState
    sys.path.insert(0, sys.argv[2])
    from tests.conftest import TINY_SHAPE
    from tests.test_loop import FakeData, OnePhase, labelled
    from transfer_cli.config import Device, HardwareConfig, ModelConfig, Precision, RunConfig, TrainConfig
    from transfer_cli.hardware import setup
    from transfer_cli.models import build_model
    from transfer_cli.strategies import Group, Phase
    from transfer_cli.training import loop

    class RankGated(OnePhase):
        # each process logs its rank: only their mean, 0.5, opens the gate
        def __init__(self, model, data, rank):
            super().__init__(model, data, 1)
            self.g, self.rank = torch.nn.Linear(4, 1), rank

        def phases(self, data, ctx):
            gate = lambda logs: 0.4 < logs["rank"] < 0.6
            return [Phase("train", self.data, 1, groups=[Group("g", [self.g], gate=gate)])]

        def loss(self, labelled, unlabelled, progress):
            task, _ = self.task_loss(labelled)
            return task + self.g(torch.ones(1, 4)).sum(), {"rank": float(self.rank)}

    PartialState(cpu=True)  # the process group (gloo), as the CLI starts it
    accelerator = setup(HardwareConfig(name="cpu", device=Device.cpu, precision=Precision.fp32), 0).accelerator
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="tiny", random_init=dict(TINY_SHAPE)), num_labels=2, vocab_size=2000)
    strategy = RankGated(model, labelled(32), accelerator.process_index)
    before = strategy.g.weight.detach().clone()
    loop._score_epoch = lambda *_: {"source_val_accuracy": 0.5, "target_test_accuracy": 0}
    loop.fit(strategy, FakeData(), RunConfig(train=TrainConfig(batch_size=8, lr=1e-3, warmup_ratio=0.0)), accelerator,
             SimpleNamespace(pad_token_id=0))
    moved = not torch.equal(before, strategy.g.weight.detach())
    json.dump({"moved": moved, "weight": strategy.g.weight.flatten().tolist()},
              open(f"{sys.argv[1]}.{accelerator.process_index}", "w"))
    accelerator.end_training()
""")


def test_a_gate_decides_alike_on_every_process_from_their_mean_logs(tmp_path):
    """Rank 0 logs 0 and rank 1 logs 1 on every step: neither alone opens a gate that wants 0.5, their mean does.
    So the gated group updates, on both processes, to the same weights."""
    script = tmp_path / "gate.py"
    script.write_text(GATE)
    result = tmp_path / "result"
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(result), str(Path(__file__).parents[1])],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [json.loads(Path(f"{result}.{rank}").read_text()) for rank in (0, 1)]
    assert ranks[0]["moved"] and ranks[1]["moved"] and ranks[0]["weight"] == ranks[1]["weight"]

