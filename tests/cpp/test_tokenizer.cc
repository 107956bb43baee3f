// StreamDecoder: for tokenizers given on the command line (tokenizer.json / tokenizer.model /
// .gguf), streaming ids one at a time yields only whole UTF-8 characters, and the pieces
// plus flush() add up to decode(all ids). Prints "N passed, M failed".
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

#include "expect.h"

using namespace ffspec;

static void check_stream(const Tokenizer &tok, const std::vector<int32_t> &ids, bool skip) {
  StreamDecoder sd(tok, skip);
  std::string streamed;
  bool whole = true;
  for (int32_t id : ids) {
    std::string piece = sd.put(id);
    whole &= is_valid_utf8(piece);
    streamed += piece;
  }
  std::string rest = sd.flush();
  whole &= is_valid_utf8(rest);
  streamed += rest;
  EXPECT(whole);
  EXPECT(streamed == tok.decode(ids, skip));
}

int main(int argc, char **argv) {
  const char *texts[] = {
      "Hello world! 日本語のテキスト 👨‍👩‍👧‍👦 and émoji 🏳️‍🌈\n",
      "<|im_start|>user\nПривет, как дела?<|im_end|> <s>שלום</s> ①②③ \xEF\xBF\xBD",
      "\xE0\xB8\xAA\xE0\xB8\xA7\xE0\xB8\xB1\xE0\xB8\xAA\xE0\xB8\x94\xE0\xB8\xB5 1234567 \t\t x",
  };
  for (int a = 1; a < argc; a++) {
    std::unique_ptr<Tokenizer> tok = Tokenizer::load(argv[a]);
    std::mt19937 rng(a);
    for (const char *t : texts) {
      std::vector<int32_t> ids = tok->encode(t, true);
      EXPECT(!ids.empty());
      check_stream(*tok, ids, false);
      check_stream(*tok, ids, true);
    }
    // Arbitrary ids (byte tokens that split characters, specials anywhere).
    std::uniform_int_distribution<int32_t> any(0, tok->vocab_size() - 1);
    for (int round = 0; round < 50; round++) {
      std::vector<int32_t> ids;
      for (int k = 0; k < 40; k++) {
        int32_t id = any(rng);
        if (!tok->id_to_token(id).empty()) ids.push_back(id);
      }
      check_stream(*tok, ids, round % 2 == 0);
    }
    // A character split over byte tokens is held back until complete.
    int32_t b0 = tok->token_to_id("<0xE6>"), b1 = tok->token_to_id("<0x97>"), b2 = tok->token_to_id("<0xA5>");
    if (b0 >= 0 && b1 >= 0 && b2 >= 0) {
      StreamDecoder sd(*tok, false);
      EXPECT(sd.put(b0).empty());
      EXPECT(sd.put(b1).empty());
      std::string last = sd.put(b2);
      EXPECT(last.find("\xE6\x97\xA5") != std::string::npos);
    }
  }
  return report();
}
