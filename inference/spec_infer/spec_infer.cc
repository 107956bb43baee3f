// Speculative inference with token tree verification: an LLM and one or more SSMs.
#include "common/cli.h"

int main(int argc, char **argv) { return ffspec::cli::run(argc, argv, ffspec::cli::Mode::Speculative); }
