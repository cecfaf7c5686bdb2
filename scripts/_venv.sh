# Sourced by the scripts here: create .venv if missing and install the project with the given extras.
setup_venv() {
  local py=${PYTHON:-python3}
  if [ ! -x .venv/bin/python ]; then "$py" -m venv .venv; fi
  .venv/bin/python -m pip install -q --upgrade pip "setuptools>=77"
  .venv/bin/python -m pip install -q -e ".[$1]"
}
