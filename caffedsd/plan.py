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
what was measured on the whole pruned net (metric, measured_drop, ...),
with the weights it was measured on and the sha256 of the plan measured
(``plan_sha256``, of ``SparsityPlan.digest``): a plan edited since then is
refused while it keeps the record.
A plan of the random criterion that ``caffedsd plan`` writes carries the
scan's ``seed``: the masks it was measured with are those of that seed.

For keepmax and random the amount is a sparsity in [0, 1); for std it is the
multiplier s of |w| < s * std(w). When several rules match a layer the last
one wins, so broad rules go first and exceptions after them. Each rule must
match at least one prunable layer.
"""
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from .atomic import read_input
from .errors import InputError, PlanError
from .globrules import GlobRules, Rule
from .masks import get_criterion
from .values import is_finite_number, is_real, is_whole, plain
from .yamlio import check_keys, dump_yaml, parse_yaml

PLAN_KEYS = frozenset({"criterion", "sparsity", "layers", "verified", "seed"})


@dataclass(frozen=True)
class SparsityPlan:
    criterion: str = "keepmax"
    sparsity: float = None  # the default for layers no rule matches; None: leave them
    rules: tuple = field(default_factory=tuple)
    # What `plan --verify` measured on the whole pruned net (plan_from_scan.py);
    # None for a plan nobody measured. Kept as a copy of its own, which no
    # hash takes: plans hash by the rest.
    verified: dict = field(default=None, hash=False)
    # The random criterion's seed; None: the pruning command's (--seed, a recipe's seed).
    seed: int = None
    where: str = field(default=None, compare=False)  # the plan file, for messages

    def __post_init__(self):
        # A glob given again (--rule after a plan's own) shadows its earlier
        # rule wholly: only the last is kept, so that to_dict, a mapping, and
        # the plan a masks file records prune as this one does.
        at = f"{self.where}: " if self.where else ""
        rules = [rule if isinstance(rule, Rule) else Rule(*rule) for rule in self.rules]
        for rule in rules:
            if not isinstance(rule.pattern, str) or not rule.pattern:
                raise PlanError(f"{at}rule {rule.pattern!r}: the layer name or glob must be a non-empty string")
        last = {rule.pattern: n for n, rule in enumerate(rules)}  # one pass: plans of 100k rules are read
        object.__setattr__(self, "rules", tuple(rule for n, rule in enumerate(rules) if last[rule.pattern] == n))
        if self.seed is not None and (not is_whole(self.seed) or self.seed < 0):
            raise PlanError(f"{at}seed {self.seed!r}: must be a whole number >= 0")
        try:
            crit = get_criterion(self.criterion)
        except InputError as exc:
            raise PlanError(f"{at}{exc}") from None
        if self.sparsity is None and not self.rules:
            raise PlanError(f"{at}plan prunes nothing: give a sparsity or at least one layer rule")
        checks = [] if self.sparsity is None else [("sparsity", self.sparsity)]
        checks += [(f"rule {r.pattern!r}", r.value) for r in self.rules]
        for what, value in checks:
            if not is_real(value):
                raise PlanError(f"{at}{what} {value!r}: not a number")
            problem = crit.check(value)
            if problem:
                raise PlanError(f"{at}{what} {value!r}: {problem} for criterion {self.criterion}")
        # numpy's numbers as Python's, which YAML writes; the verified record
        # as a copy, which its caller's later changes do not reach.
        object.__setattr__(self, "rules", tuple(replace(rule, value=plain(rule.value)) for rule in self.rules))
        for name in ("sparsity", "seed"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, plain(getattr(self, name)))
        if self.verified is not None:
            self._check_verified(at)
            object.__setattr__(self, "verified",
                               {key: plain(value) if is_real(value) else value for key, value in self.verified.items()})

    def _check_verified(self, at):
        record = self.verified
        drop = record.get("measured_drop") if isinstance(record, Mapping) else None
        if not is_finite_number(drop):
            raise PlanError(f"{at}verified: expected a mapping with a finite measured_drop "
                            "(as `caffedsd plan --verify` writes it)")
        for key, value in record.items():
            # It travels into the masks file as JSON: YAML's dates, sets and binaries do not.
            if not (isinstance(value, (str, bool, type(None))) or is_finite_number(value)):
                raise PlanError(f"{at}verified: {key} {value!r}: expected a number, a string or null "
                                "(as `caffedsd plan --verify` writes it)")
        if "plan_sha256" in record and record["plan_sha256"] != self.digest():
            raise PlanError(f"{at}verified: measured another plan than this one (its criterion, sparsity, rules "
                            "or seed changed since `caffedsd plan --verify`); verify it again, or remove the "
                            "verified: record")

    def digest(self):
        """sha256 of what decides its masks: criterion, default sparsity,
        rules in order (the last match wins), and a random plan's seed."""
        key = [self.criterion, None if self.sparsity is None else float(self.sparsity),
               [[rule.pattern, float(rule.value)] for rule in self.rules],
               self.seed_for(0) if get_criterion(self.criterion).seeded else None]
        return hashlib.sha256(json.dumps(key).encode()).hexdigest()

    def seed_for(self, default):
        """The seed its random masks are drawn with: its own; a verified
        plan's without one 0, as digest counts it (it was verified so), not
        the pruning command's ``default`` (a recipe's seed); else that."""
        if self.seed is not None:
            return self.seed
        return 0 if self.verified is not None else default

    def prunes_as(self, other):
        """True when it gives the masks ``other`` gives (seeds matter to random only)."""
        return self.digest() == other.digest()

    def amounts(self, layer_names, net=None):
        """{layer: amount} for the given prunable layers (of ``net``, named
        in messages), in their order.

        Raises PlanError when a rule matches none of them."""
        rules = GlobRules(self.rules, "rule", PlanError)
        what = "prunable layer" + (f" of {net}" if net else "")
        amounts = rules.resolve(layer_names, what, default=self.sparsity, known="prunable")
        return {name: float(amount) for name, amount in amounts.items()}

    # -- round trips --------------------------------------------------------
    def to_dict(self):
        out = {"criterion": self.criterion}
        if self.sparsity is not None:
            out["sparsity"] = self.sparsity
        if self.rules:
            out["layers"] = {r.pattern: r.value for r in self.rules}
        if self.seed is not None:
            out["seed"] = self.seed
        if self.verified is not None:
            out["verified"] = dict(self.verified)
        return out

    @classmethod
    def from_dict(cls, data, where="plan"):
        check_keys(data, PLAN_KEYS, where, PlanError)
        layers = data.get("layers", {})  # [], "", false or null: a mistake, not "no rules"
        if not isinstance(layers, dict):
            raise PlanError(f"{where}: 'layers' must map layer names or globs to amounts")
        return cls(criterion=data.get("criterion", "keepmax"), sparsity=data.get("sparsity"),
                   rules=tuple(Rule(str(k), v, f"{where}: rule") for k, v in layers.items()), verified=data.get("verified"),
                   seed=data.get("seed"), where=where)

    def to_yaml(self):
        return dump_yaml(self.to_dict())

    @classmethod
    def from_yaml(cls, text, where="plan"):
        return cls.from_dict(parse_yaml(text, where, PlanError), where=where)


