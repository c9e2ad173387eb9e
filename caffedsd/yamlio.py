"""YAML for hand-written files (plans, recipes): safe loading, and errors
that name the file, line and column."""
import re

import yaml

# Plans and recipes are a few levels deep. PyYAML composes recursively, so a
# file of thousands of nested brackets ended in a RecursionError instead.
MAX_DEPTH = 100
# Aliases share one object, but whatever walks the result (a repr in a
# message, json.dumps of a recipe's fingerprint) walks every use: ten lines
# of aliases of aliases make billions of items.
MAX_EXPANDED = 100_000
# No whole number caffedsd takes (a seed, a count) comes near it.
MAX_INT_CHARACTERS = 1000


class _Refused(yaml.composer.ComposerError):
    """Well-formed YAML that caffedsd will not take."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load's loader, refusing a key given twice in one mapping, which
    YAML forbids and safe_load takes silently, the last one winning. Keys
    that a merge (<<) brings in are still overridden, as YAML means them."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._open = []  # anchors of the collections being composed
        self._sizes = {}  # id(node): its node count, aliases expanded
        self._composed = 0
        self._key = False

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            # A loop would make a list or dict that contains itself, on which
            # json.dumps and comparisons fail.
            if event.anchor in self._open:
                raise _Refused(None, None, f"alias *{event.anchor} lies inside the node &{event.anchor} "
                                           "that it names (a loop)", event.start_mark)
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise _Refused(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        self._depth += 1
        self._open.append(event.anchor)
        self._key = isinstance(parent, yaml.MappingNode) and index is None
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open.pop()
        self._composed += 1
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else ()
        size = self._sizes[id(node)] = 1 + sum(self._sizes[id(child)] for child in children)
        # Without aliases a node is never bigger than what was composed.
        if size > max(MAX_EXPANDED, self._composed):
            raise _Refused(None, None, f"aliases expand this node to {size} items "
                                       f"(at most {MAX_EXPANDED})", node.start_mark)
        return node

    def resolve(self, kind, value, implicit):
        tag = super().resolve(kind, value, implicit)
        if not self._key:
            return _yaml12_number(kind, value, implicit, tag)
        # Keys are names (layers, globs, fields): a layer 010, 1_000, 1:30 or
        # on is that text, not YAML 1.1's 8, 1000, 90 or True.
        if kind is yaml.ScalarNode and implicit[0] and tag != "tag:yaml.org,2002:merge":
            return "tag:yaml.org,2002:str"
        return tag

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = first.setdefault(key, key_node.start_mark)
                except TypeError:  # unhashable: the constructor says so
                    continue
                if seen is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice (first at line {seen.line + 1})", key_node.start_mark)
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node):
        value = self.construct_scalar(node)
        if len(value) > MAX_INT_CHARACTERS:
            # Python refuses to read (or, in hex, to print) such a number as decimal text.
            raise _Refused(None, None, f"a whole number of {len(value)} characters: too long to be one caffedsd "
                                       "takes", node.start_mark)
        try:
            if _DECIMAL12.fullmatch(value):  # YAML 1.1 read 010 as octal 8
                return int(value, 10)
            if value.startswith("0o"):
                return int(value[2:], 8)
            return super().construct_yaml_int(node)
        except ValueError:  # past Python's limit on the digits of an int read from text (4300)
            raise _Refused(None, None, f"a whole number of {len(value)} characters: too long to be one caffedsd "
                                       "takes", node.start_mark) from None


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _UniqueKeyLoader.construct_yaml_int)


# PyYAML reads YAML 1.1, where a float needs a point: 5e-1, 1e3 and 1.5e3
# are text there, and numbers in YAML 1.2 and to whoever writes them
# (`sparsity: 5e-1` was refused as "not a number"). A leading 0 made 010
# octal (8) and 08 text; YAML 1.2 reads both as decimal. They are read as
# YAML 1.2 reads them where they are values; keys are always text, since
# layer names are keys.
# YAML 1.1's other numbers, 1:30 (base 60, 90), 1_000 and 0b101, are text
# in YAML 1.2 (`iterations: 1:30` trained 90 iterations), and its 0o17 is a
# number there.
# YAML 1.2's floats that 1.1 reads as text: 5e-1 (no dot), and +.5, -.5 (a sign before a bare dot).
_FLOAT12 = re.compile(r"[-+]?(?:[0-9]+|\.[0-9]+|[0-9]+\.[0-9]*)[eE][-+]?[0-9]+|[-+]\.[0-9]+")
_DECIMAL12 = re.compile(r"[-+]?[0-9]+")
_INT12 = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_ANY_FLOAT12 = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                          r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)")
_INT, _FLOAT, _STR = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:str"


def _yaml12_number(kind, value, implicit, tag):
    if not (kind is yaml.ScalarNode and implicit[0]):
        return tag
    if tag == _STR:
        if _FLOAT12.fullmatch(value):
            return _FLOAT
        if _INT12.fullmatch(value):
            return _INT
    elif tag == _INT and not _INT12.fullmatch(value) or tag == _FLOAT and not _ANY_FLOAT12.fullmatch(value):
        return _STR
    return tag


class _Dumper(yaml.SafeDumper):
    """safe_dump's dumper, quoting text that parse_yaml would read as a number
    (a weights file named 1e3), so that what it writes reads back the same."""

    def resolve(self, kind, value, implicit):
        return _yaml12_number(kind, value, implicit, super().resolve(kind, value, implicit))


def parse_yaml(text, where, error):
    """yaml.safe_load(text) (str, or bytes as read from a file: bytes that
    are not UTF-8 are a YAML error too), with a key given twice in a mapping
    an error and a value 5e-1 a number, as in YAML 1.2; nesting deeper than
    MAX_DEPTH, an alias inside what it names and aliases expanding to more
    than MAX_EXPANDED nodes are refused. Errors raise ``error`` naming where,
    in one line."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        if isinstance(exc, _Refused):
            raise error(f"{where}{at}: {problem}") from None
        raise error(f"{where}{at}: not valid YAML ({problem})") from None


def check_keys(data, keys, where, error):
    """Raise ``error`` unless ``data`` is a mapping with no keys but ``keys``."""
    if not isinstance(data, dict):
        raise error(f"{where}: expected a mapping with keys {', '.join(sorted(keys))}")
    unknown = set(data) - set(keys)
    if unknown:
        raise error(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                    f"(known: {', '.join(sorted(keys))})")


def dump_yaml(data):
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)
