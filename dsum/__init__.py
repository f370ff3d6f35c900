"""dsum: PyTorch Lightning research codebase for Korean dialogue summarization."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

__version__ = "0.1.0"

# Old name -> new place of the modules the regrouping moved (docs/NOTES.md): old checkpoints pickle classes under
# the old names, and scripts import them. An old name gives the new module with a DeprecationWarning.
MOVED_MODULES = {
    "dsum.metrics": "dsum.eval.metrics",
    "dsum.postprocess": "dsum.eval.postprocess",
    "dsum.fidelity": "dsum.eval.fidelity",
    "dsum.score": "dsum.eval.score",
    "dsum.ensemble": "dsum.eval.ensemble",
    "dsum.models.inference_settings": "dsum.eval.inference_settings",
    "dsum.files": "dsum.infra.files",
    "dsum.secrets": "dsum.infra.secrets",
    "dsum.faults": "dsum.infra.faults",
    "dsum.tracking": "dsum.infra.tracking",
    "dsum.checkpoint_io": "dsum.infra.checkpoint_io",
    "dsum.run_checks": "dsum.infra.run_checks",
    "dsum.sweep.registry": "dsum.registry",
    "dsum.tiny_llm": "dsum.tiny.llm",
    "dsum.tiny_tokenizers": "dsum.tiny.tokenizer_training",
}


class _MovedModule(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module name of :data:`MOVED_MODULES` and loads it as the module at its new place."""

    def __init__(self) -> None:
        self._real_specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED_MODULES:
            return None
        where = importlib.util.find_spec(MOVED_MODULES[fullname])
        return importlib.util.spec_from_loader(fullname, self, origin=where.origin if where else None)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED_MODULES[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        self._real_specs[module.__name__] = module.__spec__  # the import system overwrites it with the old name's
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run (the module at the new place is already imported): give it back its own spec."""
        module.__spec__ = self._real_specs.pop(module.__name__, module.__spec__)

    def get_code(self, fullname: str) -> object:
        """The new module's code, for ``python -m <old name>`` (``runpy`` runs it as ``__main__``)."""
        new = MOVED_MODULES[fullname]
        return importlib.util.find_spec(new).loader.get_code(new)  # type: ignore[union-attr]


if not any(isinstance(finder, _MovedModule) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModule())
