"""umT5-XXL prompt encoder of Wan / DreamZero, on transformers' `UMT5EncoderModel`, with an on-disk prompt cache.

Model: the encoder half of umT5-XXL ("UniMax: Fairer and more Effective Language Sampling for Large-Scale
Multilingual Pretraining", Chung et al. 2023), as Wan2.1/2.2 ship it in `models_t5_umt5-xxl-enc-bf16.pth` and
DreamZero uses it frozen (MODEL_SPEC.md section 1: text_dim 4096, text_len 512). 24 pre-RMSNorm blocks, 64 heads,
unscaled attention with a relative position bias per layer (32 buckets, max distance 128), gated-GELU (tanh) FFN.

Prompt -> embeddings (as Wan's `T5EncoderModel` and the release's `encode_prompt`):
  clean ("whitespace": ftfy fix if installed, HTML unescape, collapse whitespace) -> tokenize (umT5 SentencePiece,
  EOS appended, padded / truncated to text_len) -> encoder with the padding mask -> zero the padding positions
  -> [B, text_len, text_dim].
Departure: the release zeroes `prompt_emb[:, len_i:]` for every sample i in turn (all rows past the shortest
prompt); this module zeroes each row past its own length. Identical for the batch of one the release encodes.

Prompt cache: robots repeat a few instructions, so embeddings are kept in memory and on disk, one safetensors file
per prompt under `cache_dir` (default ~/.cache/dreamzero/prompt_embeds). The key hashes a fingerprint of the encoder
weights (the file's content, sampled every 4 MiB when large; all tensors of an in-memory model, so the same weights
in a file and in memory have different keys: a safe miss), the compute dtype, text_len and the token ids the
tokenizer produced (which pin down tokenizer + prompt exactly). Writers write a temporary file and rename it,
so concurrent processes never see a partial entry. With `lazy=True` the 5.7B-parameter encoder is only loaded on
the first cache miss.
"""
from __future__ import annotations

import hashlib
import html
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import safetensors.torch
import torch
from transformers import AutoTokenizer, ByT5Tokenizer, PreTrainedTokenizerBase, UMT5Config, UMT5EncoderModel

from model_core.errors import CheckpointError, InputError
from model_core.vae import check_state_dict, read_state_dict

try:  # Wan's cleaning runs ftfy.fix_text first; it only changes broken or unusual unicode (mojibake, curly quotes)
    import ftfy
except ImportError:
    ftfy = None

log = logging.getLogger(__name__)

TEXT_LEN = 512
DEFAULT_CACHE_DIR = Path("~/.cache/dreamzero/prompt_embeds")
# umT5-XXL encoder (Wan's `umt5_xxl(encoder_only=True)`): vocab 256384, dim 4096, 64 heads x 64, ffn 10240, 24 layers.
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128,
                feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0)
# Tiny: ByT5's byte vocabulary (384 ids, no tokenizer files needed) and the golden tiny DiT's text_dim 48.
UMT5_TINY = UMT5_XXL | dict(vocab_size=384, d_model=48, d_kv=12, d_ff=64, num_layers=2, num_heads=4)
TINY_TEXT_LEN = 32


# ---------------------------------------------------------------------------------------------------------------
# Key converter: Wan's T5Encoder (wan/modules/t5.py) <-> transformers' UMT5EncoderModel
# ---------------------------------------------------------------------------------------------------------------

_BLOCK_PARTS = {  # HF `encoder.block.{i}.<part>` -> Wan `blocks.{i}.<part>`
    "layer.0.layer_norm.weight": "norm1.weight",
    "layer.0.SelfAttention.q.weight": "attn.q.weight",
    "layer.0.SelfAttention.k.weight": "attn.k.weight",
    "layer.0.SelfAttention.v.weight": "attn.v.weight",
    "layer.0.SelfAttention.o.weight": "attn.o.weight",
    "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",  # [32 buckets, heads]
    "layer.1.layer_norm.weight": "norm2.weight",
    "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",  # GELU branch
    "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight",  # linear branch
    "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight",
}


def hf_to_wan_t5_key(key: str) -> str:
    """Wan T5 encoder name of a `UMT5EncoderModel` parameter (`shared.weight` is the tied embedding)."""
    if key in ("shared.weight", "encoder.embed_tokens.weight"):
        return "token_embedding.weight"
    if key == "encoder.final_layer_norm.weight":
        return "norm.weight"
    m = re.fullmatch(r"encoder\.block\.(\d+)\.(.*)", key)
    if m and m.group(2) in _BLOCK_PARTS:
        return f"blocks.{m.group(1)}.{_BLOCK_PARTS[m.group(2)]}"
    raise AssertionError(f"no Wan name for UMT5EncoderModel parameter {key!r}")


