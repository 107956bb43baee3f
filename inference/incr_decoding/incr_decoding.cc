// Incremental (one token per step) decoding with the LLM alone.
#include "common/cli.h"

int main(int argc, char **argv) { return ffspec::cli::run(argc, argv, ffspec::cli::Mode::Incremental); }
