"""What a space-file value may be beyond its type, declared once: `tuner validate` checks a value against its
`Bound` (tuner/spaces/blocks.py) and `tuner schema` writes the same `Bound` as JSON Schema (tuner/schema.py).

A config block's field carries its bound in the dataclass field's metadata (`bounded(...)`); a top-level key
has a module-level `Bound` in tuner/spaces/parse.py. A leaf: imports nothing from tuner.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

MAX_IMAGE_SIZE = 2048  # dataset.image_size above this is a mistake (100000 px would be 30 GB per image)

# JSON Schema that a number is finite. JSON itself has no NaN or infinity, but a YAML file has (.nan, .inf)
# and the schema is also run on YAML read into Python: NaN fails every comparison, so "minimum 1 and maximum
# 0" holds for NaN alone (and fails for every other number), and infinity is beyond the largest float.
FINITE = {"not": {"anyOf": [{"type": "number", "minimum": 1, "maximum": 0},
                            {"type": "number", "exclusiveMinimum": 1.7976931348623157e308},
                            {"type": "number", "exclusiveMaximum": -1.7976931348623157e308}]}}
FINITE_REF = {"$ref": "#/$defs/finite"}


@dataclass(frozen=True)
class Bound:
    """The values a field takes beyond its type. Numbers: min <= v <= max, above < v < below, whole above
    `whole_above`. Strings: one of `words` (beside numbers), one of `choices`, or matching `pattern`.
    `says` words what is allowed for the message (made from the bounds when empty); `why` is added after it.
    `json` is JSON Schema for what the fields above cannot say (checked by the parser's own code)."""

    min: float | None = None
    max: float | None = None
    above: float | None = None
    below: float | None = None
    whole_above: float | None = None
    choices: tuple | Callable[[], Iterable] | None = None  # a callable: a registry, read when used
    words: tuple[str, ...] = ()
    pattern: str | None = None
    says: str = ""
    why: str = ""
    json: dict = field(default_factory=dict)

    def allowed(self) -> tuple:
        return tuple(self.choices() if callable(self.choices) else self.choices or ())

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value` (already of the field's type), as the end of a message that starts with
        the key ("must be ..., got ..." / "is ...; choose one of ..."); None when it is within bounds."""
        if value is None:
            return None
        if self.choices is not None:
            if value in self.allowed() and not isinstance(value, bool):
                return None
            return f"is {value!r}; choose one of {', '.join(map(str, self.allowed()))}"
        if isinstance(value, str):
            ok = value in self.words or (self.pattern is not None and re.search(self.pattern, value) is not None)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            ok = self._number_ok(value)
        else:
            ok = True
        if ok:
            return None
        return f"must be {self.says or self._says(value)}, got {value!r}" + (f"; {self.why}" if self.why else "")

    def wanted(self, whole: bool) -> str:
        """What the field takes, for a value of the wrong type ("a whole number from 0 to 1024 or 'auto'")."""
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.allowed()))
        return self.says or self._says(0 if whole else 0.0)

    def _number_ok(self, v: float) -> bool:
        try:
            finite = math.isfinite(v)
        except OverflowError:  # an int too large for a float
            finite = False
        return finite and all((
            self.min is None or v >= self.min, self.max is None or v <= self.max,
            self.above is None or v > self.above, self.below is None or v < self.below,
            self.whole_above is None or v <= self.whole_above or float(v).is_integer()))

    def _says(self, value: Any) -> str:
        whole = isinstance(value, int)
        kind = "a whole number" if whole else "a number"
        if self.min is not None and self.max is not None:
            text = f"{kind} from {self.min:g} to {self.max:g}"
        else:
            parts = [f">= {self.min:g}" if self.min is not None else "", f"<= {self.max:g}" if self.max is not None
                     else "", f"> {self.above:g}" if self.above is not None else "",
                     f"< {self.below:g}" if self.below is not None else ""]
            text = f"{kind} {' and '.join(p for p in parts if p)}".strip()
        if self.whole_above is not None:
            text += f", whole above {self.whole_above:g}"
        return text + "".join(f" or {w!r}" for w in self.words)

    def schema(self) -> dict:
        """These bounds as JSON Schema keywords, to go beside the field type's own (numeric keywords bind only
        numbers, `pattern` only strings, as in the checks above)."""
        s: dict = {}
        if self.choices is not None:
            s["enum"] = list(self.allowed())
        for key, v in (("minimum", self.min), ("maximum", self.max), ("exclusiveMinimum", self.above),
                       ("exclusiveMaximum", self.below)):
            if v is not None:
                s[key] = v
        alternatives: list[dict] = []
        if self.whole_above is not None:
            alternatives.append({"anyOf": [{"maximum": self.whole_above}, {"multipleOf": 1}]})
        if self.words or self.pattern is not None:  # a string must be one of the words or match the pattern
            strings: list[dict] = [{"enum": list(self.words)}] if self.words else []
            strings += [{"pattern": self.pattern}] if self.pattern is not None else []
            alternatives.append({"anyOf": [{"not": {"type": "string"}}, *strings]})
        if alternatives:
            s["allOf"] = alternatives
        return s | self.json


def bounded(default: Any = None, **bound) -> Any:
    """A dataclass field with this default and this `Bound` in its metadata (`bounded(1, min=1)`)."""
    return field(default=default, metadata={"bound": Bound(**bound)})


def bound_of(f) -> Bound | None:
    """The `Bound` of a dataclass field, if it has one."""
    return f.metadata.get("bound")
