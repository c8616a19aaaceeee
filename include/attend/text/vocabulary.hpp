// SPDX-License-Identifier: MIT
// A token <-> id vocabulary with the special tokens <pad>, <bos>, <eos>, <unk> at ids 0-3.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/types.hpp"
#include "attend/text/tokenizer.hpp"

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace attend {

namespace detail {

/// `token` with `\n`, `\r`, `\t`, `"` and `\` escaped, for quoting in error messages.
inline std::string escaped(std::string_view token) {
  std::string out;
  for (const char c : token) {
    switch (c) {
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      default: out += c;
    }
  }
  return out;
}

}  // namespace detail

/// Maps tokens to integer ids (the rows of an embedding table, `V` = size()) and back.
///
/// Ids 0, 1, 2, 3 are always `<pad>`, `<bos>`, `<eos>`, `<unk>`; corpus tokens follow from
/// id 4. Ids are `std::int64_t`, PyTorch's `long`, so encoded sequences fill a
/// `Tensor<std::int64_t>` for an embedding lookup unchanged.
///
/// File format (save/load): UTF-8 text, one token per line, `\n` line ends (a trailing
/// `\r` is stripped on load), the token with id `k` on the zero-based line `k`, i.e. the
/// four special tokens on the first four lines. Error messages count lines from 1, as
/// editors do.
class Vocabulary {
 public:
  /// The corpus of `build`: one token sequence per sentence or document.
  using Corpus = std::vector<std::vector<std::string>>;

  static constexpr std::int64_t pad_id() noexcept { return 0; }
  static constexpr std::int64_t bos_id() noexcept { return 1; }
  static constexpr std::int64_t eos_id() noexcept { return 2; }
  static constexpr std::int64_t unk_id() noexcept { return 3; }
  /// Number of special tokens, which occupy ids [0, 4).
  static constexpr Index special_count() noexcept { return 4; }

  static constexpr std::string_view pad_token() noexcept { return "<pad>"; }
  static constexpr std::string_view bos_token() noexcept { return "<bos>"; }
  static constexpr std::string_view eos_token() noexcept { return "<eos>"; }
  static constexpr std::string_view unk_token() noexcept { return "<unk>"; }

  /// A vocabulary holding only the four special tokens.
  Vocabulary() {
    for (const std::string_view special :
         {pad_token(), bos_token(), eos_token(), unk_token()}) {
      add_(std::string(special));
    }
  }

  /// Builds a vocabulary from token counts over `corpus`.
  ///
  /// Tokens are ordered by descending count, ties broken by byte-wise lexicographic
  /// order, so the result does not depend on hashing; ids follow from 4 in that order.
  /// Corpus tokens spelled like a special token count towards nothing: they already have
  /// their id. Like torchtext's `build_vocab_from_iterator(min_freq, max_tokens)`.
  /// \param corpus token sequences, e.g. from `tokenize_words`.
  /// \param min_freq keep tokens seen at least this many times (>= 1).
  /// \param max_size cap on size() including the four special tokens (>= 4); the most
  ///   frequent tokens are kept.
  /// \throws value_error when min_freq < 1, max_size < 4, or a corpus token is empty.
  static Vocabulary build(const Corpus& corpus, Index min_freq = 1,
                          std::optional<Index> max_size = std::nullopt) {
    if (min_freq < 1) {
      throw value_error("Vocabulary::build: min_freq is " + std::to_string(min_freq) +
                        ", expected at least 1");
    }
    if (max_size && *max_size < special_count()) {
      throw value_error("Vocabulary::build: max_size is " + std::to_string(*max_size) +
                        ", expected at least 4 (the special tokens)");
    }
    Vocabulary vocab;
    std::unordered_map<std::string, Index> counts;
    for (std::size_t s = 0; s < corpus.size(); ++s) {
      for (std::size_t t = 0; t < corpus[s].size(); ++t) {
        const std::string& token = corpus[s][t];
        if (token.empty()) {
          throw value_error("Vocabulary::build: corpus[" + std::to_string(s) + "][" +
                            std::to_string(t) + "] is \"\", expected a non-empty token");
        }
        if (!vocab.contains(token)) ++counts[token];
      }
    }
    std::vector<std::pair<std::string, Index>> ranked(counts.begin(), counts.end());
    std::sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) {
      return a.second != b.second ? a.second > b.second : a.first < b.first;
    });
    for (auto& [token, count] : ranked) {
      if (count < min_freq) break;  // sorted by count, so every later one is rarer
      if (max_size && vocab.size() >= *max_size) break;
      vocab.add_(std::move(token));
    }
    return vocab;
  }

  /// Reads a vocabulary saved by `save` (format in the class comment).
  /// \throws format_error when the file cannot be read, has fewer than 4 lines, an empty
  ///   line, a first four lines other than `<pad>`, `<bos>`, `<eos>`, `<unk>`, or a token
  ///   twice; the message names the file and the line.
  static Vocabulary load(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      throw format_error("Vocabulary::load: cannot open " + path + " for reading");
    }
    const std::string content((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
    if (in.bad()) throw format_error("Vocabulary::load: cannot read " + path);

    const std::string where = "Vocabulary::load: " + path + " line ";
    Vocabulary vocab;
    vocab.tokens_.clear();
    vocab.ids_.clear();
    std::size_t begin = 0;
    while (begin < content.size()) {  // a final "\n" ends the last line, it opens none
      std::size_t end = content.find('\n', begin);
      if (end == std::string::npos) end = content.size();
      std::string token = content.substr(begin, end - begin);
      if (!token.empty() && token.back() == '\r') token.pop_back();
      begin = end + 1;

      const Index id = vocab.size();
      const std::string line = std::to_string(id + 1);
      if (token.empty()) throw format_error(where + line + " is empty, expected a token");
      if (id < special_count() && token != special_token_(id)) {
        throw format_error(where + line + " is \"" + detail::escaped(token) +
                           "\", expected \"" + std::string(special_token_(id)) + "\"");
      }
      if (const auto found = vocab.ids_.find(token); found != vocab.ids_.end()) {
        throw format_error(where + line + " is \"" + detail::escaped(token) +
                           "\", expected a new token (already on line " +
                           std::to_string(found->second + 1) + ")");
      }
      vocab.add_(std::move(token));
    }
    if (vocab.size() < special_count()) {
      throw format_error("Vocabulary::load: " + path + " has " + std::to_string(vocab.size()) +
                         (vocab.size() == 1 ? " line" : " lines") +
                         ", expected at least 4 (<pad>, <bos>, <eos>, <unk>)");
    }
    return vocab;
  }

  /// Writes one token per line, id order (format in the class comment); `load` reads it
  /// back equal.
  /// \throws value_error when a token contains `\n` or `\r`, which the format cannot hold
  ///   (character vocabularies of multi-line text do).
  /// \throws format_error when the file cannot be written.
  void save(const std::string& path) const {
    for (std::size_t k = 0; k < tokens_.size(); ++k) {
      if (tokens_[k].find_first_of("\r\n") != std::string::npos) {
        throw value_error("Vocabulary::save: token " + std::to_string(k) + " is \"" +
                          detail::escaped(tokens_[k]) +
                          "\", expected no line break (the file holds one token per line)");
      }
    }
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out) {
      throw format_error("Vocabulary::save: cannot open " + path + " for writing");
    }
    for (const std::string& token : tokens_) out << token << '\n';
    out.flush();
    if (!out) throw format_error("Vocabulary::save: cannot write " + path);
  }

  /// Number of tokens `V`, special tokens included.
  Index size() const noexcept { return static_cast<Index>(tokens_.size()); }

  /// All tokens in id order: `tokens()[k]` has id `k`.
  const std::vector<std::string>& tokens() const noexcept { return tokens_; }

  bool contains(const std::string& token) const { return ids_.count(token) != 0; }

  /// The id of `token`, or `unk_id()` when it is not in the vocabulary (as `encode`).
  std::int64_t id(const std::string& token) const {
    const auto found = ids_.find(token);
    return found == ids_.end() ? unk_id() : found->second;
  }

  /// The token with id `id`.
  /// \throws index_error when `id` is outside [0, size()).
  const std::string& token(std::int64_t id) const {
    check_id_(id, "Vocabulary::token");
    return tokens_[static_cast<std::size_t>(id)];
  }

  /// Maps tokens to ids, unknown tokens to `unk_id()`.
  /// \param tokens e.g. from `tokenize_words`.
  /// \param add_bos prepend `bos_id()`.
  /// \param add_eos append `eos_id()`.
  /// \returns [L] ids, L = tokens.size() + add_bos + add_eos.
  std::vector<std::int64_t> encode(const std::vector<std::string>& tokens, bool add_bos = false,
                                   bool add_eos = false) const {
    std::vector<std::int64_t> ids;
    ids.reserve(tokens.size() + 2);
    if (add_bos) ids.push_back(bos_id());
    for (const std::string& token : tokens) ids.push_back(id(token));
    if (add_eos) ids.push_back(eos_id());
    return ids;
  }

  /// Maps ids back to tokens.
  /// \param ids [L] ids.
  /// \param skip_special drop `<pad>`, `<bos>` and `<eos>`. `<unk>` is always kept: it
  ///   stands for a real word, and dropping it would silently shorten the sentence.
  /// \returns the tokens in order.
  /// \throws index_error when an id is outside [0, size()), e.g. "Vocabulary::decode: id
  ///   17 is out of range [0, 12)", whether or not it would be skipped.
  std::vector<std::string> decode(const std::vector<std::int64_t>& ids,
                                  bool skip_special = true) const {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (const std::int64_t i : ids) {
      check_id_(i, "Vocabulary::decode");
      if (skip_special && (i == pad_id() || i == bos_id() || i == eos_id())) continue;
      tokens.push_back(tokens_[static_cast<std::size_t>(i)]);
    }
    return tokens;
  }

  /// `encode(tokenize_words(text), add_bos, add_eos)`: lowercased word tokens. For
  /// other tokenizations call `encode` on their tokens.
  /// \throws value_error when `text` is not valid UTF-8.
  std::vector<std::int64_t> encode_text(const std::string& text, bool add_bos = false,
                                        bool add_eos = false) const {
    return encode(tokenize_words(text), add_bos, add_eos);
  }

  /// `decode(ids, skip_special)` joined by single spaces: "hello , world !". Word
  /// tokenization drops the original spacing, so this is a readable rendering, not the
  /// original text.
  /// \throws index_error as `decode`.
  std::string decode_text(const std::vector<std::int64_t>& ids, bool skip_special = true) const {
    std::string text;
    for (const std::string& token : decode(ids, skip_special)) {
      if (!text.empty()) text += ' ';
      text += token;
    }
    return text;
  }

 private:
  static constexpr std::string_view special_token_(Index id) noexcept {
    constexpr std::string_view specials[] = {pad_token(), bos_token(), eos_token(),
                                             unk_token()};
    return specials[id];
  }

  void add_(std::string token) {
    const auto id = static_cast<std::int64_t>(tokens_.size());
    ids_.emplace(token, id);
    tokens_.push_back(std::move(token));
  }

  void check_id_(std::int64_t id, const char* function) const {
    if (id < 0 || id >= size()) {
      throw index_error(std::string(function) + ": id " + std::to_string(id) +
                        " is out of range [0, " + std::to_string(size()) + ")");
    }
  }

  std::vector<std::string> tokens_;                     // [V], id -> token
  std::unordered_map<std::string, std::int64_t> ids_;  // token -> id
};

}  // namespace attend
