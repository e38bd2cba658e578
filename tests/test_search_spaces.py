"""Every shipped search-space file validates as a user would check it, and says which seed experiment it is."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tuner.cli import main

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
FILES = sorted(p.name for p in SPACES.glob("*.yaml"))


@pytest.fixture()
def empty_hub(tmp_path):
    """Validation must not depend on which ImageNet files this machine happens to have downloaded."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield
    torch.hub.set_dir(old)


@pytest.mark.parametrize("name", FILES)
def test_shipped_space_validates_and_names_what_it_covers(name, empty_hub, capsys):
    assert main(["validate", "--space", str(SPACES / name)]) == 0, capsys.readouterr().err
    assert (SPACES / name).read_text().startswith("#"), f"{name}: start with a comment naming the experiment"
