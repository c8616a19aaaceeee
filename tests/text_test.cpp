// SPDX-License-Identifier: MIT
// Tests of the text layer: word and character tokenizers, the vocabulary and its file.
#include "attend/text/tokenizer.hpp"
#include "attend/text/vocabulary.hpp"

#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <system_error>
#include <vector>

namespace {

using Tokens = std::vector<std::string>;
using Ids = std::vector<std::int64_t>;

/// A file path in the system temp directory, removed when the object goes out of scope.
class TempFile {
 public:
  explicit TempFile(const std::string& name)
      : path_((std::filesystem::temp_directory_path() /
               ("attend_text_test_" + std::to_string(std::random_device{}()) + "_" + name))
                  .string()) {}
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  ~TempFile() {
    std::error_code ignored;
    std::filesystem::remove(path_, ignored);
  }

  const std::string& path() const { return path_; }

  void write(const std::string& content) const {
    std::ofstream out(path_, std::ios::binary | std::ios::trunc);
    out << content;
    REQUIRE(out.good());
  }

  std::string read() const {
    std::ifstream in(path_, std::ios::binary);
    REQUIRE(in.good());
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }

 private:
  std::string path_;
};

/// Three sentences; counts: the 5, cat 2, on 2, sat 2, dog 1, log 1, mat 1, ran 1.
attend::Vocabulary::Corpus tiny_corpus() {
  return {attend::tokenize_words("The cat sat on the mat"),
          attend::tokenize_words("the dog sat on the log"),
          attend::tokenize_words("The cat ran")};
}

/// The vocabulary file of `Vocabulary::build(tiny_corpus())`.
const char* const tiny_file =
    "<pad>\n<bos>\n<eos>\n<unk>\nthe\ncat\non\nsat\ndog\nlog\nmat\nran\n";

const char* const specials_file = "<pad>\n<bos>\n<eos>\n<unk>\n";

}  // namespace

// ---------------------------------------------------------------------------------------
// tokenize_words

TEST_CASE("tokenizer: words split off ASCII punctuation and lowercase", "[text]") {
  CHECK(attend::tokenize_words("Hello, world!") == Tokens{"hello", ",", "world", "!"});
  // Every punctuation character is its own token, also in runs and inside words.
  CHECK(attend::tokenize_words("Wait... what?!") ==
        Tokens{"wait", ".", ".", ".", "what", "?", "!"});
  CHECK(attend::tokenize_words("don't") == Tokens{"don", "'", "t"});
  CHECK(attend::tokenize_words("(x+y)=2") == Tokens{"(", "x", "+", "y", ")", "=", "2"});
  CHECK(attend::tokenize_words("a_b-c") == Tokens{"a", "_", "b", "-", "c"});
}

TEST_CASE("tokenizer: runs of spaces, tabs and newlines make no empty tokens", "[text]") {
  CHECK(attend::tokenize_words("  The\tcat \n\n sat.  ") == Tokens{"the", "cat", "sat", "."});
  CHECK(attend::tokenize_words("a\r\nb\vc\fd") == Tokens{"a", "b", "c", "d"});
  CHECK(attend::tokenize_words("").empty());
  CHECK(attend::tokenize_words(" \t\n ").empty());
}

TEST_CASE("tokenizer: lowercase can be turned off", "[text]") {
  CHECK(attend::tokenize_words("Hello World, OK?", false) ==
        Tokens{"Hello", "World", ",", "OK", "?"});
  CHECK(attend::tokenize_words("Hello World, OK?", true) ==
        Tokens{"hello", "world", ",", "ok", "?"});
}

TEST_CASE("tokenizer: UTF-8 characters stay whole inside words", "[text]") {
  // "é" is C3 A9, "ï" is C3 AF, "É" is C3 89: copied as is, only ASCII is lowercased.
  CHECK(attend::tokenize_words("Café naïve-ish ÉCOLE") ==
        Tokens{"caf\xC3\xA9", "na\xC3\xAFve", "-", "ish", "\xC3\x89"
                                                           "cole"});
  // The ideographic comma U+3001 (E3 80 81) is not ASCII punctuation: one word.
  CHECK(attend::tokenize_words("日本語、テスト!") == Tokens{"日本語、テスト", "!"});
  // U+00A0 no-break space (C2 A0) is not ASCII whitespace: one word.
  CHECK(attend::tokenize_words("a\xC2\xA0"
                               "b c") == Tokens{"a\xC2\xA0"
                                                "b",
                                                "c"});
}

