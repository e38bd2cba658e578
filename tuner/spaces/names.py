"""Names and paths a space file gives: an experiment name becomes a results folder, so it is one plain
folder name; a path must be one the file system can take; a user's key is shown safely on one line."""
from __future__ import annotations

import os
import re
from typing import Any

from tuner.errors import UserError


def shown(key: Any) -> str:
    """A user's key as it goes into a one-line message: as typed, or quoted when it holds a line break
    or another unprintable character (which would split the `error:` line)."""
    return key if isinstance(key, str) and key.isprintable() else repr(key)


def check_path_text(path: str, where: str) -> str:
    """A path from a space file that the file system can take: no NUL byte, at most 4096 bytes, each part at
    most 255 (Linux's PATH_MAX and NAME_MAX). A longer one failed later with 'File name too long'."""
    size = len(os.fsencode(path)) if "\0" not in path else 0
    part = max((len(os.fsencode(p)) for p in path.split("/")), default=0) if "\0" not in path else 0
    why = ("holds a NUL byte" if "\0" in path else f"is {size} bytes long (at most 4096)" if size > 4096
           else f"has a part of {part} bytes (at most 255)" if part > 255 else None)
    if why:
        raise UserError(f"{where}: {shown(path[:60] + '...' if len(path) > 60 else path)} {why}; give the "
                        f"path of a folder")
    return path


NAME_MAX = 100


# one plain folder name: 1 to NAME_MAX characters, no path separator or control character, no leading dot.
# `(?![\s\S])` ends the string in Python and JSON Schema (ECMA) regexes alike ($ would let a final newline by)
NAME_PATTERN = rf"^(?!\.)[^/\\\u0000-\u001f\u007f]{{1,{NAME_MAX}}}(?![\s\S])"


def check_name(name: object, where: str) -> str:
    """An experiment name becomes `<results>/<name>`, which a new search removes first: so it must be one
    plain file-name component, never a path that leads elsewhere. Every way a name arrives comes through here."""
    if not isinstance(name, str):
        kind = {"int": "a number", "float": "a number", "bool": "true/false", "NoneType": "empty"}.get(
            type(name).__name__, f"a {type(name).__name__}")
        raise UserError(f"{where}: {repr(name)[:60]} is {kind}, not a name; write it as a quoted string such as "
                        f"'my_search'")
    if re.search(NAME_PATTERN, name):
        return name
    bad = next((c for c in name if ord(c) < 32 or ord(c) == 127), None)
    shown = repr(name if len(name) <= 40 else name[:40] + "...")
    why = ("is empty" if not name
           else f"has the control character {bad!r}" if bad is not None
           else f"is {len(name)} characters long (at most {NAME_MAX})" if len(name) > NAME_MAX
           else "contains a path separator" if "/" in name or "\\" in name
           else "starts with '.'")
    if why:
        raise UserError(f"{where}: {shown} {why}; a name is one plain folder name (letters, digits, '-', '_', '.')")
    return name
