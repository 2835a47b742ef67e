"""How the corpus loaders report broken parts of a corpus: collect every problem, then warn or raise."""

from __future__ import annotations

import warnings


class CorpusError(ValueError):
    """A corpus that cannot be loaded as asked (strict mode, or a problem no loader can work around)."""


class CorpusWarning(UserWarning):
    """Parts of a corpus were skipped; the loader's ``warnings`` list names each one."""


def settle(problems: list[str], *, strict: bool, source: str, shown: int = 10) -> None:
    """Raise CorpusError listing the problems (strict) or emit one CorpusWarning summarising them."""
    if not problems:
        return
    listed = "\n  ".join(problems[:shown])
    more = f"\n  ... and {len(problems) - shown} more" if len(problems) > shown else ""
    message = f"{len(problems)} problem(s) in {source}:\n  {listed}{more}"
    if strict:
        raise CorpusError(message)
    warnings.warn(message + "\n(skipped; pass strict=True to make these errors)", CorpusWarning, stacklevel=3)