TEST_CASE("tokenizer: words reject invalid UTF-8 with the byte offset", "[text]") {
  REQUIRE_THROWS_AS(attend::tokenize_words("ok \xFF"), attend::value_error);
  REQUIRE_THROWS_WITH(attend::tokenize_words("ok \xFF"),
                      "tokenize_words: text has invalid UTF-8 at byte offset 3 (byte 0xFF "
                      "never occurs in UTF-8)");
}

// ---------------------------------------------------------------------------------------
// tokenize_chars

TEST_CASE("tokenizer: one character token per code point, nothing dropped", "[text]") {
  CHECK(attend::tokenize_chars("a \xC3\xA9\n") == Tokens{"a", " ", "\xC3\xA9", "\n"});
  // 1-, 2-, 3- and 4-byte characters: "A" (41), "é" (C3 A9), "€" (E2 82 AC), "😀" (F0 9F 98 80).
  const std::string mixed = "A\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80";
  const Tokens chars = attend::tokenize_chars(mixed);
  CHECK(chars == Tokens{"A", "\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80"});
  std::string joined;
  for (const std::string& c : chars) joined += c;
  CHECK(joined == mixed);
  CHECK(attend::tokenize_chars("").empty());
}

TEST_CASE("tokenizer: characters at the edges of the valid ranges are accepted", "[text]") {
  CHECK(attend::tokenize_chars("\xC2\x80") == Tokens{"\xC2\x80"});              // U+0080
  CHECK(attend::tokenize_chars("\xE0\xA0\x80") == Tokens{"\xE0\xA0\x80"});      // U+0800
  CHECK(attend::tokenize_chars("\xED\x9F\xBF") == Tokens{"\xED\x9F\xBF"});      // U+D7FF
  CHECK(attend::tokenize_chars("\xEE\x80\x80") == Tokens{"\xEE\x80\x80"});      // U+E000
  CHECK(attend::tokenize_chars("\xF0\x90\x80\x80") == Tokens{"\xF0\x90\x80\x80"});  // U+10000
  CHECK(attend::tokenize_chars("\xF4\x8F\xBF\xBF") == Tokens{"\xF4\x8F\xBF\xBF"});  // U+10FFFF
}

TEST_CASE("tokenizer: characters reject each kind of invalid UTF-8", "[text]") {
  const auto check = [](const std::string& text, const std::string& message) {
    INFO("text of " << text.size() << " bytes, expected: " << message);
    REQUIRE_THROWS_AS(attend::tokenize_chars(text), attend::value_error);
    REQUIRE_THROWS_WITH(attend::tokenize_chars(text), message);
  };
  const std::string prefix = "tokenize_chars: text has invalid UTF-8 at byte offset ";
  check("ab\x80", prefix + "2 (unexpected continuation byte 0x80)");
  check("\xFF", prefix + "0 (byte 0xFF never occurs in UTF-8)");
  // C0 AF would be an overlong "/"; C0 and C1 never start a valid character.
  check("x\xC0\xAF", prefix + "1 (byte 0xC0 never occurs in UTF-8)");
  check("a\xC3", prefix + "1 (truncated 2-byte sequence)");  // ends inside "é"
  check("\xE2\x82x", prefix + "0 (truncated 3-byte sequence)");  // "€" cut by "x"
  check("\xE0\x80\xAF", prefix + "0 (overlong encoding 0xE0 0x80)");
  check("\xF0\x8F\xBF\xBF", prefix + "0 (overlong encoding 0xF0 0x8F)");
  check("\xED\xA0\x80", prefix + "0 (UTF-16 surrogate encoded as 0xED 0xA0)");  // U+D800
  check("\xF4\x90\x80\x80",
        prefix + "0 (code point above U+10FFFF encoded as 0xF4 0x90)");  // U+110000
}

// ---------------------------------------------------------------------------------------
// Vocabulary

