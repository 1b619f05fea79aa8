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
	.venv/bin/ruff check src services tests bench
	.venv/bin/mypy src services

bench:
	.venv/bin/python bench/dispatcher_decisions.py
