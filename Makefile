# The two commands of the README, and a few more.
.PHONY: up test down status lint crds

up:      ## start the local fleet (installs what it needs)
	./scripts/up.sh

test:    ## run the whole test suite (installs what it needs)
	./scripts/test.sh

down:    ## stop the local fleet
	.venv/bin/factoryctl dev down

status:  ## what runs in the local fleet
	.venv/bin/factoryctl dev status

lint:    ## ruff, mypy, import-linter
	.venv/bin/ruff check . && .venv/bin/mypy && .venv/bin/lint-imports
