"""The ``mechscope`` command fails fast and clearly (issue 11, "CLI"): every argument is checked
before any model load or harvest, a `MechscopeError` is one line on stderr with a non-zero exit
status (``--debug`` for the traceback), and ``--help`` / ``--version`` import no torch.

The model given to the commands is a folder holding only a tiny Llama's ``config.json``: the
checks read names and widths from the config, so an error that came from loading the model
(there are no weights to load) would read differently from the ones asserted here."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf

import mechscope as ms
from mechscope.cli import EXIT_ERROR, main
from mechscope.sae.train import TrainConfig, train_sae


@pytest.fixture(scope="module")
def config_only(tmp_path_factory) -> Path:
    """A model folder with a config and no weights (2 layers, d_model 64, 4 heads of 16)."""
    folder = tmp_path_factory.mktemp("config_only")
    tf.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=64).save_pretrained(folder)
    assert not list(folder.glob("*.safetensors"))
    return folder


def _fails(capsys, argv: list[str]) -> str:
    """Run ``mechscope argv`` in-process; assert a clean failure and return its stderr."""
    assert main(argv) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("mechscope: error: ") and "Traceback" not in err, err
    return err


def _train(model: Path, out: Path, *extra: str) -> list[str]:
    return ["sae", "train", "--model", str(model), "--hook", "blocks.0.resid_post", "--d-sae", "128", "--k", "4",
            "--tokens", "4096", "--batch-size", "512", "--out", str(out), *extra]


@pytest.mark.parametrize(("extra", "message"), [
    (["--k", "0"], "--k must be at least 1, got 0"),
    (["--d-sae", "0"], "--d-sae must be at least 1, got 0"),
    (["--d-sae", "-3"], "--d-sae must be at least 1, got -3"),
    (["--k", "200"], "--k 200 is more than --d-sae 128"),
    (["--lr", "0"], "--lr must be positive, got 0.0"),
    (["--lr", "nan"], "--lr must be positive, got nan"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--context-size", "0"], "--context-size must be at least 2, got 0"),
    (["--tokens", "0"], "--tokens must be at least 1, got 0"),
    (["--tokens", "100"], "--tokens 100 is less than one batch"),
    (["--eval-windows", "-1"], "--eval-windows must be at least 0, got -1"),
    (["--arch", "topkk"], "unknown SAE architecture 'topkk'. Did you mean 'topk'"),
    (["--hook", "blocks.9.resid_post"], "Unknown activation name 'blocks.9.resid_post'"),
    (["--hook", "blocks.0.resid_pots"], "Closest valid names: blocks.0.resid_post"),
    (["--hook", "blocks.*.resid_post"], "exact activation names, not the pattern"),
    (["--hook", "blocks.0.attn.pattern"], "layout 'bhqk'"),
])
def test_train_arguments_are_checked_before_the_model_loads(capsys, config_only, tmp_path, extra, message):
    """Issue 11 CLI: each bad argument is named before any load (the model has no weights)."""
    err = _fails(capsys, _train(config_only, tmp_path / "run", *extra))
    assert message in err
    assert not (tmp_path / "run").exists()  # nothing was started


def test_every_range_problem_is_listed_at_once(capsys, config_only, tmp_path):
    err = _fails(capsys, _train(config_only, tmp_path, "--k", "0", "--lr", "-1", "--batch-size", "0"))
    assert "--k must" in err and "--lr must" in err and "--batch-size must" in err


def test_output_paths_that_are_files_or_folders(capsys, config_only, tmp_path):
    """Issue 11 CLI: ``--out`` that is a file, and an output file that is a folder."""
    a_file = tmp_path / "taken"
    a_file.write_text("")
    assert "is a file; it must be a folder" in _fails(capsys, _train(config_only, a_file))
    assert "is inside the file" in _fails(capsys, _train(config_only, a_file / "run"))
    err = _fails(capsys, ["sae", "harvest", "--model", str(config_only), "--hook", "blocks.0.resid_post",
                          "--activations", str(a_file)])
    assert "--activations" in err and "is a file" in err
    err = _fails(capsys, ["sae", "dashboard", "--model", str(config_only), "--sae", str(tmp_path / "nothing"),
                          "--out", str(tmp_path)])
    assert "--out" in err and "is a folder; it must be a file name" in err


def test_harvest_hooks_and_saved_saes_are_checked_against_the_model(capsys, config_only, tmp_path):
    err = _fails(capsys, ["sae", "harvest", "--model", str(config_only), "--hook", "blocks.0.resid_post",
                          "--hook", "blocks.0.mlp.outt", "--activations", str(tmp_path / "acts")])
    assert "Unknown activation name 'blocks.0.mlp.outt'" in err
    assert "no SAE at" in _fails(capsys, ["sae", "eval", "--model", str(config_only), "--sae", str(tmp_path / "x")])
    wide = ms.SAE(ms.SAEConfig(d_in=32, d_sae=8, architecture="relu", hook_name="blocks.1.resid_post"))
    ms.save_saelens(wide, tmp_path / "wide")
    err = _fails(capsys, ["sae", "eval", "--model", str(config_only), "--sae", str(tmp_path / "wide")])
    assert "reads d_in = 32, but 'blocks.1.resid_post' is 64 wide in this model" in err
    nameless = ms.SAE(ms.SAEConfig(d_in=64, d_sae=8, architecture="relu"))
    ms.save_saelens(nameless, tmp_path / "nameless")
    err = _fails(capsys, ["sae", "dashboard", "--model", str(config_only), "--sae", str(tmp_path / "nameless"),
                          "--out", str(tmp_path / "d.html")])
    assert "cfg.hook_name is empty" in err


def test_a_per_head_hook_is_accepted_with_its_heads_flattened(capsys, config_only, tmp_path):
    """Issue 11 Others: ``--hook blocks.0.attn.z`` passes the checks (d_in = 4 heads x 16); what
    fails is the weightless model's load, after them."""
    assert main(["sae", "train", "--model", str(config_only), "--hook", "blocks.0.attn.z", "--arch", "relu",
                 "--d-sae", "128", "--tokens", "4096", "--batch-size", "512", "--out", str(tmp_path)]) == EXIT_ERROR
    captured = capsys.readouterr()
    assert f"loading {config_only} in " in captured.out and "could not load" in captured.err, captured


