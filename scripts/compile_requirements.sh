#!/usr/bin/env sh
# Writes requirements.txt (what Heroku's Python buildpack installs) from pyproject.toml: every
# dependency pinned with ==, for any platform, then "." (the package itself, resolved by pip from the
# app directory). uv is a development tool here: `pip install uv`. tests/test_requirements.py fails
# when the two files disagree; run this after changing pyproject.toml's dependencies.
set -eu
cd "$(dirname "$0")/.."
{
  echo "# Generated from pyproject.toml by scripts/compile_requirements.sh; do not edit by hand."
  uv pip compile pyproject.toml --universal --python-version 3.13 --no-annotate --no-header
  echo "."
} > requirements.txt.new
mv requirements.txt.new requirements.txt
