"""YAML for hand-written files (plans, recipes): safe loading, and errors
that name the file, line and column."""
import yaml


def parse_yaml(text, where, error):
    """yaml.safe_load(text) (str, or bytes as read from a file: bytes that
    are not UTF-8 are a YAML error too); a syntax error raises ``error``
    naming where, in one line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise error(f"{where}{at}: not valid YAML ({problem})") from None


def dump_yaml(data):
    return yaml.safe_dump(data, sort_keys=False)
