// The spec_infer and incr_decoding programs: FlexFlow Serve's flags, our C API underneath.
#pragma once

namespace ffspec::cli {

enum class Mode { Speculative, Incremental };

// Parses argv, runs every prompt of the prompt file, writes the output file. Returns the
// process exit status: 0, 1 (a runtime error: missing model, bad checkpoint...), 2 (bad usage).
int run(int argc, char **argv, Mode mode);

}  // namespace ffspec::cli
