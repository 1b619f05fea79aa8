# Shortcuts a newcomer can guess; each calls the scripts the README documents.
.PHONY: install up test lint bench demo-call

install:
	scripts/bootstrap.sh --with-postgres

up:
	scripts/up

test:
	scripts/test

demo-call:
	scripts/demo-call

lint:
	.venv/bin/ruff check src services devtools tests bench
	.venv/bin/mypy src services devtools

bench:
	.venv/bin/python bench/dispatcher_decisions.py
