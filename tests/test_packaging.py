"""What `pip install` resolves must be what the code can use."""

from __future__ import annotations

import tomllib

from packaging.requirements import Requirement
from packaging.version import Version

from tests.conftest import REPO


def requirement(name: str) -> Requirement:
    """The project's requirement on ``name``, from its dependencies or any extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    listed = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    found = [Requirement(r) for r in listed if Requirement(r).name == name]
    assert len(found) == 1, (name, found)
    return found[0]


def test_the_qlora_extra_never_installs_a_bitsandbytes_transformers_refuses() -> None:
    from transformers.utils.import_utils import BITSANDBYTES_MIN_VERSION

    floor = requirement("bitsandbytes").specifier
    too_old = Version(BITSANDBYTES_MIN_VERSION)
    older = Version(f"{too_old.major}.{too_old.minor}.{max(too_old.micro - 1, 0)}") if too_old.micro else \
        Version(f"{too_old.major}.{too_old.minor - 1}.99")
    assert too_old in floor
    assert older not in floor, f"pyproject allows bitsandbytes {older}; transformers needs >= {too_old}"


def test_the_private_wandb_functions_the_local_engine_uses_still_exist() -> None:
    """`dsum.sweep.local` builds a trial's command line as `wandb agent` does, with wandb's own (private)
    functions; `pyproject.toml` only sets a floor for wandb, so a release that moves them fails here."""
    import inspect

    from wandb.sdk.launch.sweeps import utils
    from wandb.sdk.lib.config_util import save_config_file_from_dict

    assert isinstance(utils.DEFAULT_SWEEP_COMMAND, list) and "${args}" in utils.DEFAULT_SWEEP_COMMAND
    command = utils.create_sweep_command(["${interpreter}", "${program}", "${args}"])
    assert command == ["${interpreter}", "${program}", "${args}"]
    args = utils.create_sweep_command_args({"args": {"model.learning_rate": {"value": 1e-4}}})
    assert args["args"] == ["--model.learning_rate=0.0001"] and "args_no_boolean_flags" in args
    assert list(inspect.signature(save_config_file_from_dict).parameters)[:2] == ["config_filename", "config_dict"]