def load_plan(path):
    """A SparsityPlan from a YAML file."""
    text = read_input(path, "plan file", PlanError)
    return SparsityPlan.from_yaml(text, where=str(path))


def plan_from_options(sparsity=None, rules=(), plan_file=None, criterion=None, seed=None):
    """The plan the CLI's --plan, --sparsity, --rule, --criterion and --seed
    describe.

    A plan file is the base; --sparsity replaces its default, --rule entries
    come after its rules (so they win), --criterion and --seed replace its
    own. The file's ``verified:`` record stays only while nothing changes what
    it prunes: the measured drop was measured for that plan, not another."""
    base = load_plan(plan_file) if plan_file else None
    parsed = GlobRules.parse(rules, "--rule", "AMOUNT", "conv1=0.3", error=PlanError).rules
    if base is None and sparsity is None and not parsed:
        raise PlanError("nothing to prune: give --sparsity, --rule or --plan")
    plan = SparsityPlan(
        criterion=criterion or (base.criterion if base else "keepmax"),
        sparsity=sparsity if sparsity is not None else (base.sparsity if base else None),
        rules=(base.rules if base else ()) + parsed,
        seed=seed if seed is not None else (base.seed if base else None))
    if base is not None and base.verified is not None and plan.prunes_as(base):
        plan = replace(plan, verified=base.verified)
    return plan
