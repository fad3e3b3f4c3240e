"""umT5 prompt encoder (model_core/text_encoder.py): Wan checkpoint layout, reference math, padding, prompt cache."""
import math
import threading

import pytest
import safetensors.torch
import torch
from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

from model_core.errors import CheckpointError, InputError
from model_core.text_encoder import UMT5_XXL, PromptEncoder, clean_prompt, file_fingerprint, hf_to_wan_t5_key

PROMPTS = ["pick up the red cup", "open   the drawer\n", "pick up the red cup"]


def wan_t5_layout(vocab, dim, heads, d_kv, ffn, layers, buckets=32):
    """Wan `T5Encoder` (umt5_xxl, shared_pos=False) tensor names and shapes, from wan/modules/t5.py."""
    d = {"token_embedding.weight": (vocab, dim), "norm.weight": (dim,)}
    for i in range(layers):
        p = f"blocks.{i}."
        d |= {p + "norm1.weight": (dim,), p + "norm2.weight": (dim,),
              p + "pos_embedding.embedding.weight": (buckets, heads),
              p + "ffn.gate.0.weight": (ffn, dim), p + "ffn.fc1.weight": (ffn, dim), p + "ffn.fc2.weight": (dim, ffn)}
        d |= {p + f"attn.{n}.weight": (heads * d_kv, dim) for n in "qkv"} | {p + "attn.o.weight": (dim, heads * d_kv)}
    return d


def reference_wan_t5(sd, ids, mask, heads, eps=1e-6, buckets=32, max_dist=128):
    """Wan's T5 encoder math written out: RMSNorm, unscaled attention + per-layer bidirectional relative bias,
    gated tanh-GELU FFN."""
    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    b, n = ids.shape
    rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]  # key - query
    half, exact = buckets // 2, buckets // 4
    dist = rel.abs()
    far = exact + (torch.log(dist.float().clamp(min=1) / exact) / math.log(max_dist / exact) * (half - exact)).long()
    bucket = (rel > 0).long() * half + torch.where(dist < exact, dist, far.clamp(max=half - 1))
    pad = (1 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    x = sd["token_embedding.weight"][ids]
    layers = sum(k.endswith("norm1.weight") for k in sd)
    for i in range(layers):
        w = {k.removeprefix(f"blocks.{i}."): v for k, v in sd.items() if k.startswith(f"blocks.{i}.")}
        h = rms(x, w["norm1.weight"])
        q, k, v = ((h @ w[f"attn.{c}.weight"].T).view(b, n, heads, -1).transpose(1, 2) for c in "qkv")
        bias = w["pos_embedding.embedding.weight"][bucket].permute(2, 0, 1)[None]  # [1, heads, n, n]
        att = torch.softmax(q @ k.transpose(-1, -2) + bias + pad, dim=-1)
        x = x + (att @ v).transpose(1, 2).reshape(b, n, -1) @ w["attn.o.weight"].T
        h = rms(x, w["norm2.weight"])
        gate = torch.nn.functional.gelu(h @ w["ffn.gate.0.weight"].T, approximate="tanh")
        x = x + (gate * (h @ w["ffn.fc1.weight"].T)) @ w["ffn.fc2.weight"].T
    return rms(x, sd["norm.weight"])


def count_forwards(encoder):
    calls = []
    model = encoder.model
    original = model.forward

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    model.forward = spy
    return calls


@pytest.fixture
def saved_tiny(tmp_path):
    enc = PromptEncoder.tiny(cache_dir=tmp_path / "cache_a")
    path = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save(enc.original_state_dict(), path)
    return enc, path


# --- layout and math --------------------------------------------------------------------------------------------

def test_tiny_checkpoint_has_the_wan_t5_layout():
    state = PromptEncoder.tiny().original_state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == wan_t5_layout(384, 48, 4, 12, 64, 2)


def test_real_umt5_xxl_maps_onto_the_wan_t5_layout():
    with torch.device("meta"):
        model = UMT5EncoderModel(UMT5Config(**UMT5_XXL))
    mapped = {hf_to_wan_t5_key(k): tuple(v.shape) for k, v in model.state_dict().items()}
    assert mapped == wan_t5_layout(256384, 4096, 64, 64, 10240, 24)


def test_hf_encoder_matches_the_wan_t5_math():
    enc = PromptEncoder.tiny()
    ids, mask = enc.tokenize(PROMPTS[:2])
    ours = enc._run_encoder(ids, mask)
    ref = reference_wan_t5(enc.original_state_dict(), ids, mask, heads=4) * mask[..., None]
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


# --- loading ----------------------------------------------------------------------------------------------------

def test_checkpoint_in_wan_layout_reloads_identically(saved_tiny, tmp_path):
    enc, path = saved_tiny
    loaded = PromptEncoder.from_pretrained(path, None, tiny=True, cache_dir=tmp_path / "cache_b")
    assert torch.equal(loaded.encode(PROMPTS), enc.encode(PROMPTS))
    emb = loaded.model.encoder.embed_tokens.weight
    assert loaded.model.shared.weight.data_ptr() == emb.data_ptr()  # one embedding table, not two


def test_wrong_shape_checkpoint_names_the_key_and_both_shapes(tmp_path):
    state = PromptEncoder.tiny().original_state_dict()
    state["blocks.1.ffn.fc1.weight"] = torch.zeros(60, 48)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"'blocks\.1\.ffn\.fc1\.weight' has shape \[60, 48\] "
                                              r"but the model expects \[64, 48\]"):
        PromptEncoder.from_pretrained(tmp_path / "bad.pth", None, tiny=True, cache_dir=tmp_path)


