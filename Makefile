# The two commands of the README: `make run` (set up, build, serve on 127.0.0.1:50051) and
# `make test` (set up, run every test). Everything else is for development.
.PHONY: setup run test eval calibrate lint bench reference crash powercut fuzz quantize reindex-bench import-bench

setup:
	bash scripts/setup.sh

run: setup
	cargo run --release --bin facevault -- --keys-file config/dev-keys.json --metrics-listen 127.0.0.1:9464 $(ARGS)

# Every test on sled, then the gRPC integration suite again on PostgreSQL: a fresh database per
# test server on the server scripts/test-postgres.sh names (FACEVAULT_TEST_POSTGRES_URL when set,
# else 127.0.0.1:5432, else a throwaway server it installs and starts), exported to every run.
# Not run again in the PostgreSQL pass: the multi-node tests (PostgreSQL whatever the backend, run
# once), and the features only sled has (index snapshot files; stores made by older versions).
SLED_ONLY = --skip multinode --skip snapshot:: --skip an_older_store_gets_its_embedder_recorded

test: setup
	@url="$$(bash scripts/test-postgres.sh)" && export FACEVAULT_TEST_POSTGRES_URL="$$url" && \
	echo "make test: every test on sled, then tests/grpc on PostgreSQL" && \
	FACEVAULT_TEST_BACKEND=sled cargo test && \
	FACEVAULT_TEST_BACKEND=postgres cargo test --test grpc -- $(SLED_ONLY)

# Accuracy on the labelled devfaces set (../shared/data/devfaces, or FACEVAULT_DEVFACES).
eval: setup
	cargo test --test devfaces -- --nocapture
	cargo run --example calibrate -- $${FACEVAULT_DEVFACES:-../shared/data/devfaces}

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --test powercut --test devfaces -- -D warnings

bench: setup
	cargo bench

reference:
	bash scripts/reference/run.sh

# A reindex's rate, and live search latency with and without one running (README: "Changing the
# model"). Uses devfaces (FACEVAULT_DEVFACES); COPIES, SECONDS_EACH as in the script.
reindex-bench: setup
	bash scripts/reindex-bench.sh

# ImportFaces against UploadFace calls on the devfaces photos, side by side (README numbers).
import-bench: setup
	bash scripts/import-bench.sh

# The crash-consistency harness with many kills (CI runs 3). FACEVAULT_CRASH_SEED replays a run.
crash: setup
	FACEVAULT_CRASH_CYCLES=$${FACEVAULT_CRASH_CYCLES:-50} cargo test --test grpc crash -- --nocapture

# Power loss: the server on a FUSE layer that drops every write no fsync covered, cut at random
# moments (tests/powercut.rs). Needs /dev/fuse and root for apt-get. FACEVAULT_POWERCUT_CYCLES
# (default 3) and FACEVAULT_POWERCUT_SEED as for `make crash`.
powercut: setup
	bash scripts/powercut-setup.sh
	cargo test --test powercut -- --nocapture

# libFuzzer on decode and detector preprocessing (needs nightly and `cargo install cargo-fuzz`).
fuzz: setup
	mkdir -p fuzz/corpus/decode_preprocess
	cp -n tests/fixtures/synthetic/*.jpg tests/fixtures/synthetic/*.png tests/fixtures/images/yaoming.jpg tests/fixtures/images/Tom_Hanks_54745.png fuzz/corpus/decode_preprocess/
	cargo +nightly fuzz run decode_preprocess -- -max_total_time=$${FUZZ_SECONDS:-600} -rss_limit_mb=4096

# int8 variants of the models (needs the reference venv: make reference).
quantize:
	third_party/refvenv/bin/python scripts/quantize.py
