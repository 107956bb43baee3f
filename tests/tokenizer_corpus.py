"""A deterministic multilingual corpus (>= 100,000 characters) for tokenizer parity tests
and benchmarks, generated from a seed: code, prose in many scripts, emoji sequences,
whitespace runs, digits, contractions, special-token strings and odd code points."""
from __future__ import annotations

import random

CODE = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "for (int i = 0; i < 10; ++i) {\n\tprintf(\"%d\\n\", i * i);\n}\n",
    "fn main() -> Result<(), Box<dyn Error>> {\n    let v: Vec<u32> = (0..100).collect();\n    Ok(())\n}\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;\r\n",
    "const add = (a, b) => a + b; // arrow\nconsole.log(`sum=${add(1, 2)}`);\n",
    "#include <vector>\nstd::vector<std::pair<int,int>> v{{1,2},{3,4}};\n",
    "    if x != None and y == 0x1F:\n        raise ValueError('bad')\n",
    "<div class=\"a\">&nbsp;<span>x &lt; y</span></div>\n",
    "$ ls -la | grep '.py' && echo \"done\" >> log.txt\n",
]
PROSE = [
    "The quick brown fox jumps over the lazy dog. ",
    "Café, naïve, façade, jalapeño, Ærøskøbing, São Paulo, Łódź, Dvořák. ",
    "Съешь же ещё этих мягких французских булок, да выпей чаю. ",
    "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. Καλημέρα κόσμε! ",
    "我能吞下玻璃而不伤身体。今天天气很好，我们去公园吧！",
    "私はガラスを食べられます。それは私を傷つけません。カタカナとひらがな。",
    "나는 유리를 먹을 수 있어요. 그래도 아프지 않아요. 안녕하세요! ",
    "أنا قادر على أكل الزجاج و هذا لا يؤلمني. مرحبا بالعالم. ",
    "אני יכול לאכול זכוכית וזה לא מזיק לי. שלום עולם. ",
    "मैं काँच खा सकता हूँ और मुझे उससे कोई चोट नहीं पहुंचती। नमस्ते दुनिया। ",
    "ฉันกินกระจกได้ แต่มันไม่ทำให้ฉันเจ็บ สวัสดีชาวโลก ",
    "Tiếng Việt có dấu: Xin chào thế giới, Hà Nội. ",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３ and ﬁ ligatures, ℌ𝔢𝔩𝔩𝔬 𝕨𝕠𝕣𝕝𝕕. ",
]
EMOJI = ["🙂", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇫🇷", "🤖", "✈️", "🧑🏿‍💻", "😀😃😄"]
SPACES = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\u00a0", "\u2003", "\u3000", " \n ", "    \n\n    ",
          "\u200b", "\u2028", "\x0b", "\x0c", "\x85"]
CONTRACTIONS = ["it's", "We'LL", "they're", "I've", "you'd", "she'S", "I'm", "don't", "'twas", "o'clock", "ſ'ſ", "'ſ"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>", "<unk>", "<|im_start|>user\n", "<s> ",
            " </s>", "<|endoftext|><|endoftext|>", "<fim_prefix>"]
ODD = ["\ufffd", "\\xc3\\x28", "\\u00e9", "\x00", "\x01", "\x7f", "\x1b[31m", "\ue000", "\U000f0000", "\ufdd0",
       "\uffff", "\u0301", "e\u0301", "\u0308\u0308", "a\u0300\u0316", "\u1100\u1161\u11a8", "Å", "Ω", "ﬀ", "①",
       "²", "½", "\u202e", "\ufeff"]


def _digits(rng: random.Random) -> str:
    n = rng.choice([1, 2, 3, 4, 5, 7, 12, 20])
    s = "".join(rng.choice("0123456789") for _ in range(n))
    return rng.choice([s, f" {s}", f"{s}.{rng.randint(0, 99)}", f"${s}", f"{s}%", "٣٤٥", "१२३", "Ⅻ"])


def corpus(seed: int = 0, min_chars: int = 100_000) -> str:
    rng = random.Random(seed)
    parts: list[str] = []
    total = 0
    kinds = [CODE, PROSE, PROSE, EMOJI, SPACES, CONTRACTIONS, SPECIALS, ODD]
    while total < min_chars:
        k = rng.randrange(len(kinds) + 1)
        if k == len(kinds):
            piece = _digits(rng)
        else:
            piece = rng.choice(kinds[k])
            if kinds[k] is PROSE and rng.random() < 0.3:
                piece = piece.upper() if rng.random() < 0.5 else piece.lower()
        if rng.random() < 0.15:
            piece += rng.choice(SPACES)
        parts.append(piece)
        total += len(piece)
    return "".join(parts)