def test_missing_tokenizer_directory_is_a_clear_error(saved_tiny):
    _, path = saved_tiny
    with pytest.raises(CheckpointError, match="tokenizer directory"):
        PromptEncoder.from_pretrained(path, path.parent / "google" / "umt5-xxl")


def test_sentencepiece_tokenizer_directory_like_google_umt5(saved_tiny, tmp_path):
    """The real path: a T5 (Unigram) tokenizer saved in a directory, loaded offline."""
    _, path = saved_tiny
    pieces = ["<pad>", "</s>", "<unk>", "▁", "▁pick", "▁up", "▁the", "▁red", "▁cup", "▁open", "▁drawer"]
    T5Tokenizer(vocab=[(p, -float(i)) for i, p in enumerate(pieces)], extra_ids=0).save_pretrained(tmp_path / "tok")
    enc = PromptEncoder.from_pretrained(path, tmp_path / "tok", tiny=True, cache_dir=tmp_path / "cache")
    ids, mask = enc.tokenize(["pick up the   red cup"])
    assert ids[0, :6].tolist() == [4, 5, 6, 7, 8, 1] and mask.sum() == 6  # pieces + EOS, then padding
    assert enc.encode(["pick up the red cup"]).shape == (1, 32, 48)


# --- outputs ----------------------------------------------------------------------------------------------------

def test_shapes_and_padding_zeroed(tmp_path):
    enc = PromptEncoder.tiny(cache_dir=tmp_path)
    long = "move the arm " * 10
    out = enc.encode(["cup", "open the drawer", long])
    assert out.shape == (3, 32, 48)
    for row, n in zip(out, (4, 16, 32)):  # bytes + EOS; the long prompt is truncated to text_len
        assert row[:n].abs().sum(-1).gt(0).all() and not row[n:].any()


def test_prompt_cleaning_and_bad_input():
    assert clean_prompt("  open &amp;amp; close \n the   drawer ") == "open & close the drawer"
    enc = PromptEncoder.tiny()
    with pytest.raises(InputError, match="list of str"):
        enc.encode("pick up the cup")


# --- the prompt cache -------------------------------------------------------------------------------------------

def test_cache_hits_on_the_second_call_without_an_encoder_forward(saved_tiny, tmp_path):
    _, path = saved_tiny
    enc = PromptEncoder.from_pretrained(path, None, tiny=True, cache_dir=tmp_path / "cache")
    calls = count_forwards(enc)
    first = enc.encode(PROMPTS)
    assert len(calls) == 1  # the repeated prompt is encoded once
    second = enc.encode(PROMPTS)
    assert len(calls) == 1 and torch.equal(first, second)
    assert len(list(enc.cache_dir.glob("*.safetensors"))) == 2 and not list(enc.cache_dir.glob(".tmp-*"))

    # a new process reads the disk cache, and with lazy=True never loads the weights for a known prompt
    fresh = PromptEncoder.from_pretrained(path, None, tiny=True, cache_dir=enc.cache_dir, lazy=True)
    assert torch.equal(fresh.encode(PROMPTS[1:]), first[1:]) and not fresh.is_loaded
    fresh.encode(["a new instruction"])
    assert fresh.is_loaded


def test_cache_key_follows_the_weights(tmp_path):
    PromptEncoder.tiny(cache_dir=tmp_path, seed=0).encode(PROMPTS[:1])
    other = PromptEncoder.tiny(cache_dir=tmp_path, seed=1)
    calls = count_forwards(other)
    other.encode(PROMPTS[:1])
    assert len(calls) == 1 and len(list(tmp_path.glob("*.safetensors"))) == 2


def test_corrupt_cache_entry_is_recomputed(tmp_path):
    enc = PromptEncoder.tiny(cache_dir=tmp_path)
    expected = enc.encode(PROMPTS[:1])
    (entry,) = tmp_path.glob("*.safetensors")
    entry.write_bytes(b"not a safetensors file")
    again = PromptEncoder.tiny(cache_dir=tmp_path)
    assert torch.equal(again.encode(PROMPTS[:1]), expected)
    assert safetensors.torch.load_file(str(entry))["embeds"].shape == (20, 48)


def test_concurrent_writers_never_expose_a_partial_entry(tmp_path):
    enc = PromptEncoder.tiny(cache_dir=tmp_path)
    emb = torch.randn(20, 48)
    errors = []

    def writer():
        for _ in range(20):
            enc._write("k", emb, "p")

    def reader():
        for _ in range(100):
            got = enc._read("k")
            if got is not None and not torch.equal(got, emb):
                errors.append("partial")

    threads = [threading.Thread(target=f) for f in (writer, writer, writer, reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and torch.equal(enc._read("k"), emb)
    assert [p.name for p in tmp_path.iterdir()] == ["k.safetensors"]


def test_file_fingerprint_sees_content_and_size(tmp_path):
    path = tmp_path / "w.bin"
    data = bytearray(range(256)) * 256  # 64 KiB
    path.write_bytes(data)
    sampled = dict(stride=1024, chunk=64)  # 64 KiB > 16 strides: sampled mode
    base, full = file_fingerprint(path, **sampled), file_fingerprint(path)
    data[5 * 1024 + 3] ^= 1  # inside a sampled chunk
    path.write_bytes(data)
    assert file_fingerprint(path, **sampled) != base and file_fingerprint(path) != full
    data[5 * 1024 + 100] ^= 1  # between samples: only the full hash (files up to 64 MiB) sees it
    path.write_bytes(data)
    assert file_fingerprint(path) != full
    path.write_bytes(data + b"x")
    assert file_fingerprint(path, **sampled) != base
