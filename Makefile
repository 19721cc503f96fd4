PYTHON ?= python3

.PHONY: demo test bench bench-quick bench-readme

demo:            ## the main job on built-in defaults: echo server + self-check
	$(PYTHON) -m netreactor

test:            ## install the test extras and run the suite (what CI runs)
	$(PYTHON) -m pip install -q -e '.[test]' && $(PYTHON) -m pytest

bench:           ## the benchmark suite (echo, UDP, RESP, HTTP vs uvloop, asyncio, gevent, Twisted, redis-server, uvicorn), < 10 min
	$(PYTHON) -m pip install -q -e '.[bench]' && $(PYTHON) bench/suite.py

bench-quick:     ## the same, short windows and one round, < 1 min
	$(PYTHON) -m pip install -q -e '.[bench]' && $(PYTHON) bench/suite.py --quick

bench-readme:    ## full suite, then write its table and machine into README.md
	$(PYTHON) -m pip install -q -e '.[bench]' && $(PYTHON) bench/suite.py --write-readme
