"""Shared fixtures: tiny random BERT models, a tiny tokenizer and tiny GLUE-format files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from top.encoder import PrunableModel
from top.pruning.base import StepContext


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slurm: runs on a SLURM cluster (scripts/slurm/start.sh); skipped without one, fails under CI (tests/test_slurm.py)"
    )


@pytest.fixture
def one_thread():
    """Torch on one thread for the test, restored after it. Tiny models run far faster on one
    thread and are not slowed by a busy machine; results are bitwise comparable only at the same
    thread count (a killed-and-resumed subprocess runs on one). Modules use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


WORDS = "the a movie film good bad great awful plot acting was is not very fun dull which it".split()


def tiny_config(**overrides) -> BertConfig:
    values = dict(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        num_labels=2,
        attn_implementation="eager",
    )
    values.update(overrides)
    return BertConfig(**values)


@pytest.fixture
def tiny_model() -> PrunableModel:
    torch.manual_seed(0)
    return PrunableModel(BertForSequenceClassification(tiny_config()).eval())


def random_batch(batch: int = 3, length: int = 12, vocab: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded random inputs with different real lengths; [CLS]=2 at position 0."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, length), generator=g)
    ids[:, 0] = 2
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(1, batch):
        mask[row, length - 3 * row :] = 0
    ids = ids.masked_fill(mask == 0, 0)
    types = torch.zeros_like(ids)
    types[:, length // 2 :] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types * mask}


def padded_batch(lengths=(14, 11, 7), width: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded random inputs with the given real lengths; [CLS] (id 2) first."""
    width = width or max(lengths)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 64, (len(lengths), width), generator=g)
    ids[:, 0] = 2
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def step_context(output, loss) -> StepContext:
    """A training step's context for calling a method's ``extra_loss`` by hand (no teacher)."""
    return StepContext(student=output, teacher=None, batch={}, task_loss=loss, step=0, total_steps=1)


def toy_rows(n: int = 24, seed: int = 0) -> list[dict]:
    """Encoded examples of a learnable toy task: the label is written in token 1 (10 or 11)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = int(torch.randint(5, 15, (1,), generator=g))
        ids = torch.randint(5, 64, (length,), generator=g)
        ids[0] = 2
        label = i % 2
        ids[1] = 10 + label
        rows.append({"input_ids": ids.tolist(), "attention_mask": [1] * length, "token_type_ids": [0] * length, "labels": label})
    return rows


def collate_pad0(rows: list[dict]) -> dict[str, torch.Tensor]:
    """:func:`top.tasks.glue.collate` with padding id 0 (the tiny models' [PAD])."""
    from top.tasks.glue import collate

    return collate(rows, pad_token_id=0)


def write_tiny_model(folder: Path, layers: int = 2, seed: int = 0) -> Path:
    """A random tiny BERT with a real WordPiece tokenizer, saved like a hub checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, ".", ","]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(seed)
    config = tiny_config(vocab_size=len(vocab), num_hidden_layers=layers)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def write_tiny_sst2(glue_dir: Path, train_rows: int = 48, dev_rows: int = 16) -> Path:
    """SST-2 in the GLUE layout: sentences whose label is whether they contain a positive word."""
    g = torch.Generator().manual_seed(1)
    positive, negative = ["good", "great", "fun"], ["bad", "awful", "dull"]
    task = glue_dir / "SST-2"
    task.mkdir(parents=True, exist_ok=True)

    def rows(n: int) -> str:
        lines = ["sentence\tlabel"]
        for i in range(n):
            label = i % 2
            word = (positive if label else negative)[i % 3]
            filler = [WORDS[int(j)] for j in torch.randint(0, 4, (int(torch.randint(2, 8, (1,), generator=g)),), generator=g)]
            lines.append(" ".join(["the", "movie", "was", word, *filler]) + f"\t{label}")
        return "\n".join(lines) + "\n"

    (task / "train.tsv").write_text(rows(train_rows))
    (task / "dev.tsv").write_text(rows(dev_rows))
    return glue_dir


def write_tiny_sst2_config(folder: Path, glue_dir: Path, methods: dict, **extra) -> dict:
    """``folder/config.yaml``: the tiny model (:func:`write_tiny_model`, in ``folder/model``) on
    tiny SST-2 in ``glue_dir``, a one-epoch teacher, batch 8 and learning rate 1e-3 throughout,
    ``methods`` and any ``extra`` top-level keys. Returns the configuration as the workflow reads
    it (:func:`top.config.read_local_config`: schema defaults filled, ``glue_dir`` set)."""
    import yaml

    from top.config import read_local_config

    config = {
        "model": str(write_tiny_model(folder / "model")),
        "data_source": "local",
        "tasks": ["sst2"],
        "device": "cpu",
        "teacher": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3},
        "train": {"batch_size": 8, "learning_rate": 1e-3},
        "methods": methods,
        **extra,
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return read_local_config([folder / "config.yaml"], glue_dir=glue_dir)


def write_tiny_squad(squad_dir: Path, train_questions: int = 40, dev_questions: int = 12) -> Path:
    """SQuAD v1.1 in the official JSON schema: contexts of random :data:`WORDS` with a marked
    answer ("good fun" or "bad plot") that the question names."""
    import json

    g = torch.Generator().manual_seed(2)

    def article(n: int, prefix: str) -> dict:
        paragraphs = []
        for i in range(n):
            answer = ["good fun", "bad plot"][i % 2]
            before = " ".join(WORDS[int(j)] for j in torch.randint(0, 8, (int(torch.randint(3, 30, (1,), generator=g)),), generator=g))
            after = " ".join(WORDS[int(j)] for j in torch.randint(0, 8, (int(torch.randint(3, 30, (1,), generator=g)),), generator=g))
            context = f"{before} {answer} . {after}"
            question = f"which {answer.split()[1]} was it"
            paragraphs.append(
                {
                    "context": context,
                    "qas": [{"id": f"{prefix}{i}", "question": question, "answers": [{"text": answer, "answer_start": len(before) + 1}]}],
                }
            )
        return {"version": "1.1", "data": [{"title": f"{prefix}article", "paragraphs": paragraphs}]}

    squad_dir.mkdir(parents=True, exist_ok=True)
    (squad_dir / "train-v1.1.json").write_text(json.dumps(article(train_questions, "t")))
    (squad_dir / "dev-v1.1.json").write_text(json.dumps(article(dev_questions, "d")))
    return squad_dir


def write_fake_hub_cache(hf_home: Path, model: str = "bert-base-uncased", weights: bool = True, datasets: tuple[str, ...] = ()) -> Path:
    """A Hugging Face cache (``HF_HOME``) holding ``model``'s BERT-base ``config.json`` (and a
    stand-in weights file) in the hub cache's layout, and a prepared-dataset folder for each of
    ``datasets`` (``"nyu-mll/glue/sst2"``, ``"rajpurkar/squad"``): what an offline machine that
    once downloaded them has. Nothing in it can be trained: it is for configuration checks."""
    from transformers import BertConfig

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_home / "hub" / f"models--{model.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    BertConfig().to_json_file(snapshot / "config.json")
    if weights:
        (snapshot / "model.safetensors").write_bytes(b"stand-in")
    for name in datasets:
        parts = name.split("/")
        (hf_home / "datasets" / "___".join(parts[:2]) / Path(*parts[2:])).mkdir(parents=True, exist_ok=True)
    return hf_home


#: The tiny SQuAD runs' feature lengths: windows of 48 tokens, a 16-token stride, questions cut at 8.
TINY_QA = {"max_length": 48, "doc_stride": 16, "max_query_length": 8}


def tiny_squad_config(tmp_path: Path, methods: dict, **changes) -> dict:
    """A workflow configuration of SQuAD v1.1 on the tiny files and a 4-layer tiny model under
    ``tmp_path``: seed 3, CPU, batch 8, learning rate 1e-3, ``methods`` as given; ``changes``
    replace top-level keys (``qa``, ``teacher``, ``latency``...)."""
    cfg = {
        "model": str(write_tiny_model(tmp_path / "model", layers=4)),
        "data_source": "local",
        "squad_dir": str(write_tiny_squad(tmp_path / "squad")),
        "tasks": ["squad"],
        "seeds": [3],
        "device": "cpu",
        "qa": dict(TINY_QA),
        "teacher": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3},
        "train": {"batch_size": 8, "learning_rate": 1e-3},
        "methods": methods,
    }
    cfg.update(changes)
    return cfg
