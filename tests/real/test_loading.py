"""Every way into mechscope.load gives the same model."""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import mechscope as ms
from mechscope.errors import CacheEntryError, CacheLocationError
from mechscope.models import hardware
from mechscope.models.bundled import cached_dir, check_entry, gguf_path

PROMPT = "The capital of France is"


def test_local_directory_and_device_map_match_the_bundled_load(smol):
    directory = cached_dir("smollm2-135m")
    assert (directory / "model.safetensors").is_file() and (directory / "tokenizer.json").is_file()
    expected = smol(PROMPT)
    for model in (ms.load(str(directory)), ms.load(directory, device_map={"": "cpu"})):
        assert torch.equal(model(PROMPT), expected)


def test_gguf_path_loads_the_same_weights(smol):
    model = ms.load(gguf_path("smollm2-135m"))
    assert torch.equal(model(PROMPT), smol(PROMPT))


def test_built_model_and_dtype(smol):
    # A fresh HF model: a second wrapper of smol.hf takes over its attention routing (smol's
    # pattern/score hooks then stop firing), which would break later tests on the session fixture.
    built = AutoModelForCausalLM.from_pretrained(cached_dir("smollm2-135m"), dtype=torch.float32)
    wrapped = ms.load(built, smol.tokenizer)
    assert wrapped.hf is built and torch.equal(wrapped(PROMPT), smol(PROMPT))
    half = ms.load("smollm2-135m", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    logits, cache = half.run_with_cache(PROMPT, "blocks.*.attn.pattern")
    assert logits[0, -1].argmax().item() == smol.to_single_token(" Paris")
    assert cache["blocks.5.attn.pattern"].dtype == torch.bfloat16



# issue 11, "Loading": one clear message, the real cause first, for each bad input.

@pytest.mark.parametrize("case, expected", [
    ("text file", r"^'.*notes\.txt' is a file but not a GGUF model \(it starts with b'hell'"),
    ("garbage gguf", r"^'.*model\.gguf' is a file but not a GGUF model"),
    ("empty dir", r"^'.*empty' is not a model directory: it has no config\.json \(holds nothing\)"),
    ("only config", r"^could not load the local model '.*only-config': Error no file named model\.safetensors"),
    ("corrupt config", r"^'.*config\.json' is not valid JSON \(Expecting .*: line 1 column 24"),
    ("garbage weights", r"^'.*model\.safetensors' declares a \d+-byte header but the file is 1024 bytes"),
])
def test_bad_local_paths_name_the_path_and_the_real_cause(tmp_path, case, expected):
    """Before: a text file was 'does not exist', the rest had a hub-download preamble naming the parent dir."""
    config = (cached_dir("smollm2-135m") / "config.json").read_text()
    paths = {"text file": tmp_path / "notes.txt", "garbage gguf": tmp_path / "model.gguf",
             "empty dir": tmp_path / "empty", "only config": tmp_path / "only-config",
             "corrupt config": tmp_path / "corrupt", "garbage weights": tmp_path / "weights"}
    (tmp_path / "notes.txt").write_text("hello, not a model\n")
    (tmp_path / "model.gguf").write_bytes(bytes(range(256)) * 4)
    for folder in ("empty", "only-config", "corrupt", "weights"):
        (tmp_path / folder).mkdir()
    (tmp_path / "only-config" / "config.json").write_text(config)
    (tmp_path / "corrupt" / "config.json").write_text('{"model_type": "llama",')
    (tmp_path / "weights" / "config.json").write_text(config)
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"\xff" * 1024)
    with pytest.raises(ms.ModelNotFoundError, match=expected) as error:
        ms.load(paths[case])
    assert "huggingface-cli" not in str(error.value) and "Hugging Face cache" not in str(error.value)


def test_a_near_miss_of_a_bundled_name_suggests_it():
    """Before: load("smollm2") suggested nothing but `huggingface-cli download smollm2`."""
    with pytest.raises(ms.ModelNotFoundError, match=r"Did you mean the bundled 'smollm2-135m'\?"):
        ms.load("smollm2", local_files_only=True)


@pytest.mark.parametrize("bad", [None, 123, 1.5, ["smollm2-135m"]])
def test_a_non_path_model_argument_is_a_type_error(bad):
    """Before: load(None) / load(123) tried the hub for 'None' / '123'."""
    with pytest.raises(TypeError, match=r"mechscope.load expects .* got ") as error:
        ms.load(bad)
    assert isinstance(error.value, ms.MechscopeError)


