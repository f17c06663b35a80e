# pycaffe_dist tasks. `make` lists them.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed
EXTRAS  := lmdb,test,mpi

.PHONY: help demo test lint proto bench fuzz clean

help:
	@echo "make demo   train LeNet on Fashion-MNIST and print the test accuracy"
	@echo "make test   run the whole test suite"
	@echo "make lint   ruff over the package, tests and tools"
	@echo "make proto  regenerate caffe.proto and caffe_pb2.py from the schema tables"
	@echo "make fuzz   fuzz the readers with 100,000 inputs each (FUZZ_EXAMPLES=n to change)"
	@echo "make bench  run the benchmarks (installs torch==2.13.0 as the baseline)"

$(STAMP): setup.py
	command -v dot >/dev/null || { SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq graphviz >/dev/null \
	  || echo "graphviz did not install: draw_net can write .dot only; its picture tests skip"; }
	command -v g++ >/dev/null || { SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq g++ >/dev/null \
	  || echo "g++ did not install: the host builds of the GPU kernel sources skip"; }
	test -d /usr/share/datasets/fashion-mnist || { SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null \
	  || echo "dataset-fashion-mnist did not install: the accuracy tests on Fashion-MNIST skip"; }
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	bash tools/demo.sh

test: $(STAMP)
	$(PY) -m pytest -q tests; status=$$?; if [ $$status -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$status

lint: $(STAMP)
	.venv/bin/ruff check pycaffe_dist tests tools bench examples

proto: $(STAMP)
	$(PY) tools/gen_proto.py
	cd pycaffe_dist/proto && ../../$(PY) -m grpc_tools.protoc -I. --python_out=. caffe.proto

fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q tests/reliability/test_fuzz.py --durations=0

bench: $(STAMP)
	$(PIP) install -q "torch==2.13.0"
	$(PY) bench/bench_step.py

clean:
	rm -rf .venv build *.egg-info .pytest_cache
