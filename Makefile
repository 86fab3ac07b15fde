# The two commands: `make demo` runs the pipeline, `make test` runs the tests.
# Both install what they need first (deploy/bootstrap.sh, quick when already done).

# The shared virtualenv does not contain the project, so this checkout goes on PYTHONPATH.
PYTHON := PYTHONPATH=$(CURDIR) .venv/bin/python
ONML := $(PYTHON) -m clients.cli
PYTEST := $(PYTHON) -m pytest

.PHONY: deps demo test unit integration app stack-up stack-down clean

deps:
	@bash deploy/bootstrap.sh

demo: deps
	$(ONML) demo

test: deps
	$(PYTEST) -q -ra tests

unit: deps
	$(PYTEST) -q -ra tests/unit

integration: deps
	$(PYTEST) -q -ra -m integration tests

app: deps
	$(ONML) app

stack-up: deps
	$(ONML) stack up

stack-down:
	$(ONML) stack down

clean:
	rm -rf var deploy/kafka/target deploy/flink/target
