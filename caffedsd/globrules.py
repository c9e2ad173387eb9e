"""GLOB=VALUE rules for layers (plan rules, --force-mult, --layers, --rank),
and the comma-separated number lists of --sparsities and --energy.

A layer takes the value of the last rule that matches it, so broad rules go
first and exceptions after them. A rule that matches no layer is an error:
it is almost always a typo that would prune (or spare) the wrong layers.
"""
import fnmatch
from dataclasses import dataclass, field

from .errors import InputError


def number_list(text, option, convert=float):
    """'0.1,0.2,...' given to ``option`` -> a tuple of ``convert``-ed
    numbers, with none missing: '0.5,,0.9' is refused, as it is more likely
    a number lost in typing than a wish for two."""
    items = [item.strip() for item in str(text).split(",")]
    if items == [""]:
        raise InputError(f"{option} {text!r}: empty")
    if "" in items:
        raise InputError(f"{option} {text!r}: item {items.index('') + 1} is empty")
    try:
        return tuple(convert(item) for item in items)
    except ValueError:
        kind = "whole numbers" if convert is int else "numbers"
        raise InputError(f"{option} {text!r}: not a comma-separated list of {kind}") from None


def glob_list(values, option):
    """The globs of a repeatable ``option`` (--layers), each given alone or
    comma-separated; one given that names none (-l "$UNSET") is refused,
    not taken for "every layer"."""
    globs = tuple(glob.strip() for value in values for glob in value.split(",") if glob.strip())
    if values and not globs:
        raise InputError(f"{option} {values[0]!r}: names no layer glob")
    return globs


@dataclass(frozen=True)
class Rule:
    pattern: str
    value: object = None
    # Where it was given ("--rule", "plan.yaml: rule"), for messages; a
    # rule's meaning does not depend on it.
    where: str = field(default=None, compare=False)

    def matches(self, name):
        return fnmatch.fnmatchcase(name, self.pattern)

    @classmethod
    def parse(cls, text, option="--rule", value_name="AMOUNT", example="conv1=0.3", convert=float,
              error=InputError, key_name="LAYER_GLOB"):
        """A rule from ``'GLOB=VALUE'`` as given to ``option``."""
        pattern, sep, value = str(text).rpartition("=")
        if not sep or not pattern.strip():
            raise error(f"{option} {text!r}: expected {key_name}={value_name}, e.g. {example!r}")
        try:
            return cls(pattern.strip(), convert(value), option)
        except ValueError:
            kind = "a whole number" if convert is int else "a number"
            raise error(f"{option} {text!r}: {value!r} is not {kind}") from None


@dataclass(frozen=True)
class GlobRules:
    """Rules in order; ``source`` names them in messages ("rule", "--layers")
    where a rule does not say where it was given; ``error`` is the
    InputError subclass raised."""

    rules: tuple = ()
    source: str = "rule"
    error: type = InputError

    def __post_init__(self):
        object.__setattr__(self, "rules", tuple(r if isinstance(r, Rule) else Rule(*r) for r in self.rules))

    @classmethod
    def parse(cls, texts, option, value_name="VALUE", example="conv1=0.3", convert=float, error=InputError):
        return cls(tuple(Rule.parse(t, option, value_name, example, convert, error) for t in texts), option, error)

    def check(self, names, what, known="known"):
        """Raise unless every rule matches one of ``names``, which are ``what``
        (e.g. "prunable layer") and listed after ``known`` in the message."""
        for rule in self.rules:
            if not any(rule.matches(name) for name in names):
                raise self.error(f"{rule.where or self.source} {rule.pattern!r} matches no {what} "
                                 f"({known}: {', '.join(names) or 'none'})")

    def resolve(self, names, what, default=None, known="known"):
        """{name: value of the last rule matching it, else ``default``} over
        ``names`` (checked first), leaving out None values."""
        names = list(names)
        self.check(names, what, known)
        values = {name: next((r.value for r in reversed(self.rules) if r.matches(name)), default) for name in names}
        return {name: value for name, value in values.items() if value is not None}

    def select(self, names, what, known="known"):
        """The ``names`` some rule matches, in their order (checked first)."""
        names = list(names)
        self.check(names, what, known)
        return [name for name in names if any(rule.matches(name) for rule in self.rules)]
