"""Build the project's default model from scratch, offline and reproducibly.

The engine, the ONNX tokenizer models and the tests need a real checkpoint that any machine can
rebuild without a model hub. So this script trains one on text every Python install carries: the
standard library's own sources. It produces a Hugging Face directory (config.json, safetensors,
tokenizer.json, ...) that `transformers.AutoModelForCausalLM` / `AutoTokenizer` load unchanged:

  1. a GPT-2-style byte-level BPE tokenizer (vocab 4096, `<|endoftext|>` as EOS and separator),
     plain enough for the ONNX `GPT2Tokenizer` op to reproduce from vocab + merges;
  2. a small Llama (GQA, tied embeddings) trained from random init for a fixed number of steps.

NOTE: training stops after `--steps`, never after a wall-time budget, so the same command on the same
Python (the corpus) and torch version (the kernels) reproduces the same weights.

Usage: python -m pagedllm_tools.default_model --out models/default [--steps N] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM,
)

EOS = "<|endoftext|>"
VOCAB_SIZE = 4096
# A small chat template (the model was never trained on chats; it exists so /v1/chat/completions
# has something to render): role-tagged turns, each ended by EOS, then the assistant's tag.
CHAT_TEMPLATE = ("{% for message in messages %}"
                 "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
                 "{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")
SKIP_DIRS = {"test", "tests", "site-packages", "__pycache__", "idlelib"}
SAMPLE_PROMPTS = ["def fib(n):", "import os\n\n\ndef main():", "class Stack:\n    def __init__(self"]


@dataclass(slots=True)
class TrainConfig:
    """Optimisation settings; the defaults take about nine minutes on two idle CPU cores.

    Chosen by a sweep at a fixed token budget: a long warm-up and lr 2e-3 beat lr 3e-3 with a short
    one (which sits on a loss plateau near 6 for ~100 steps); tokens seen matter far more than the
    batch shape, so `steps` is the knob that buys quality.
    """

    steps: int = 800
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 200
    weight_decay: float = 0.1
    log_every: int = 20


def collect_corpus(max_chars: int) -> list[str]:
    """Return the stdlib's `.py` files as documents, in sorted path order, up to `max_chars`.

    Tests are skipped: they are long, repetitive and unlike the code a prompt asks for.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(
        p for p in root.rglob("*.py") if not SKIP_DIRS.intersection(p.relative_to(root).parts[:-1])
    )
    docs, total = [], 0
    for path in paths:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if not text or total + len(text) > max_chars:
            continue
        docs.append(text)
        total += len(text)
    return docs


def train_tokenizer(docs: list[str]) -> Tokenizer:
    """Train a GPT-2-style byte-level BPE: no normalizer, no post-processor, every byte encodable."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    if tok.get_vocab_size() != VOCAB_SIZE:
        raise ValueError(f"vocab_size: trained {tok.get_vocab_size()}, expected {VOCAB_SIZE}")
    return tok


def save_tokenizer(tok: Tokenizer, out: Path, max_len: int) -> None:
    """Write tokenizer.json plus the configs `AutoTokenizer.from_pretrained(out)` needs."""
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS,
        "bos_token": None,
        "unk_token": None,
        "pad_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_len,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps({"eos_token": EOS}, indent=2) + "\n")


def encode_corpus(tok: Tokenizer, docs: list[str]) -> torch.Tensor:
    """Tokenize every document and join them into one stream, each followed by EOS."""
    eos_id = tok.token_to_id(EOS)
    ids: list[int] = []
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(eos_id)
    return torch.tensor(ids, dtype=torch.long)


def make_model(eos_id: int, seed: int):
    """A small Llama: GQA (8 query / 4 KV heads) so the engine's GQA path runs; tied embeddings."""
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=eos_id, eos_token_id=eos_id, dtype="float32",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to `min_lr_ratio * lr`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_at(data: torch.Tensor, gen: torch.Generator, cfg: TrainConfig) -> torch.Tensor:
    """Random windows of `seq_len + 1` tokens; the generator makes the order reproducible."""
    starts = torch.randint(0, len(data) - cfg.seq_len - 1, (cfg.batch_size,), generator=gen)
    return torch.stack([data[s : s + cfg.seq_len + 1] for s in starts.tolist()])