def test_load_logs_the_dtype_and_the_hardware(caplog):
    """issue 11, defaults that fit the CPU: ms.load says which dtype and hardware it runs with."""
    with caplog.at_level(logging.INFO, logger="mechscope"):
        ms.load("smollm2-135m")
    assert f"float32 on cpu; {hardware.describe('cpu')}" in caplog.text
    assert "CPU capability " + torch.backends.cpu.get_cpu_capability() in caplog.text


def test_default_dtype_follows_the_cpus_bf16_flags():
    """issue 11: bf16 only where the CPU has avx512_bf16 or AMX (read independently here)."""
    flags = next((line.split(":")[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), []) if Path("/proc/cpuinfo").exists() else []
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert hardware.native_bf16("cpu") is native
    assert hardware.default_dtype("cpu") == (torch.bfloat16 if native else torch.float32)
    assert f"native bf16 {'yes' if native else 'no'}" in hardware.describe()
    assert hardware.default_dtype("meta") == torch.float32
    settings = hardware.run_settings(torch.float32, "bfloat16")  # what every benchmark prints
    assert settings.endswith("; ran in float32, bfloat16")
    assert f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16 " in settings


# issue 11, "Bundled-model cache": validate the entry first, rebuild it atomically, say so.

def _copy_entry(tmp_path: Path, skip: tuple[str, ...] = ()) -> Path:
    """A copy of the bundled cache entry under tmp_path/models (the weights symlinked: never written)."""
    source = cached_dir("smollm2-135m")
    entry = tmp_path / "models" / "smollm2-135m"
    entry.mkdir(parents=True)
    for file in source.iterdir():
        if file.name not in skip:
            if file.name == "model.safetensors":
                (entry / file.name).symlink_to(file)
            else:
                shutil.copy(file, entry / file.name)
    return entry


@pytest.mark.parametrize("damage, reason", [
    ("truncate", r"model\.safetensors is 1048576 bytes but its header describes \d+ \(truncated or padded\)"),
    ("garbage", r"model\.safetensors declares a \d+-byte header but the file is 4096 bytes"),
    ("no config", r"incomplete: config\.json is missing"),
    ("bad tokenizer", r"tokenizer\.json is not valid JSON"),
])
def test_a_damaged_cache_entry_is_detected_without_loading_it(tmp_path, damage, reason):
    """Before: a truncated or garbage model.safetensors gave a raw SafetensorError with no path,
    and a missing config re-dequantised on every load, then failed."""
    entry = _copy_entry(tmp_path, skip=("config.json",) if damage == "no config" else ())
    weights = entry / "model.safetensors"
    if damage == "truncate":
        with weights.open("rb") as file:
            data = file.read(2**20)
        weights.unlink()
        weights.write_bytes(data)
    elif damage == "garbage":
        weights.unlink()
        weights.write_bytes(b"\x00\x10" * 2048)
    elif damage == "bad tokenizer":
        (entry / "tokenizer.json").write_text('{"version": ')
    check_entry(cached_dir("smollm2-135m"))  # the real entry passes the same check
    with pytest.raises(CacheEntryError, match=f"cached bundled model at '{entry}' is .*{reason}"):
        check_entry(entry)


def test_a_damaged_cache_entry_is_rebuilt_atomically_with_a_warning(tmp_path, monkeypatch, smol):
    """Weights but no config: rebuilt once (one dequantisation, ~40 s), then reused."""
    entry = _copy_entry(tmp_path, skip=("config.json",))
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path))
    with pytest.warns(UserWarning, match=f"cached bundled model at '{entry}' is incomplete: config.json is missing; "
                                         "rebuilding it"):
        model = ms.load("smollm2-135m")
    check_entry(entry)
    assert not (entry / "model.safetensors").is_symlink()  # a new entry, swapped in whole
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["smollm2-135m"]  # no staging left
    assert torch.equal(model(PROMPT), smol(PROMPT))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ms.load("smollm2-135m")  # valid now: no rebuild, no warning


def test_a_cache_path_that_is_a_file_fails_at_once(tmp_path, monkeypatch):
    """Before: $MECHSCOPE_CACHE pointing at a file failed after 79 s of dequantisation."""
    cache = tmp_path / "cache.txt"
    cache.write_text("not a folder")
    monkeypatch.setenv("MECHSCOPE_CACHE", str(cache))
    start = time.perf_counter()
    with pytest.raises(CacheLocationError, match=f"cannot use the mechscope cache at '{cache}' "
                                                 rf"\(\$MECHSCOPE_CACHE\): '{cache}' is a file"):
        ms.load("smollm2-135m")
    assert time.perf_counter() - start < 1.0
    assert isinstance(CacheLocationError("x"), (ms.MechscopeError, NotADirectoryError))
