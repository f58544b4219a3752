# The two commands a new user runs (see README.md). Both install what they need first.
.PHONY: up test down status

up:
	scripts/bootstrap.sh lab,train,serving,controller,tui
	scripts/lab-up.sh

test:
	scripts/test.sh

down:
	.venv/bin/appliance down

status:
	.venv/bin/appliance status
