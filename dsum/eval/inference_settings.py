"""The inference settings an export carries (``dsum_inference.json``): decoding, post-processing, metric settings
and removed strings. ``validate``/``test``/``predict`` and ``dsum.eval.ensemble`` on an export use them, except
settings given on the command line, so a model scores and predicts the same wherever it is moved and whatever
config is passed (the prompt template and generation config travel as their own files)."""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from dsum.infra.secrets import redact

INFERENCE_FILE = "dsum_inference.json"
# Model arguments that change what inference writes or how it is scored.
SETTINGS = ("generation", "postprocess", "rouge_tokenizer", "rouge_references", "remove_tokens")


def inference_settings(module: Any) -> dict[str, Any]:
    """The module's inference settings as JSON-ready values."""
    hparams = module.hparams
    values = {"generation": module.generation, "postprocess": module.postprocess,
              "rouge_tokenizer": hparams.rouge_tokenizer, "rouge_references": hparams.rouge_references,
              "remove_tokens": list(module.remove_tokens)}
    settings = {key: asdict(value) if is_dataclass(value) else value for key, value in values.items()}
    # What `predict` needs besides the weights: the family, and the data layout the model was trained with.
    settings["model_class"] = f"{type(module).__module__.rsplit('.', 1)[0]}.{type(module).__name__}"
    layout = getattr(module, "input_layout", None)
    settings["data"] = (asdict(layout) if is_dataclass(layout) else dict(layout)) if layout is not None else None
    return settings


def predict_args(saved: dict[str, Any]) -> list[str]:
    """``main.py predict`` arguments that rebuild an export's family and data layout, without a config file."""
    args = [f"--model={saved['model_class']}"]
    for key, value in (saved.get("data") or {}).items():
        args.append(f"--data.{key}={json.dumps(value, ensure_ascii=False) if isinstance(value, str) else value}")
    return args


def save_inference_settings(module: Any, directory: str | Path) -> Path:
    """Write ``dsum_inference.json`` into an export directory (secret values masked, as in every saved config)."""
    path = Path(directory) / INFERENCE_FILE
    path.write_text(json.dumps(redact(inference_settings(module)), ensure_ascii=False, indent=2) + "\n",
                    encoding="utf-8")
    return path


def saved_inference_settings(pretrained: str | Path) -> dict[str, Any] | None:
    """An export's ``dsum_inference.json``, or None (a hub model, an older export); ``ValueError`` when it is not
    valid JSON."""
    path = Path(pretrained) / INFERENCE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); export the model again") from None


def _plain(value: Any) -> Any:
    """A config value (jsonargparse Namespace, dataclass, list, scalar) as plain JSON-like data."""
    if is_dataclass(value):
        return asdict(value)
    if hasattr(value, "as_dict"):
        return value.as_dict()
    return list(value) if isinstance(value, tuple) else value


def apply_saved_settings(init_args: Any, saved: dict[str, Any], given: set[str]) -> list[str]:
    """Set the model's parsed arguments ``init_args`` to the export's inference settings, field by field, except
    those ``given`` on the command line (dotted names: ``model.generation.num_beams``, or a whole group,
    ``model.generation``). Returns the dotted names that changed."""
    taken = []
    for name in SETTINGS:
        if name not in saved or name not in init_args or f"model.{name}" in given:
            continue
        current, value = _plain(init_args[name]), saved[name]
        if isinstance(current, dict) and isinstance(value, dict):
            for key in current.keys() & value.keys():
                if f"model.{name}.{key}" not in given and current[key] != value[key]:
                    group = init_args[name]
                    if is_dataclass(group):
                        init_args[name] = type(group)(**{**asdict(group), key: value[key]})
                    else:  # a dict or a jsonargparse Namespace
                        group[key] = value[key]
                    taken.append(f"model.{name}.{key}")
        elif current != value:
            init_args[name] = value
            taken.append(f"model.{name}")
    return taken


def given_keys(args: list[str]) -> set[str]:
    """The dotted option names a command line sets (``--model.init_args.x`` counted as ``model.x``)."""
    return {arg[2:].split("=", 1)[0].replace("model.init_args.", "model.", 1)
            for arg in args if arg.startswith("--") and len(arg) > 2}
