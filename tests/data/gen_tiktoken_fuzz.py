"""Reference ids from the tiktoken library for random strings (run where tiktoken is installed).

    python3 tests/data/gen_tiktoken_fuzz.py ../shared/golden/tokenizer-a OUT.jsonl [SWEEP.jsonl]

Builds a tiktoken.Encoding from tokenizer-a's files and Kimi's pattern (no network), encodes
random mixed-script strings (fixed seed) with all special tokens allowed and with none, and
writes one {"text", "ids", "ids_no_special"} object per line.
"""
import base64, json, random, sys

import tiktoken

PAT = r"""[\p{Han}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

d = sys.argv[1]
ranks = {}
for line in open(f"{d}/tiktoken.model", "rb"):
    if line.strip():
        tok, rank = line.split()
        ranks[base64.b64decode(tok)] = int(rank)
cfg = json.load(open(f"{d}/tokenizer_config.json"))
special = {v["content"]: int(k) for k, v in cfg["added_tokens_decoder"].items()}
enc = tiktoken.Encoding("kimi-test", pat_str=PAT, mergeable_ranks=ranks, special_tokens=special)

ATOMS = [
    "a", "Z", "hello", " world", "Don't", "'S", "'ll", "ſ", "K", "ǅ", "ʰ", "123", "4567", "٣", "Ⅻ", "½",
    " ", "  ", "\t", "\n", "\r\n", "\r", "\n\n", "   \n", "\u00a0", "\u3000", "\u2028", "\u180e",
    "\u200b", "\u1680", "\x0b", "\x1c", "\x85", "!", "...", "、", "。", "，", "〇", "々", "中文",
    "日本語", "ひらがな", "カタカナ", "한국어", "Ελλάδα", "Россия", "עברית", "العربية", "हिन्दी",
    "ไทย", "e\u0301", "\u0301", "\u0308\u0301", "🙂", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷",
    "❤️", "\ufe0f", "𝔘𝔫𝔦", "𠀀", "\U0010fffd", "\ue000", "\uffff", "<|im_end|>", "[BOS]",
    "<|im_user|>", "<|reserved_token_900|>", "<|im_", "|>", "<", "x=1;", "{\"k\": [1, 2]}",
    "def f(x):\n    return x\n", "$", "€", "©", "™", "\u0600", "\u00ad",
]


def rand_char(rng):
    r = rng.random()
    if r < 0.5:
        return chr(rng.randrange(0x20, 0x7F))
    if r < 0.7:
        return chr(rng.randrange(0x80, 0x3000))
    if r < 0.85:
        return chr(rng.randrange(0x3000, 0xD800))
    while True:
        cp = rng.randrange(0xE000, 0x110000)
        if not 0xD800 <= cp < 0xE000:
            return chr(cp)


rng = random.Random(20261127)
out = open(sys.argv[2], "w")
for i in range(600):
    parts = []
    for _ in range(rng.randrange(1, 24)):
        parts.append(rng.choice(ATOMS) if rng.random() < 0.6 else rand_char(rng))
    text = "".join(parts)
    out.write(json.dumps({"text": text, "ids": enc.encode(text, allowed_special="all"),
                          "ids_no_special": enc.encode(text, disallowed_special=())}) + "\n")
# Optional: every code point below U+30000 in runs of 64 (Unicode-property coverage of the
# pattern; too large to keep in the repository).
out = open(sys.argv[3], "w") if len(sys.argv) > 3 else None
for start in range(0, 0x30000 if out else 0, 64):
    text = "".join(chr(c) for c in range(start, start + 64) if not 0xD800 <= c < 0xE000)
    if text:
        out.write(json.dumps({"text": text, "ids": enc.encode(text, allowed_special="all"),
                              "ids_no_special": enc.encode(text, disallowed_special=())}) + "\n")
print("tiktoken", tiktoken.__version__)
