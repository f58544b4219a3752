# The two commands a new user runs (see README.md). Both install what they need first.
.PHONY: up test test-all down status

up:
	scripts/bootstrap.sh lab,train,serving,controller,tui
	scripts/lab-up.sh

test:
	scripts/test.sh

# Every test, the extended tier too (tests/conftest.py: EXTENDED): past CI's 90 minutes on 2 cores.
test-all:
	APPLIANCE_TEST_ALL=1 scripts/test.sh

down:
	.venv/bin/appliance down

status:
	.venv/bin/appliance status