def lm_loss(model, batch: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of `batch[:, :-1]` predicting `batch[:, 1:]`."""
    logits = model(input_ids=batch[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))


@torch.no_grad()
def eval_loss(model, data: torch.Tensor, cfg: TrainConfig, max_windows: int = 32) -> float:
    """Mean loss over the first non-overlapping windows of held-out data."""
    model.eval()
    n = min(max_windows, (len(data) - 1) // cfg.seq_len)
    x = data[: n * cfg.seq_len + 1]
    windows = torch.stack([x[i * cfg.seq_len : (i + 1) * cfg.seq_len + 1] for i in range(n)])
    loss = lm_loss(model, windows)
    model.train()
    return loss.item()


def train(model, data: torch.Tensor, cfg: TrainConfig, seed: int) -> float:
    """Train for exactly `cfg.steps` steps; return the mean loss of the last `log_every` steps."""
    decay = [p for p in model.parameters() if p.dim() >= 2]  # matrices; norms are not decayed
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(seed)
    model.train()
    recent: list[float] = []
    start = time.time()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = batch_at(data, gen, cfg)
        loss = lm_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent = (recent + [loss.item()])[-cfg.log_every :]
        if (step + 1) % cfg.log_every == 0 or step == 0:
            print(f"step {step + 1:5d}/{cfg.steps}  loss {sum(recent) / len(recent):.3f}  lr {lr_at(step, cfg):.2e}  "
                  f"{time.time() - start:6.0f}s", flush=True)
    return sum(recent) / len(recent)


def save_model(model, out: Path, eos_id: int) -> str:
    """Save safetensors in float32 when the directory stays under 30 MB, else bfloat16."""
    n_bytes = sum(p.numel() for p in model.parameters()) * 4  # tied weights are counted once
    dtype = torch.float32 if n_bytes < 29 * 2**20 else torch.bfloat16
    model = model.to(dtype)
    model.config.dtype = dtype
    model.generation_config = GenerationConfig(bos_token_id=eos_id, eos_token_id=eos_id, do_sample=False)
    model.save_pretrained(out, safe_serialization=True)
    # transformers 5 writes only `rope_parameters`; older readers look for the top-level key.
    config = json.loads((out / "config.json").read_text())
    config.setdefault("rope_theta", config.get("rope_parameters", {}).get("rope_theta", 10000.0))
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return str(dtype).removeprefix("torch.")


def greedy_samples(out: Path, max_new_tokens: int = 48) -> dict[str, str]:
    """Reload the saved directory with transformers (checking it loads) and decode greedily."""
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    samples = {}
    for prompt in SAMPLE_PROMPTS:
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.eos_token_id)
        samples[prompt] = tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=False)
    return samples


def write_readme(out: Path, facts: dict[str, object], samples: dict[str, str]) -> None:
    """Say how the model was built, so a reader can rebuild it and knows what it is (a toy)."""
    lines = [
        "# pagedllm default model",
        "",
        "A toy Llama trained from scratch, offline, by `scripts/pagedllm_tools/default_model.py`, so every machine",
        "can rebuild the project's default checkpoint without a model hub. It writes plausible-looking",
        "Python and nothing more; it exists to exercise the engine (GQA, tied embeddings, byte-level BPE).",
        "",
        *(f"- **{k}**: {v}" for k, v in facts.items()),
        "",
        "Same command + same Python (the corpus) + same torch (the kernels) = the same weights.",
        "",
        "## Greedy samples (48 new tokens)",
        "",
    ]
    for prompt, text in samples.items():
        lines += ["```python", prompt + text, "```", ""]
    (out / "README.md").write_text("\n".join(lines))


def main() -> None:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("models/default"))
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-corpus-mb", type=float, default=32.0)
    args = parser.parse_args()
    if args.steps < 1:
        raise ValueError(f"steps must be >= 1, got {args.steps}")

    t0 = time.time()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    cfg = TrainConfig(steps=args.steps, warmup_steps=min(defaults.warmup_steps, max(1, args.steps // 4)))

    docs = collect_corpus(int(args.max_corpus_mb * 2**20))
    corpus_mb = sum(len(d) for d in docs) / 2**20
    print(f"corpus: {len(docs)} stdlib files, {corpus_mb:.1f} MB (Python {sys.version.split()[0]})", flush=True)
    tok = train_tokenizer(docs)
    # NOTE: the tokenizer is written before training: other build steps only need it.
    save_tokenizer(tok, args.out, max_len=2048)
    data = encode_corpus(tok, docs)
    n_val = len(data) // 100
    train_data, val_data = data[:-n_val], data[-n_val:]
    print(f"tokenizer saved to {args.out}; {len(data):,} tokens ({time.time() - t0:.0f}s)", flush=True)

    model = make_model(tok.token_to_id(EOS), args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters; training {cfg.steps} steps of "
          f"{cfg.batch_size}x{cfg.seq_len} tokens", flush=True)
    t_train = time.time()
    train_loss = train(model, train_data, cfg, args.seed)
    val_loss = eval_loss(model, val_data, cfg)
    train_s = time.time() - t_train
    dtype = save_model(model, args.out, tok.token_to_id(EOS))

    samples = greedy_samples(args.out)
    c = model.config
    facts = {
        "shape": f"Llama, vocab {c.vocab_size}, hidden {c.hidden_size}, {c.num_hidden_layers} layers, "
                 f"{c.num_attention_heads} heads / {c.num_key_value_heads} KV heads, MLP {c.intermediate_size}, "
                 f"tied embeddings, {n_params / 1e6:.2f}M parameters, {dtype}",
        "corpus": f"Python {sys.version.split()[0]} standard library `.py` files (no tests), "
                  f"{len(docs)} files, {corpus_mb:.1f} MB, {len(data):,} tokens",
        "tokenizer": f"GPT-2-style byte-level BPE, vocab {VOCAB_SIZE}, `{EOS}` = EOS and document separator",
        "training": f"{cfg.steps} steps x {cfg.batch_size} x {cfg.seq_len} tokens, AdamW lr {cfg.lr}, "
                    f"cosine, seed {args.seed}, torch {torch.__version__}, {train_s:.0f}s on CPU",
        "final loss": f"train {train_loss:.3f} (mean of last {cfg.log_every} steps), held-out {val_loss:.3f}",
        "command": f"`python -m pagedllm_tools.default_model --out {args.out} --steps {cfg.steps} --seed {args.seed}`",
    }
    write_readme(args.out, facts, samples)
    for prompt, text in samples.items():
        print(f"--- {prompt!r}\n{prompt}{text}")
    size_mb = sum(f.stat().st_size for f in args.out.iterdir() if f.is_file()) / 2**20
    print(f"final loss: train {train_loss:.3f}, held-out {val_loss:.3f}; {args.out} is {size_mb:.1f} MB; "
          f"built in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
