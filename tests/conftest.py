"""Shared fixtures: the sample dataset (built once per session) and helpers to run the trainer."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# A model small enough to train in seconds on a laptop CPU.
TINY = dict(NUM_LAYERS="2", MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2", MLP_MULT="2", TRAIN_SEQ_LEN="128",
            TRAIN_BATCH_TOKENS="2048", MICRO_BATCHES="2", ITERATIONS="12", WARMUP_STEPS="1", WARMDOWN_ITERS="6",
            VAL_LOSS_EVERY="6", TRAIN_LOG_EVERY="1", EVAL_STRIDE="64", EVAL_BATCH_SEQS="16",
            BIGRAM_VOCAB_SIZE="256", BIGRAM_DIM="16", SWA_EVERY="2", MAX_WALLCLOCK_SECONDS="0", CPU_DTYPE="fp32",
            VAL_MAX_TOKENS="6000")


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory):
    """(DATA_PATH, TOKENIZER_PATH) of the built-in sample corpus, built with the repo's builder."""
    root = tmp_path_factory.mktemp("sample")
    subprocess.run([sys.executable, str(ROOT / "data" / "build_dataset.py"), "--output-root", str(root)],
                   check=True, capture_output=True, text=True)
    (data_path,) = (root / "datasets").iterdir()
    (tokenizer,) = (root / "tokenizers").glob("*.model")
    return str(data_path), str(tokenizer)


@pytest.fixture(scope="session")
def caseops_data(tmp_path_factory):
    """(DATA_PATH, TOKENIZER_PATH) of the sample corpus in CaseOps form (vocab 1024, with its byte sidecar): the
    frontier recipe's kind of data."""
    root = tmp_path_factory.mktemp("sample_caseops")
    subprocess.run([sys.executable, str(ROOT / "data" / "build_dataset.py"), "--output-root", str(root), "--caseops"],
                   check=True, capture_output=True, text=True)
    (data_path,) = (root / "datasets").iterdir()
    (tokenizer,) = (root / "tokenizers").glob("*.model")
    return str(data_path), str(tokenizer)


def trainer_env(sample_data, **overrides) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(TINY, DATA_PATH=sample_data[0], TOKENIZER_PATH=sample_data[1], OMP_NUM_THREADS="1")
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def run_trainer(cwd, env, nproc=0, timeout=300):
    """Run train_gpt.py with `python3` (nproc=0) or `torchrun --nproc_per_node=nproc`."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc else [sys.executable])
    return subprocess.run(launcher + [str(ROOT / "train_gpt.py")], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def rounding_tolerance(values: list[float], floor: float) -> float:
    """How far one more run of a computation may land from `values`, runs of the same function whose rounding differs
    (thread counts, another attention backward). Training amplifies rounding differences chaotically, by an amount
    that depends on the CPU's fp32 kernels, so the bound is measured in the test itself: 5x the spread of `values`. A
    spread of a few runs can come out small by chance, so never below `floor`: 4x the largest spread seen on any machine
    so far (each test names its figure)."""
    return max(5 * (max(values) - min(values)), floor)


def train_losses(text: str) -> list[tuple[int, float]]:
    """(step, train_loss) of every train step line in a log."""
    return [(int(s), float(v)) for s, v in re.findall(r"step:(\d+)/\d+ train_loss:(\S+)", text)]


def final_figures(text: str, key: str) -> tuple[str, str]:
    """(val_loss, val_bpb) strings of a final line, e.g. key='final_sliding_exact'."""
    return re.search(rf"^{key} val_loss:(\S+) val_bpb:(\S+)", text, re.M).groups()


@pytest.fixture
def workspace(sample_data, tmp_path, monkeypatch):
    """A private copy of the sample dataset, the tiny settings in the environment, cwd = tmp_path."""
    data = tmp_path / "data"
    shutil.copytree(sample_data[0], data)
    tokenizer = tmp_path / "tok.model"
    shutil.copy(sample_data[1], tokenizer)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    for k, v in {**TINY, "DATA_PATH": str(data), "TOKENIZER_PATH": str(tokenizer), "RUN_ID": "bad",
                 "ITERATIONS": "2", "WARMUP_STEPS": "0"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    return tmp_path
