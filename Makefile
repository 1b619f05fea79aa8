# Shortcuts a newcomer can guess; each calls the scripts the README documents.
.PHONY: install up test lint bench demo-call

install:
	scripts/bootstrap.sh --with-postgres --with-mariadb

up:
	scripts/up

test:
	scripts/test

demo-call:
	scripts/demo-call

lint:
	scripts/lint

bench:
	.venv/bin/python bench/dispatcher_decisions.py
