# The two commands of the README, and a few more.
.PHONY: up test down status lint gen gen-check crds

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

gen:     ## regenerate every generated file: CRDs, chart copies, dashboards, runbooks, GitOps render
	.venv/bin/factoryctl gen

gen-check:  ## fail, listing them, when generated files are stale (tests/static runs the same)
	.venv/bin/factoryctl gen --check

crds:    ## regenerate crds/ from the operator's models, and what the chart derives from them
	.venv/bin/factoryctl gen crds chart
