"""Checks of plain values read from YAML and JSON files (plans, recipes,
run-folder records), where a number may be any Python int."""
import math


def is_finite_number(value):
    """An int or float (not a bool) that is finite as a float: every use
    takes it as one, and an int past float's range (10**400 written in a
    YAML file) made math.isfinite and float() raise OverflowError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
