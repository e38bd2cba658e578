"""The space files that ship inside the package (tuner/search_spaces/): found by name, listed by `tuner spaces`.

`--space NAME` takes a file when one exists at that path, else the built-in space of that name (with or
without `.yaml`), so `tuner search --space cars_transfer` works from any folder after `pip install`. Each
file's `# seed: ...` comment line is the one place that says which seed experiment it reproduces.
Imports only the standard library and PyYAML: `tuner spaces` starts in a blink.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuner.errors import UserError

SPACES_DIR = Path(__file__).resolve().parent / "search_spaces"
SEED_PREFIX = "# seed:"


@dataclass(frozen=True)
class BuiltinSpace:
    name: str
    path: Path
    kind: str   # the family, or "suite"
    seed: str   # the seed experiment it reproduces, from its `# seed:` line


def names() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def builtin_path(name: str) -> Path | None:
    """The built-in space file called `name` (`cars_transfer` or `cars_transfer.yaml`), or None."""
    stem = name[:-len(".yaml")] if name.endswith(".yaml") else name
    if not stem or "/" in stem or "\\" in stem or stem.startswith("."):
        return None
    p = SPACES_DIR / f"{stem}.yaml"
    return p if p.is_file() else None


def resolve(space: str | Path) -> Path:
    """`--space`'s value as a path: the file at that path when there is anything there, else the built-in
    space of that name; a UserError when it is neither."""
    p = Path(space)
    if p.exists():
        return p  # an existing path always wins, even a folder or an unreadable file: spaces.load says why
    found = builtin_path(str(space))
    if found is None:
        raise UserError(f"--space {space}: no such file, nor a built-in space of that name; `tuner spaces` "
                        f"lists the built-in ones ({', '.join(names()[:4])}, ...)")
    return found


def seed_line(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(SEED_PREFIX):
            return line[len(SEED_PREFIX):].strip()
    return ""


def describe(path: Path) -> BuiltinSpace:
    import yaml

    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    kind = "suite" if "suite" in raw else str(raw.get("family", "?"))
    return BuiltinSpace(name=path.stem, path=path, kind=kind, seed=seed_line(path))


def listing() -> list[BuiltinSpace]:
    return [describe(SPACES_DIR / f"{n}.yaml") for n in names()]
