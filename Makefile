PYTHON ?= python3

.PHONY: demo test bench bench-quick

demo:            ## the main job on built-in defaults: echo server + self-check
	$(PYTHON) -m netreactor

test:            ## install the test extras and run the suite (what CI runs)
	$(PYTHON) -m pip install -q -e '.[test]' && $(PYTHON) -m pytest

bench:           ## echo benchmark against uvloop and asyncio, same run
	$(PYTHON) -m pip install -q -e '.[bench]' && $(PYTHON) bench/echo.py

bench-quick:
	$(PYTHON) -m pip install -q -e '.[bench]' && $(PYTHON) bench/echo.py --quick