def wan_to_hf_t5(original: Mapping[str, torch.Tensor], model: UMT5EncoderModel, source: str,
                 device: str | torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Check and rename Wan's `models_t5_umt5-xxl-enc-bf16.pth` tensors for `model` (moved to device / dtype once,
    the embedding shared by `shared` and `encoder.embed_tokens`)."""
    shapes = model.state_dict()
    names = {k: hf_to_wan_t5_key(k) for k in shapes}
    check_state_dict(original, {names[k]: shapes[k].shape for k in shapes}, source)
    moved = {wan: original[wan].to(device=device, dtype=dtype) for wan in set(names.values())}
    return {k: moved[names[k]] for k in names}


# ---------------------------------------------------------------------------------------------------------------
# Fingerprints and the cache
# ---------------------------------------------------------------------------------------------------------------

def file_fingerprint(path: str | Path, stride: int = 4 << 20, chunk: int = 4 << 10) -> str:
    """Hash of a weights file: all of it up to 16 strides, else its size and 4 KiB every 4 MiB (about 1 s for
    11 GB), so any re-trained tensor of a few MB or more changes it without reading the whole file."""
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= 16 * stride:
            h.update(f.read())
        else:
            for offset in [*range(0, size, stride), size - chunk]:
                f.seek(offset)
                h.update(f.read(chunk))
    return h.hexdigest()[:32]


def tensors_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """Hash of every tensor (names, shapes, bytes): for in-memory (tiny) encoders."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}{list(t.shape)}{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def clean_prompt(text: str) -> str:
    """Wan's "whitespace" cleaning."""
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class PromptEncoder:
    """Prompts -> umT5 embeddings [B, text_len, text_dim] with padding positions zeroed, cached per prompt."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: UMT5Config, text_len: int, fingerprint: str,
                 model: UMT5EncoderModel | None = None, loader: Callable[[], UMT5EncoderModel] | None = None,
                 device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, cache_dir: str | Path | None = None):
        assert (model is None) != (loader is None), "give exactly one of model, loader"
        self.tokenizer, self.config, self.text_len = tokenizer, config, text_len
        self.device, self.dtype = torch.device(device), dtype
        self.cache_dir = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()
        self._fingerprint = f"{fingerprint}-{str(dtype).removeprefix('torch.')}-{text_len}"
        self._model, self._loader = model, loader
        self._memory: dict[str, torch.Tensor] = {}  # cache key -> [L, text_dim] on device

    # --- construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, weights_path: str | Path, tokenizer_path: str | Path | None,
                        device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        cache_dir: str | Path | None = None, lazy: bool = False, tiny: bool = False) -> PromptEncoder:
        """Wan's `models_t5_umt5-xxl-enc-bf16.pth` + a local google/umt5-xxl tokenizer directory.

        `lazy`: load the weights on the first cache miss only. `tiny`: a checkpoint saved from `PromptEncoder.tiny()`
        (tiny config and text_len; `tokenizer_path=None` then means the ByT5 byte tokenizer).
        """
        config = UMT5Config(**(UMT5_TINY if tiny else UMT5_XXL))
        text_len = TINY_TEXT_LEN if tiny else TEXT_LEN
        if tokenizer_path is None and tiny:
            tokenizer = ByT5Tokenizer()
        elif tokenizer_path is None or not Path(tokenizer_path).is_dir():
            raise CheckpointError(f"umT5 tokenizer directory {str(tokenizer_path)!r} does not exist "
                                  "(the google/umt5-xxl folder shipped with the Wan checkpoints)")
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path), local_files_only=True)
        if not Path(weights_path).is_file():
            raise CheckpointError(f"text encoder checkpoint {str(weights_path)!r} does not exist or is not a file")

        def load() -> UMT5EncoderModel:
            return _build(read_state_dict(weights_path), config, device, dtype, source=str(weights_path))

        return cls(tokenizer, config, text_len, file_fingerprint(weights_path), loader=load if lazy else None,
                   model=None if lazy else load(), device=device, dtype=dtype, cache_dir=cache_dir)

    @classmethod
    def tiny(cls, cache_dir: str | Path | None = None, seed: int = 0) -> PromptEncoder:
        """A 2-layer umT5 of width 48 (random weights) with the ByT5 byte tokenizer, text_len 32."""
        config = UMT5Config(**UMT5_TINY)
        torch.manual_seed(seed)
        model = UMT5EncoderModel(config).eval().requires_grad_(False)
        return cls(ByT5Tokenizer(), config, TINY_TEXT_LEN, tensors_fingerprint(model.state_dict()), model=model,
                   cache_dir=cache_dir)

    @property
    def model(self) -> UMT5EncoderModel:
        if self._model is None:
            log.info("prompt cache miss: loading the text encoder")
            self._model, self._loader = self._loader(), None
        return self._model

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    @property
    def text_dim(self) -> int:
        return self.config.d_model

    def original_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under Wan's T5 encoder names (what `from_pretrained` reads)."""
        return {hf_to_wan_t5_key(k): v for k, v in self.model.state_dict().items() if k != "shared.weight"}

    # --- encoding -----------------------------------------------------------------------------------------------

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ids, mask [B, text_len] (EOS appended, zero-padded, truncated to text_len)."""
        out = self.tokenizer([clean_prompt(p) for p in prompts], padding="max_length", truncation=True,
                             max_length=self.text_len, add_special_tokens=True, return_tensors="pt")
        return out.input_ids, out.attention_mask

    def _key(self, ids: torch.Tensor) -> str:
        payload = json.dumps([self._fingerprint, ids.tolist()])
        return hashlib.sha256(payload.encode()).hexdigest()[:40]

    @torch.no_grad()
    def _run_encoder(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Uncached: [B, text_len] -> [B, text_len, text_dim] with padding positions zeroed."""
        ids, mask = ids.to(self.device), mask.to(self.device)
        x = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, L, C]
        return x * mask.unsqueeze(-1).to(x.dtype)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """prompts -> [B, text_len, text_dim] (self.dtype, self.device); a repeated prompt runs no encoder."""
        if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise InputError(f"prompts must be a non-empty list of str, got {prompts!r}")
        ids, mask = self.tokenize(list(prompts))
        lengths = mask.sum(dim=1).tolist()
        keys = [self._key(row[:n]) for row, n in zip(ids, lengths)]
        rows = {k: self._memory[k] if k in self._memory else self._read(k) for k in dict.fromkeys(keys)}
        todo = {k: keys.index(k) for k, row in rows.items() if row is None}  # missing key -> its first prompt
        if todo:
            index = torch.tensor(list(todo.values()))
            for row, (k, i) in zip(self._run_encoder(ids[index], mask[index]), todo.items()):
                rows[k] = row[: lengths[i]].clone()
                self._write(k, rows[k], prompts[i])
        self._memory.update(rows)
        out = torch.zeros(len(prompts), self.text_len, self.text_dim, device=self.device, dtype=self.dtype)
        for i, (k, n) in enumerate(zip(keys, lengths)):
            out[i, :n] = rows[k]
        return out

    def _read(self, key: str) -> torch.Tensor | None:
        path = self.cache_dir / f"{key}.safetensors"
        if not path.is_file():
            return None
        try:
            embeds = safetensors.torch.load_file(str(path))["embeds"]
        except Exception as err:  # a corrupt or foreign file: recompute and overwrite it
            log.warning("ignoring unreadable prompt cache entry %s: %s", path, err)
            return None
        if embeds.ndim != 2 or embeds.shape[0] > self.text_len or embeds.shape[1] != self.text_dim:
            log.warning("ignoring prompt cache entry %s of shape %s", path, list(embeds.shape))
            return None
        return embeds.to(device=self.device, dtype=self.dtype)

    def _write(self, key: str, embeds: torch.Tensor, prompt: str) -> None:
        """Atomic: a temporary file in the cache directory, renamed over the entry."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".tmp-", suffix=".safetensors")
        os.close(fd)
        try:
            safetensors.torch.save_file({"embeds": embeds.detach().cpu().contiguous()}, tmp,
                                        metadata={"prompt": prompt, "encoder": self._fingerprint})
            os.replace(tmp, self.cache_dir / f"{key}.safetensors")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _build(original: Mapping[str, torch.Tensor], config: UMT5Config, device: str | torch.device,
           dtype: torch.dtype, source: str) -> UMT5EncoderModel:
    """A `UMT5EncoderModel` holding Wan-layout weights, built on the meta device (no random init, no extra copy)."""
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    model.load_state_dict(wan_to_hf_t5(original, model, source, device, dtype), strict=True, assign=True)
    return model.eval().requires_grad_(False)
