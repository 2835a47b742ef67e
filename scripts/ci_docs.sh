#!/usr/bin/env bash
# The documentation site in CI: install the `docs` extra (mkdocs, mkdocs-material, mkdocstrings)
# into the existing environment (default .venv, or $LPMN_VENV; made by `bash scripts/setup.sh dev`)
# and build it with `mkdocs build --strict`: a broken link, anchor, nav entry or API reference
# fails the build. The site goes to site/ (git-ignored; $DOCS_SITE_DIR to put it elsewhere).
# The examples in the pages are run by the test suite (tests/test_docs_examples.py), not here.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${LPMN_VENV:-.venv}"
export NO_MKDOCS_2_WARNING=1  # Material's end-of-life banner, not a build problem
if [ ! -x "$venv/bin/python" ]; then
  echo "ci_docs: no $venv; run 'bash scripts/setup.sh dev' first" >&2
  exit 2
fi
# The locked versions (requirements/lock.txt) where the environment is the locked one.
lock=(); [ "$venv" = .venv ] && lock=(-c requirements/lock.txt)
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${lock[@]}" -e ".[docs]"
"$venv/bin/python" -m mkdocs build --strict --site-dir "${DOCS_SITE_DIR:-site}"