TEST_CASE("vocabulary: special tokens have fixed ids", "[text]") {
  static_assert(attend::Vocabulary::pad_id() == 0);
  static_assert(attend::Vocabulary::bos_id() == 1);
  static_assert(attend::Vocabulary::eos_id() == 2);
  static_assert(attend::Vocabulary::unk_id() == 3);
  static_assert(attend::Vocabulary::special_count() == 4);
  static_assert(attend::Vocabulary::unk_token() == "<unk>");

  const attend::Vocabulary vocab;
  CHECK(vocab.size() == 4);
  CHECK(vocab.tokens() == Tokens{"<pad>", "<bos>", "<eos>", "<unk>"});
  CHECK(vocab.id("<pad>") == 0);
  CHECK(vocab.id("<eos>") == 2);
  CHECK(vocab.token(1) == "<bos>");
  CHECK(vocab.id("cat") == attend::Vocabulary::unk_id());
  CHECK_FALSE(vocab.contains("cat"));
}

TEST_CASE("vocabulary: build orders by descending count, then lexicographically", "[text]") {
  // Counts: the 5; cat, on, sat 2 each (alphabetical); dog, log, mat, ran 1 each.
  const auto vocab = attend::Vocabulary::build(tiny_corpus());
  CHECK(vocab.size() == 12);
  CHECK(vocab.tokens() == Tokens{"<pad>", "<bos>", "<eos>", "<unk>", "the", "cat", "on", "sat",
                                 "dog", "log", "mat", "ran"});
  CHECK(vocab.id("the") == 4);
  CHECK(vocab.id("sat") == 7);
  CHECK(vocab.id("ran") == 11);
  CHECK(vocab.token(6) == "on");
  CHECK(vocab.contains("mat"));
  CHECK_FALSE(vocab.contains("The"));  // lowercased by tokenize_words
  CHECK(vocab.id("rug") == 3);
}

TEST_CASE("vocabulary: min_freq and max_size cut the rare tokens", "[text]") {
  const auto corpus = tiny_corpus();
  CHECK(attend::Vocabulary::build(corpus, 2).tokens() ==
        Tokens{"<pad>", "<bos>", "<eos>", "<unk>", "the", "cat", "on", "sat"});
  CHECK(attend::Vocabulary::build(corpus, 3).tokens() ==
        Tokens{"<pad>", "<bos>", "<eos>", "<unk>", "the"});
  CHECK(attend::Vocabulary::build(corpus, 6).size() == 4);  // nothing is seen 6 times
  // max_size counts the four specials: 6 leaves room for "the" and "cat".
  CHECK(attend::Vocabulary::build(corpus, 1, 6).tokens() ==
        Tokens{"<pad>", "<bos>", "<eos>", "<unk>", "the", "cat"});
  CHECK(attend::Vocabulary::build(corpus, 1, 4).size() == 4);
  CHECK(attend::Vocabulary::build(corpus, 1, 100).size() == 12);
  // Both: min_freq 2 keeps 4 tokens, max_size 7 keeps the first 3 of them.
  CHECK(attend::Vocabulary::build(corpus, 2, 7).tokens() ==
        Tokens{"<pad>", "<bos>", "<eos>", "<unk>", "the", "cat", "on"});
}

TEST_CASE("vocabulary: corpus tokens spelled like specials keep the special id", "[text]") {
  const auto vocab =
      attend::Vocabulary::build({{"<unk>", "b", "<unk>", "a"}, {"<pad>", "b", "<eos>"}});
  CHECK(vocab.tokens() == Tokens{"<pad>", "<bos>", "<eos>", "<unk>", "b", "a"});
}

TEST_CASE("vocabulary: build rejects bad arguments", "[text]") {
  const auto corpus = tiny_corpus();
  REQUIRE_THROWS_AS(attend::Vocabulary::build(corpus, 0), attend::value_error);
  REQUIRE_THROWS_WITH(attend::Vocabulary::build(corpus, 0),
                      "Vocabulary::build: min_freq is 0, expected at least 1");
  REQUIRE_THROWS_AS(attend::Vocabulary::build(corpus, 1, 3), attend::value_error);
  REQUIRE_THROWS_WITH(attend::Vocabulary::build(corpus, 1, 3),
                      "Vocabulary::build: max_size is 3, expected at least 4 (the special "
                      "tokens)");
  const attend::Vocabulary::Corpus with_empty = {{"a"}, {"b", ""}};
  REQUIRE_THROWS_AS(attend::Vocabulary::build(with_empty), attend::value_error);
  REQUIRE_THROWS_WITH(attend::Vocabulary::build(with_empty),
                      "Vocabulary::build: corpus[1][1] is \"\", expected a non-empty token");
}

