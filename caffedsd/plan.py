"""Per-layer pruning plans: which layers to prune, how hard, by which criterion.

A SparsityPlan is a small frozen value, validated when built, with dict and
YAML round trips. The CLI's ``--sparsity`` / ``--rule`` and plan files all
become one. Plan file (YAML)::

    criterion: keepmax        # optional, default keepmax
    sparsity: 0.5             # optional: every prunable layer not ruled below
    layers:                   # optional: name or glob -> amount, in order
      conv1: 0.3
      "fire*/expand3x3": 0.7

A plan written by ``caffedsd plan --verify`` also carries ``verified:``,
what was measured on the whole pruned net (metric, measured_drop, ...).

For keepmax and random the amount is a sparsity in [0, 1); for std it is the
multiplier s of |w| < s * std(w). When several rules match a layer the last
one wins, so broad rules go first and exceptions after them. Each rule must
match at least one prunable layer.
"""
import fnmatch
from dataclasses import dataclass, field

from .masks import get_criterion
from .yamlio import dump_yaml, parse_yaml

_KEYS = {"criterion", "sparsity", "layers", "verified"}


class PlanError(ValueError):
    """A plan that is not valid; the message names the value at fault."""


@dataclass(frozen=True)
class Rule:
    pattern: str
    amount: float

    @classmethod
    def parse(cls, text):
        """A rule from ``'GLOB=AMOUNT'`` as given to --rule."""
        pattern, sep, value = text.rpartition("=")
        if not sep or not pattern.strip():
            raise PlanError(f"--rule {text!r}: expected LAYER_GLOB=AMOUNT, e.g. 'conv1=0.3'")
        try:
            amount = float(value)
        except ValueError:
            raise PlanError(f"--rule {text!r}: {value!r} is not a number") from None
        return cls(pattern.strip(), amount)

    def matches(self, layer_name):
        return fnmatch.fnmatchcase(layer_name, self.pattern)


@dataclass(frozen=True)
class SparsityPlan:
    criterion: str = "keepmax"
    sparsity: float = None  # the default for layers no rule matches; None: leave them
    rules: tuple = field(default_factory=tuple)
    # What `plan --verify` measured on the whole pruned net (planner.py);
    # None for a plan nobody measured.
    verified: dict = None

    def __post_init__(self):
        object.__setattr__(self, "rules", tuple(self.rules))
        if self.verified is not None:
            drop = self.verified.get("measured_drop") if isinstance(self.verified, dict) else None
            if isinstance(drop, bool) or not isinstance(drop, (int, float)):
                raise PlanError("verified: expected a mapping with a numeric measured_drop "
                                "(as `caffedsd plan --verify` writes it)")
        try:
            crit = get_criterion(self.criterion)
        except ValueError as exc:
            raise PlanError(str(exc)) from None
        if self.sparsity is None and not self.rules:
            raise PlanError("plan prunes nothing: give a sparsity or at least one layer rule")
        checks = [] if self.sparsity is None else [("sparsity", self.sparsity)]
        checks += [(f"rule {r.pattern!r}", r.amount) for r in self.rules]
        for what, value in checks:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PlanError(f"{what} {value!r}: not a number")
            problem = crit.check(value)
            if problem:
                raise PlanError(f"{what} {value!r}: {problem} for criterion {self.criterion}")

    def amounts(self, layer_names):
        """{layer: amount} for the given prunable layers, in their order.

        Raises PlanError when a rule matches none of them."""
        names = list(layer_names)
        for rule in self.rules:
            if not any(rule.matches(n) for n in names):
                raise PlanError(f"rule {rule.pattern!r} matches no prunable layer "
                                f"(prunable: {', '.join(names) or 'none'})")
        result = {}
        for name in names:
            amount = self.sparsity
            for rule in self.rules:
                if rule.matches(name):
                    amount = rule.amount
            if amount is not None:
                result[name] = float(amount)
        return result

    # -- round trips --------------------------------------------------------
    def to_dict(self):
        out = {"criterion": self.criterion}
        if self.sparsity is not None:
            out["sparsity"] = self.sparsity
        if self.rules:
            out["layers"] = {r.pattern: r.amount for r in self.rules}
        if self.verified is not None:
            out["verified"] = dict(self.verified)
        return out

    @classmethod
    def from_dict(cls, data, where="plan"):
        if not isinstance(data, dict):
            raise PlanError(f"{where}: expected a mapping with keys {sorted(_KEYS)}")
        unknown = set(data) - _KEYS
        if unknown:
            raise PlanError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                            f"(known: {', '.join(sorted(_KEYS))})")
        layers = data.get("layers") or {}
        if not isinstance(layers, dict):
            raise PlanError(f"{where}: 'layers' must map layer names or globs to amounts")
        try:
            return cls(criterion=data.get("criterion", "keepmax"), sparsity=data.get("sparsity"),
                       rules=tuple(Rule(str(k), v) for k, v in layers.items()), verified=data.get("verified"))
        except PlanError as exc:
            raise PlanError(f"{where}: {exc}") from None

    def to_yaml(self):
        return dump_yaml(self.to_dict())

    @classmethod
    def from_yaml(cls, text, where="plan"):
        return cls.from_dict(parse_yaml(text, where, PlanError), where=where)




def load_plan(path):
    """A SparsityPlan from a YAML file."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise PlanError(f"{path}: no such plan file")
    return SparsityPlan.from_yaml(path.read_bytes(), where=str(path))


def plan_from_options(sparsity=None, rules=(), plan_file=None, criterion=None):
    """The plan the CLI's --plan, --sparsity, --rule and --criterion describe.

    A plan file is the base; --sparsity replaces its default, --rule entries
    come after its rules (so they win), --criterion replaces its criterion."""
    base = load_plan(plan_file) if plan_file else None
    parsed = tuple(Rule.parse(text) for text in rules)
    if base is None and sparsity is None and not parsed:
        raise PlanError("nothing to prune: give --sparsity, --rule or --plan")
    return SparsityPlan(
        criterion=criterion or (base.criterion if base else "keepmax"),
        sparsity=sparsity if sparsity is not None else (base.sparsity if base else None),
        rules=(base.rules if base else ()) + parsed)