def test_resume_with_another_width_or_architecture_is_refused_before_the_model_loads(capsys, config_only, tmp_path):
    """Issue 11 CLI: ``--resume`` of a run with another d_sae or architecture (a raw size-mismatch
    RuntimeError before) names the differing settings."""
    cfg = ms.SAEConfig(d_in=64, d_sae=128, architecture="topk", k=4, hook_name="blocks.0.resid_post",
                       model_name=str(config_only))
    data = torch.randn(512 * 8, 64, generator=torch.Generator().manual_seed(0))
    batches = lambda: iter((x, x) for x in data.split(512))
    train_sae(ms.SAE(cfg), batches, TrainConfig(steps=4, checkpoint_every=2), out=tmp_path, progress=False)
    err = _fails(capsys, _train(config_only, tmp_path, "--d-sae", "256", "--resume"))
    assert "checkpoint.safetensors was written by a run with other settings" in err
    assert "sae.d_sae: checkpoint 128, now 256" in err
    err = _fails(capsys, _train(config_only, tmp_path, "--arch", "relu", "--resume"))
    assert "sae.architecture: checkpoint 'topk', now 'relu'" in err


def test_debug_shows_the_traceback(config_only, tmp_path):
    with pytest.raises(ms.MechscopeError, match="--k must be at least 1"):
        main(["--debug", *_train(config_only, tmp_path, "--k", "0")])
    with pytest.raises(ms.MechscopeError, match="--k must be at least 1"):
        main([*_train(config_only, tmp_path, "--k", "0"), "--debug"])


PROBE = """
import sys
from mechscope.cli import main
for argv in {argvs!r}:
    try:
        main(argv)
    except SystemExit:
        pass
heavy = sorted(m for m in ("torch", "transformers", "numpy", "pandas", "plotly") if m in sys.modules)
print("HEAVY", heavy)
"""


def test_help_and_version_import_no_torch():
    """Issue 11 CLI: ``--help``/``--version`` took ~8 s importing the package; now they import
    none of torch, transformers, numpy, pandas, plotly."""
    argvs = [["--help"], ["--version"], ["sae", "--help"], ["sae", "train", "--help"], ["sae", "dashboard", "--help"]]
    run = subprocess.run([sys.executable, "-c", PROBE.format(argvs=argvs)], capture_output=True, text=True,
                         timeout=120, check=True)
    assert "mechscope 0.1.0" in run.stdout and "--d-sae" in run.stdout
    assert "HEAVY []" in run.stdout, run.stdout[-500:]


def test_import_mechscope_is_lazy_and_every_public_name_resolves():
    code = ("import sys, mechscope as ms; lazy = 'torch' not in sys.modules; "
            "from mechscope import SAE, harvest, load, HookedModel; "
            "print(lazy, callable(harvest), all(hasattr(ms, n) for n in ms.__all__), set(ms.__all__) <= set(dir(ms)))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert run.stdout.split() == ["True", "True", "True", "True"], run.stdout + run.stderr
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        ms.not_a_name  # noqa: B018


def test_type_checkers_see_every_lazy_name():
    """The ``if TYPE_CHECKING:`` imports of mechscope/__init__.py name exactly what `_LAZY` serves."""
    tree = ast.parse(Path(ms.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    seen = {("." * n.level + (n.module or ""), a.name) for n in block.body if isinstance(n, ast.ImportFrom)
            for a in n.names}
    assert seen == {(module, name) for name, module in ms._LAZY.items()} | {(".", tier) for tier in ms._TIERS}
    assert set(ms._LAZY) | set(ms._TIERS) <= set(ms.__all__)


def test_names_read_from_the_config_are_the_loaded_models(config_only):
    """The checks' names (config only) are the ones the loaded model has."""
    from mechscope.sae.commands import model_hook_points

    hf = tf.LlamaForCausalLM(tf.LlamaConfig.from_pretrained(config_only))
    assert list(model_hook_points(str(config_only))) == ms.HookedModel(hf).names