TEST_CASE("vocabulary: encode adds bos/eos and maps unknown words to <unk>", "[text]") {
  const auto vocab = attend::Vocabulary::build(tiny_corpus());
  const Tokens tokens = attend::tokenize_words("The dog sat on the rug.");
  // the 4, dog 8, sat 7, on 6, the 4, rug -> <unk> 3, "." -> <unk> 3.
  CHECK(vocab.encode(tokens) == Ids{4, 8, 7, 6, 4, 3, 3});
  CHECK(vocab.encode(tokens, true, false) == Ids{1, 4, 8, 7, 6, 4, 3, 3});
  CHECK(vocab.encode(tokens, false, true) == Ids{4, 8, 7, 6, 4, 3, 3, 2});
  CHECK(vocab.encode(tokens, true, true) == Ids{1, 4, 8, 7, 6, 4, 3, 3, 2});
  CHECK(vocab.encode({}, true, true) == Ids{1, 2});
  CHECK(vocab.encode_text("The dog sat on the rug.", true, true) ==
        Ids{1, 4, 8, 7, 6, 4, 3, 3, 2});
}

TEST_CASE("vocabulary: decode skips <pad>/<bos>/<eos> but keeps <unk>", "[text]") {
  const auto vocab = attend::Vocabulary::build(tiny_corpus());
  const Ids ids = {1, 4, 5, 3, 2, 0, 0};  // <bos> the cat <unk> <eos> <pad> <pad>
  CHECK(vocab.decode(ids) == Tokens{"the", "cat", "<unk>"});
  CHECK(vocab.decode(ids, false) ==
        Tokens{"<bos>", "the", "cat", "<unk>", "<eos>", "<pad>", "<pad>"});
  CHECK(vocab.decode_text(ids) == "the cat <unk>");
  CHECK(vocab.decode_text(ids, false) == "<bos> the cat <unk> <eos> <pad> <pad>");
  CHECK(vocab.decode({}).empty());
  CHECK(vocab.decode_text({0, 0}).empty());
}

TEST_CASE("vocabulary: encode then decode gives back known tokens", "[text]") {
  const auto vocab = attend::Vocabulary::build(tiny_corpus());
  for (const Tokens& sentence : tiny_corpus()) {
    CHECK(vocab.decode(vocab.encode(sentence, true, true)) == sentence);
  }
  CHECK(vocab.decode_text(vocab.encode_text("The cat sat on the mat")) ==
        "the cat sat on the mat");
}

TEST_CASE("vocabulary: ids out of range are index errors", "[text]") {
  const auto vocab = attend::Vocabulary::build(tiny_corpus());  // size 12
  REQUIRE_THROWS_AS(vocab.decode({4, 17}), attend::index_error);
  REQUIRE_THROWS_WITH(vocab.decode({4, 17}),
                      "Vocabulary::decode: id 17 is out of range [0, 12)");
  REQUIRE_THROWS_WITH(vocab.decode({12}), "Vocabulary::decode: id 12 is out of range [0, 12)");
  // Checked even when skip_special would drop the position, and when decoding text.
  REQUIRE_THROWS_WITH(vocab.decode({-1}), "Vocabulary::decode: id -1 is out of range [0, 12)");
  REQUIRE_THROWS_AS(vocab.decode_text({99}), attend::index_error);
  REQUIRE_THROWS_WITH(vocab.decode_text({99}),
                      "Vocabulary::decode: id 99 is out of range [0, 12)");
  REQUIRE_THROWS_AS(vocab.token(12), attend::index_error);
  REQUIRE_THROWS_WITH(vocab.token(12), "Vocabulary::token: id 12 is out of range [0, 12)");
  REQUIRE_THROWS_WITH(vocab.token(-1), "Vocabulary::token: id -1 is out of range [0, 12)");
}

