# Two entry points (see README.md); both create/reuse the project environment first.
#   make demo   set up, then run the main job: LAD on the proving ground (about 15 min on 2 CPU cores)
#   make test   set up, then run the test suite
PY := $(or $(LGDKD_VENV),.venv)/bin/python

.PHONY: setup demo test lint

setup:
	bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py $(DEMO_ARGS)

test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)

lint: setup
	$(PY) -m pip install -q black==24.10.0 isort flake8
	$(PY) -m black --check -l 100 lgdkd tools tests train_net.py
	$(PY) -m flake8 lgdkd tools tests train_net.py
