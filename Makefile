# The two commands of the README: `make run` (set up, build, serve on 127.0.0.1:50051) and
# `make test` (set up, run every test). Everything else is for development.
.PHONY: setup run test eval calibrate lint bench reference

setup:
	bash scripts/setup.sh

run: setup
	cargo run --release --bin facevault -- --keys-file config/dev-keys.json --metrics-listen 127.0.0.1:9464 $(ARGS)

test: setup
	cargo test

# Accuracy on the labelled devfaces set (../shared/data/devfaces, or FACEVAULT_DEVFACES).
eval: setup
	cargo test --test devfaces -- --nocapture
	cargo run --example calibrate -- $${FACEVAULT_DEVFACES:-../shared/data/devfaces}

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

bench: setup
	cargo bench

reference:
	bash scripts/reference/run.sh