TEST_CASE("vocabulary: save writes one token per line and load reads it back", "[text]") {
  const auto vocab = attend::Vocabulary::build(tiny_corpus());
  const TempFile file("vocab.txt");
  vocab.save(file.path());
  CHECK(file.read() == tiny_file);

  const auto loaded = attend::Vocabulary::load(file.path());
  CHECK(loaded.tokens() == vocab.tokens());
  CHECK(loaded.id("log") == 9);
  CHECK(loaded.id("rug") == 3);
  CHECK(loaded.encode_text("the cat ran") == Ids{4, 5, 11});

  // Specials only, UTF-8 tokens and a space token survive the round trip too.
  const auto chars = attend::Vocabulary::build({attend::tokenize_chars("é a é")});
  chars.save(file.path());
  // Counts: " " 2, "é" 2, "a" 1; " " (0x20) sorts before "é" (0xC3 0xA9).
  CHECK(file.read() == std::string(specials_file) + " \n\xC3\xA9\na\n");
  CHECK(attend::Vocabulary::load(file.path()).tokens() == chars.tokens());
  attend::Vocabulary().save(file.path());
  CHECK(attend::Vocabulary::load(file.path()).size() == 4);
}

TEST_CASE("vocabulary: load accepts CRLF line ends and a missing final newline", "[text]") {
  const TempFile file("crlf.txt");
  file.write("<pad>\r\n<bos>\r\n<eos>\r\n<unk>\r\ncat\r\ndog");
  CHECK(attend::Vocabulary::load(file.path()).tokens() ==
        Tokens{"<pad>", "<bos>", "<eos>", "<unk>", "cat", "dog"});
}

TEST_CASE("vocabulary: load rejects malformed files naming file and line", "[text]") {
  const TempFile file("bad.txt");
  const std::string prefix = "Vocabulary::load: " + file.path();
  const auto check = [&](const std::string& content, const std::string& message) {
    INFO("file content: " << content);
    file.write(content);
    REQUIRE_THROWS_AS(attend::Vocabulary::load(file.path()), attend::format_error);
    REQUIRE_THROWS_WITH(attend::Vocabulary::load(file.path()), prefix + message);
  };
  check("", " has 0 lines, expected at least 4 (<pad>, <bos>, <eos>, <unk>)");
  check("<pad>\n", " has 1 line, expected at least 4 (<pad>, <bos>, <eos>, <unk>)");
  check("<pad>\n<bos>\n", " has 2 lines, expected at least 4 (<pad>, <bos>, <eos>, <unk>)");
  check("<pad>\n<eos>\n<bos>\n<unk>\n", " line 2 is \"<eos>\", expected \"<bos>\"");
  check("cat\n<pad>\n<bos>\n<eos>\n<unk>\n", " line 1 is \"cat\", expected \"<pad>\"");
  check("<pad>\n<bos>\n\n<eos>\n<unk>\n", " line 3 is empty, expected a token");
  check(std::string(specials_file) + "cat\n\ndog\n", " line 6 is empty, expected a token");
  check(std::string(specials_file) + "cat\n\n", " line 6 is empty, expected a token");
  check(std::string(specials_file) + "cat\ndog\ncat\n",
        " line 7 is \"cat\", expected a new token (already on line 5)");
  check(std::string(specials_file) + "<unk>\n",
        " line 5 is \"<unk>\", expected a new token (already on line 4)");
}

TEST_CASE("vocabulary: load and save report files they cannot open", "[text]") {
  const TempFile missing("missing_dir");  // never created: a path that does not exist
  const std::string inside = missing.path() + "/vocab.txt";
  REQUIRE_THROWS_AS(attend::Vocabulary::load(inside), attend::format_error);
  REQUIRE_THROWS_WITH(attend::Vocabulary::load(inside),
                      "Vocabulary::load: cannot open " + inside + " for reading");
  REQUIRE_THROWS_AS(attend::Vocabulary().save(inside), attend::format_error);
  REQUIRE_THROWS_WITH(attend::Vocabulary().save(inside),
                      "Vocabulary::save: cannot open " + inside + " for writing");
}

TEST_CASE("vocabulary: save rejects tokens the line format cannot hold", "[text]") {
  // Characters of "ab\nb": b 2, then "\n" (0x0A) before "a" (0x61), 1 each.
  const auto vocab = attend::Vocabulary::build({attend::tokenize_chars("ab\nb")});
  CHECK(vocab.tokens() == Tokens{"<pad>", "<bos>", "<eos>", "<unk>", "b", "\n", "a"});
  const TempFile file("newline.txt");
  REQUIRE_THROWS_AS(vocab.save(file.path()), attend::value_error);
  REQUIRE_THROWS_WITH(vocab.save(file.path()),
                      "Vocabulary::save: token 5 is \"\\n\", expected no line break (the file "
                      "holds one token per line)");
  CHECK_FALSE(std::filesystem::exists(file.path()));  // checked before opening the file
}
