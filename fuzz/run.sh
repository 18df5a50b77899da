#!/bin/sh
# Coverage-guided fuzzing of one target (load or pipeline) for SECONDS (default 600):
#   fuzz/run.sh load 600
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Starts from the
# committed seeds in fuzz/seeds/ and keeps what it finds in fuzz/corpus/TARGET (not committed);
# crashes land in fuzz/artifacts/TARGET/. No sanitizer: the library is safe Rust, and a
# sanitizer would cost most of the rate on tract's kernels. A crash, once found, is minimized
# with `cargo +nightly fuzz tmin TARGET CRASH` and becomes a test in the stable suite.
set -eu
target="${1:?usage: fuzz/run.sh load|pipeline [SECONDS]}"
seconds="${2:-600}"
cd "$(dirname "$0")"
mkdir -p "corpus/$target"
exec cargo +nightly fuzz run --sanitizer none "$target" "corpus/$target" seeds -- \
    -max_total_time="$seconds" -max_len=65536 -timeout=20 -rss_limit_mb=4096 -print_final_stats=1
