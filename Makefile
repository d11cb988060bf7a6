# Two entry points (README): `make study` and `make test`. Both create .venv when missing.
PY      := .venv/bin/python
VENV_OK := .venv/.installed
export PYTHONPATH := $(CURDIR)
export MPLBACKEND := Agg
# Real, openly licensed samples (PTB-XL, MIMIC-IV demo, …) for the real-data checks: set ECG_STUDY_SAMPLES to
# their folder; the default is the samples folder beside this checkout in the workspace that built it.
# Without them the real-data tests skip and the realism stage reports that it found no PTB-XL sample.
export ECG_STUDY_SAMPLES ?= $(abspath $(CURDIR)/..)/shared

.PHONY: study test sync-check venv clean lock

$(VENV_OK): pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	# then every other package at the exact version of requirements.lock, and this package itself
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(VENV_OK)

venv: $(VENV_OK)

# glibc returns freed blocks ≥ 32 MB to the OS by default; S4 activations at 10 s inputs are
# that large, and re-faulting them halves training speed (benchmarks/README.md, Encoders).
study: export MALLOC_MMAP_THRESHOLD_ := 4294967296
study: export MALLOC_TRIM_THRESHOLD_ := 68719476736
study: $(VENV_OK)
	.venv/bin/ecg-study run --plan quick

sync-check: $(VENV_OK)
	bash .ci/sync_check

test: sync-check
	$(PY) -m pytest -q -n 2 tests

clean:
	rm -rf reports/quick data/synthetic data/processed

# after changing the dependencies in pyproject.toml: resolve them afresh and write the exact versions
lock:
	rm -rf .venv-lock && python3 -m venv .venv-lock && .venv-lock/bin/pip install -q torch==2.13.0 && .venv-lock/bin/pip install -q '.[dev]'
	(head -2 requirements.lock; .venv-lock/bin/pip freeze --exclude-editable | grep -v -e '^torch==' -e '^ecg.study') > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .venv-lock
