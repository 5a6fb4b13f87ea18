// The embedded training corpus for the tiny default tokenizer. Written for this project: a few
// kilobytes of English, Chinese, Japanese, Korean, Russian, code, numbers and emoji, so that
// every script the tests touch gets some merges.
#include "tokenizer/train.h"

namespace kimi {

std::string_view tiny_training_corpus() {
  static constexpr std::string_view kCorpus = R"CORPUS(
The engine reads the model from a directory, checks every tensor against the config, and then
starts serving requests. When a request arrives, the tokenizer turns the prompt into token ids,
the scheduler places the sequence in a batch, and the model runs one step for every sequence in
the batch. It's a simple loop, and we'd like to keep it that way: the fewer moving parts there
are, the easier it is to see where the time goes. Don't guess; measure. They'll thank you later.

A good benchmark states what it measures, on which machine, and with which command. The number
of tokens per second depends on the batch size, the prompt length and the output length, so we
record all three. If the result changes by more than a few percent between runs, something else
is running on the machine, and the number should not be trusted.

Linear attention keeps a fixed-size state per head instead of a cache that grows with the
sequence. The state is updated once per token with a gated delta rule, which forgets a little
of the old memory and writes the new key and value. Every fourth layer still uses full attention
over a compressed latent cache, which helps the model recall exact details from far back.

I'm here, you're there, she's coming, we've seen it, THEY'LL KNOW, it'd work. Hello, World!
CamelCaseNames, snake_case_names, SCREAMING_CASE, getHTTPResponse, XMLHttpRequest, iPhone.

人工智能是计算机科学的一个分支，它试图理解智能的本质，并生产出一种新的能以人类智能相似的方式
做出反应的智能机器。该领域的研究包括机器人、语言识别、图像识别、自然语言处理和专家系统等。
深度学习模型通常需要大量的数据和计算资源。训练一个大型语言模型可能需要数千张显卡和几个月的时间。
今天天气很好，我们去公园散步吧。你好，世界！这是一个测试。中文分词对于搜索引擎非常重要。
线性注意力机制将每个头的状态保持为固定大小，因此长文本推理的显存占用不会随序列长度增长。

日本語のテキストも少し入れておきます。東京は日本の首都で、人口は約千四百万人です。
今日はとても良い天気ですね。明日は雨が降るかもしれません。ありがとうございます。
カタカナのコンピュータ、プログラム、データベース、ネットワーク。

한국어 문장도 조금 있습니다. 서울은 대한민국의 수도입니다. 감사합니다.
Русский текст тоже нужен: Москва — столица России. Спасибо за внимание!
Ελληνικά: γεια σου κόσμε. Français : ça coûte 12,50 € ; naïve café résumé.

def tokenize(text: str) -> list[int]:
    ids = []
    for piece in split(text):
        if piece in vocab:
            ids.append(vocab[piece])
        else:
            ids.extend(merge(piece.encode("utf-8")))
    return ids

int main(int argc, char** argv) {
  std::vector<int> values(1024, 0);
  for (int i = 0; i < static_cast<int>(values.size()); ++i) {
    values[i] = i * i % 97;
  }
  if (argc > 1 && values[3] != 9) return 1;
  printf("sum = %d\n", std::accumulate(values.begin(), values.end(), 0));
  return 0;
}

{"model": "kimi-linear", "messages": [{"role": "user", "content": "What is 2 + 2?"}],
 "max_tokens": 128, "temperature": 0.7, "stream": true, "tools": []}

SELECT id, name, created_at FROM users WHERE age >= 18 AND city = 'Paris' ORDER BY id;
git commit -m "Fix the off-by-one error in the chunk boundary"
https://example.com/docs/v2/index.html?lang=en&page=3#section-4

Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 4096 65536 3.14159 2.71828 1,000,000
2026-11-27 14:05:33 +08:00, version 1.2.3, $19.99, 50%, 1e-5, 0x7FFF, 163840, 48B-A3B.
Phone: +1 (555) 010-9999. Order #12345 shipped. 3 × 4 = 12, 10 ÷ 2 = 5, π ≈ 3.14.

Emoji: 🙂 😀 😂 👍 👍🏽 🎉 🚀 ❤️ 🔥 ✅ ❌ 👨‍👩‍👧 🇫🇷 🇯🇵 🤖 🧠 💡 ⭐ 🌏
Great job! 🎉 Ship it 🚀 — thanks 🙏 and see you tomorrow 👋

	Tabs	and    spaces   mixed
line one
line two

line four after a blank line
trailing spaces here   
    indented four spaces
        indented eight spaces
)CORPUS";
  return kCorpus;
}

}  // namespace kimi
