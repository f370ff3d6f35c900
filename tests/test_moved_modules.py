"""Modules moved by the regrouping still load under their old names: checkpoints written before it pickle their
hyperparameters' classes there (``dsum.postprocess.PostprocessSettings``), and scripts import them."""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import subprocess
import sys

import pytest

import dsum
from dsum.eval.postprocess import PostprocessSettings


@pytest.mark.parametrize("old, new", sorted(dsum.MOVED_MODULES.items()))
def test_an_old_module_name_is_the_module_at_its_new_place(old: str, new: str) -> None:
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        module = importlib.import_module(old) if old not in sys.modules else _reimport(old)
    assert module is importlib.import_module(new)


def _reimport(name: str):
    del sys.modules[name]
    return importlib.import_module(name)


def test_a_checkpoint_pickled_under_an_old_module_name_loads() -> None:
    settings = PostprocessSettings(collapse_repeats=False)
    old = pickle.dumps(settings, protocol=0).replace(b"cdsum.eval.postprocess\n", b"cdsum.postprocess\n")
    assert b"dsum.postprocess\n" in old and b"dsum.eval" not in old
    sys.modules.pop("dsum.postprocess", None)
    with pytest.warns(DeprecationWarning):
        loaded = pickle.loads(old)
    assert type(loaded) is PostprocessSettings and loaded == settings


def test_a_name_that_never_existed_still_fails() -> None:
    result = subprocess.run([sys.executable, "-c", "import dsum.nothing_here"], capture_output=True, text=True)
    assert result.returncode == 1 and "No module named 'dsum.nothing_here'" in result.stderr


def test_the_old_python_m_commands_still_run() -> None:
    result = subprocess.run([sys.executable, "-m", "dsum.score", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--pred" in result.stdout and "--gold" in result.stdout


def test_names_that_moved_out_of_an_old_module_still_import_from_it() -> None:
    from dsum.eval import tokenizers
    from dsum.tiny import build

    with pytest.warns(DeprecationWarning):
        old_metrics = _reimport("dsum.metrics") if "dsum.metrics" in sys.modules else importlib.import_module(
            "dsum.metrics")
    assert old_metrics.TOKENIZERS is tokenizers.TOKENIZERS and old_metrics.MecabTokenizer is tokenizers.MecabTokenizer
    import dsum.tiny  # the old module `dsum.tiny` is now a package; its names resolve to dsum.tiny.build

    assert dsum.tiny.build_tiny_model is build.build_tiny_model and dsum.tiny.FAMILIES == build.FAMILIES
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        dsum.tiny.nothing_here  # noqa: B018


def test_an_old_name_leaves_the_module_its_own_spec() -> None:
    import dsum.eval.fidelity as fidelity

    sys.modules.pop("dsum.fidelity", None)
    with pytest.warns(DeprecationWarning):
        importlib.import_module("dsum.fidelity")
    assert fidelity.__spec__.name == "dsum.eval.fidelity"
    assert importlib.util.find_spec("dsum.eval.fidelity").origin.endswith("dsum/eval/fidelity.py")
    assert importlib.reload(fidelity) is fidelity



def test_names_the_local_engine_had_before_its_split_still_import_from_it() -> None:
    from dsum.sweep import local, search_space, trials

    assert local.BAYES_FLOATS is search_space.BAYES_FLOATS and local.BAYES_OTHERS is search_space.BAYES_OTHERS
    assert (local.SEARCH_KEYS, local.STORAGE_FILE) == (trials.SEARCH_KEYS, trials.STORAGE_FILE)
    assert local.STALE_AFTER_SECONDS == trials.STALE_AFTER_SECONDS
