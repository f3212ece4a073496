# The two commands of the README: `make run` (set up, build, serve on 127.0.0.1:50051) and
# `make test` (set up, run every test). Everything else is for development.
.PHONY: setup run test lint bench reference

setup:
	bash scripts/setup.sh

run: setup
	cargo run --release -- $(ARGS)

test: setup
	cargo test

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

bench: setup
	cargo bench

reference:
	bash scripts/reference/run.sh
