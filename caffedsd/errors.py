"""caffedsd's exception types.

Library code raises these; the CLI turns each into a one-line message and an
exit status in one place (cli.main). Messages name the file, layer or value at
fault and say what is wrong.
"""


class CaffeDsdError(Exception):
    """Base of all errors meant for the user. ``exit_code`` is the CLI's status."""

    exit_code = 2


class InputError(CaffeDsdError):
    """A file, layer or value given by the user is wrong."""


class CaffeUnavailable(CaffeDsdError):
    """pycaffe or the caffe binary cannot be found or used."""


class CheckFailed(CaffeDsdError):
    """A verification found something that does not hold (exit status 1)."""

    exit_code = 1
