"""What every command-line tool shares: --version, one style of choices, readable warnings.

Warnings raised while a command runs are printed as one line, ``lpmn-train: warning: ...``
(Python's default shows the source file, line and code line), with the Python argument a
message names replaced by the command's flag (``strict=True`` -> ``--strict``).
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from . import __version__

# Python arguments that warnings name, and the flag that sets each on the command line.
FLAG_OF_ARGUMENT = {"strict=True": "--strict"}
_TUPLE_OF_NAMES = re.compile(r"\((\s*'[^']*'\s*(?:,\s*'[^']*'\s*)*),?\)")


def version_text(prog: str) -> str:
    """``prog 0.1.0 (torch 2.13.0, Python 3.11.9)``; the torch version from the installed metadata."""
    from importlib import metadata

    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    python = ".".join(map(str, sys.version_info[:3]))
    return f"{prog} {__version__} (torch {torch_version}, Python {python})"


def add_version(parser: argparse.ArgumentParser) -> None:
    """``--version``: print the package version and exit."""
    parser.add_argument("--version", action="version", version=version_text(parser.prog),
                        help="print the lpmn_fast version and exit")


def braced(text: str) -> str:
    """Choices written as a Python tuple, ``one of ('a', 'b')``, in argparse's own style: ``{a,b}``."""
    return _TUPLE_OF_NAMES.sub(lambda m: "{" + ",".join(re.findall(r"'([^']*)'", m.group(1))) + "}", text)


def flag_names(text: str) -> str:
    """``text`` with the Python arguments it names replaced by their command-line flags."""
    for argument, flag in FLAG_OF_ARGUMENT.items():
        text = text.replace(f"pass {argument}", f"pass {flag}").replace(argument, flag)
    return text


def one_line(message, category) -> str:
    """A warning as one line: its message (flags for Python arguments), the category named for a
    non-generic one."""
    kind = "" if category in (UserWarning, Warning) else f" ({category.__name__})"
    return f"warning{kind}: {' '.join(flag_names(str(message)).split())}"


@contextmanager
def readable_warnings(prog: str) -> Iterator[None]:
    """During the block, warnings are shown as ``prog: warning: <message>``, one line, without the
    source file and line; flags instead of Python arguments. Only the formatting is replaced
    (``warnings.formatwarning``), so whatever shows or records warnings (train.log, pytest) still
    gets them."""

    def format_warning(message, category, filename, lineno, line=None):
        return f"{prog}: {one_line(message, category)}\n"

    previous = warnings.formatwarning
    warnings.formatwarning = format_warning
    try:
        yield
    finally:
        if warnings.formatwarning is format_warning:
            warnings.formatwarning = previous


def group_flags(parser: argparse.ArgumentParser, sections: Iterable[tuple[str, str]]) -> None:
    """Move the parser's flags into argument groups, in order: ``sections`` lists (first flag's
    dest, group title); each group takes the flags from its first one up to the next section's.
    Flags added before the first section stay where they are; a new flag lands in the group of
    the flag defined before it."""
    sections = list(sections)
    actions = [a for a in parser._actions if a.option_strings and not isinstance(a, (
        argparse._HelpAction, argparse._VersionAction))]
    starts = {dest: title for dest, title in sections}
    group = None
    for action in actions:
        if action.dest in starts:
            group = parser.add_argument_group(starts[action.dest])
        if group is None:
            continue
        for container in parser._action_groups:
            if action in container._group_actions and container is not group:
                container._group_actions.remove(action)
        group._group_actions.append(action)


__all__ = ["add_version", "braced", "flag_names", "group_flags", "one_line", "readable_warnings", "version_text"]
