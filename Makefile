# The two commands: `make book` (build the book) and `make test` (run every check),
# and `make lab` (JupyterLab on the notebooks, to run them yourself). All create .venv
# and install what is missing; nothing else needs to be set up.

VENV    ?= .venv
PY      := $(VENV)/bin/python
# jupyter-book, with the chapters executed side by side, one per core (book/build.py)
JB      := $(PY) book/build.py
# torch is installed only where the environment lacks it, and pinned: an unpinned
# torch can pull a multi-GB CUDA build. Override, e.g. TORCH="torch --index-url URL".
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.installed

# experiment results (metrics, small weight arrays; never pickle) are cached here
export BNUTILS_RESULTS ?= $(CURDIR)/_cache/results

# Nobody watches a build or a test run: bnutils.progress prints one summary line per
# loop there; unset (make lab, Colab, a terminal), it draws live bars.
SUMMARY := BNBOOK_PROGRESS=summary

.PHONY: book test lab bench mutate install clean results replay

# The full book from the results store (results/): nothing trains. A run the store lacks
# stops the build, naming the run and the `make results` command that computes it.
book: $(STAMP) _build/.book-inputs
	rm -rf _build/html
	$(FORBID) BNBOOK_QUICK=0 $(SUMMARY) $(JB) build . --all
	@echo "The book: $(CURDIR)/_build/html/index.html"

# Every check: lint; the unit tests and every notebook under nbval in quick mode (which
# trains, briefly); the full book built strictly from the store with training forbidden,
# every stored run's first steps replayed and one whole run per chapter (drawn by the
# commit), then the store's bookkeeping checked (tests/test_store_build.py) and, in
# headless Chromium, every page of that build and JupyterLab opening every learner
# notebook and running two (tests/browser).
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check notebooks
	BNBOOK_QUICK=1 OMP_NUM_THREADS=1 $(SUMMARY) $(PY) -m pytest -n 2 --dist loadfile \
		tests notebooks --nbval-lax --nbval-current-env --ignore=tests/browser \
		--ignore=tests/test_store_build.py --ignore=tests/test_outputs.py
	rm -rf _build/html _build/jupyter_execute _build/.jupyter_cache _build/store
	mkdir -p _build/store/logs
	$(REPLAY) $(FORBID) BNBOOK_QUICK=0 $(SUMMARY) $(JB) build . -W -n --keep-going --all
	touch _build/.book-inputs
	$(REPLAY) BNBOOK_STORE_LOGS=$(CURDIR)/_build/store/logs $(PY) -m pytest \
		tests/test_store_build.py tests/test_outputs.py
	BNBOOK_HTML=_build/html $(PY) -m pytest -n 2 --dist loadfile tests/browser

# The results store (results/, bnutils/store.py). `make results` executes the chapter
# notebooks in full mode and computes, one worker per core, the runs the store lacks or
# that no longer match the code; `make results CHAPTER=06` does one chapter. Its plan,
# live progress and re-keying: bnutils/results.py. `make book` and `make test` read the
# store with training forbidden (FORBID); CI replays it with pinned numerics (REPLAY;
# bnutils.store.NUMERICS, kept equal by a test).
CHAPTER  ?=
NUMERICS := ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
FORBID   := BNBOOK_TRAIN=forbid
REPLAY   := $(NUMERICS) BNBOOK_REPLAY=$$(git rev-parse HEAD 2>/dev/null || echo local) \
	BNBOOK_READS=$(CURDIR)/_build/store/logs/reads.jsonl \
	BNBOOK_REPLAY_LOG=$(CURDIR)/_build/store/logs/replays.jsonl

results: $(STAMP)
	$(PY) -m bnutils.results $(if $(CHAPTER),--chapter $(CHAPTER))

# Every stored run (of CHAPTER) recomputed in full and compared: hours; CI replays one
# whole run per chapter per commit, among the shorter ones.
replay: $(STAMP)
	$(PY) -m bnutils.results --replay $(if $(CHAPTER),--chapter $(CHAPTER))

# The executed notebooks that a rebuild reuses (_build/.jupyter_cache) are keyed by
# their cells only: a new store or new bnutils code executes them again.
_build/.book-inputs: $(wildcard results/*) $(wildcard bnutils/*.py bnutils/*/*.py)
	rm -rf _build/.jupyter_cache
	mkdir -p _build && touch $@

# The learner's path: JupyterLab on lab/, the learner's copies of the learner notebooks
# that `make book` writes into _build/html/learner (the chapters as plain notebooks:
# the book's numbers in the text, solutions folded). Without them, the book is built
# first. A copy the learner changed is never replaced without asking (book/_ext/learner.py
# sync). The project's kernel (.venv, where bnutils is installed), live progress bars
# (ipywidgets). Options go through LAB_ARGS, e.g. make lab LAB_ARGS="--no-browser --port
# 8899"; as root (a container) JupyterLab needs --allow-root.
LAB_ARGS ?=
LEARNER := _build/html/learner
lab: $(STAMP)
	$(PY) -c "import jupyterlab, ipywidgets" 2>/dev/null || $(PY) -m pip install -q -r requirements.txt
	@test -f $(LEARNER)/00_setup.ipynb || { echo "No learner notebooks in $(LEARNER) yet:" \
		"building the book first (make book, about 4 minutes on 2 cores, once)."; $(MAKE) book; }
	$(PY) book/_ext/learner.py sync $(LEARNER) lab
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS) lab/

# Speed and memory goals: each script prints ratios measured in one run; the report
# (with the machine it ran on) is what the book's benchmarks appendix shows.
bench: $(STAMP)
	$(PY) benchmarks/run_all.py --out benchmarks/results/report.md

# Mutation testing (tests/mutation/mutate.py): do the tests of bn, layers, cache, inference,
# norms and batched notice small changes to their code? Minutes of CPU, so not part of
# `make test`; it needs mutmut (requirements-mutate.txt) and writes
# benchmarks/results/mutation.md, which the benchmarks appendix shows. One module again
# (its row updated, the others kept while current): make mutate MUTATE_ARGS="--module bn".
mutate: $(STAMP)
	$(PY) -m pip install -q -r requirements-mutate.txt
	$(PY) tests/mutation/mutate.py $(MUTATE_ARGS)

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

clean:
	rm -rf _build
