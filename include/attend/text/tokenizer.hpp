// SPDX-License-Identifier: MIT
// Word and character tokenizers over UTF-8 text: the lecture's first step, text -> tokens.
#pragma once

#include "attend/core/errors.hpp"

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace attend {

/// Splits text into words and punctuation marks.
///
/// Rules, applied byte by byte from left to right:
/// - ASCII whitespace (space, `\t`, `\n`, `\v`, `\f`, `\r`) ends the current word and is
///   dropped, so runs of whitespace never produce empty tokens;
/// - each ASCII punctuation character (`!"#$%&'()*+,-./:;<=>?@[\]^_\`{|}~`, the C locale's
///   `ispunct`) ends the current word and becomes a token of its own: "Hello, world!" ->
///   "hello" "," "world" "!", "don't" -> "don" "'" "t", "..." -> "." "." ".";
/// - every other byte belongs to the current word; a multi-byte UTF-8 character is copied
///   whole, so "Café" -> "café" and "naïve-ish" -> "naïve" "-" "ish".
///
/// Only ASCII letters are lowercased (locale-independent): "ÉCOLE" -> "École". Unicode
/// whitespace and punctuation outside ASCII (U+00A0, "«") are word characters.
///
/// \param text UTF-8 text.
/// \param lowercase map `A`-`Z` to `a`-`z` (default on).
/// \returns the tokens in order; empty for empty or all-whitespace text.
/// \throws value_error when `text` is not valid UTF-8; the message names the byte offset.
/// \sa tokenize_chars, Vocabulary::encode_text
std::vector<std::string> tokenize_words(std::string_view text, bool lowercase = true);

/// Splits text into its Unicode code points, one token per code point, nothing dropped
/// or changed: "a é\n" -> "a" " " "é" "\n". Joining the tokens gives back `text`.
///
/// Validation follows RFC 3629: no stray continuation bytes, no truncated sequences, no
/// overlong encodings, no UTF-16 surrogates (U+D800..U+DFFF), nothing above U+10FFFF.
///
/// \param text UTF-8 text.
/// \returns one UTF-8 string per code point.
/// \throws value_error when `text` is not valid UTF-8, e.g. "tokenize_chars: text has
///   invalid UTF-8 at byte offset 1 (truncated 2-byte sequence)"; the offset is the one
///   of the first byte of the malformed character.
/// \sa tokenize_words
std::vector<std::string> tokenize_chars(std::string_view text);

namespace detail {

/// "0x9F" for one byte.
inline std::string hex_byte(unsigned char byte) {
  constexpr char digits[] = "0123456789ABCDEF";
  return std::string("0x") + digits[byte >> 4] + digits[byte & 0x0F];
}

inline bool is_ascii_space(unsigned char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

/// The 32 ASCII punctuation characters: 0x21-0x2F, 0x3A-0x40, 0x5B-0x60, 0x7B-0x7E.
inline bool is_ascii_punct(unsigned char c) {
  return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
         (c >= 0x7B && c <= 0x7E);
}

/// Length in bytes (1 to 4) of the valid UTF-8 character starting at `text[offset]`.
///
/// Byte ranges of Unicode's table 3-7 (well-formed UTF-8 byte sequences): the second
/// byte after E0, ED, F0 and F4 is narrowed to exclude overlong forms, surrogates and
/// code points above U+10FFFF.
/// \throws value_error naming `function` and `offset` when the character is malformed.
inline std::size_t utf8_char_length(std::string_view text, std::size_t offset,
                                    const char* function) {
  const auto fail = [&](const std::string& reason) {
    return value_error(std::string(function) + ": text has invalid UTF-8 at byte offset " +
                       std::to_string(offset) + " (" + reason + ")");
  };
  const auto lead = static_cast<unsigned char>(text[offset]);
  if (lead < 0x80) return 1;
  if (lead < 0xC0) throw fail("unexpected continuation byte " + hex_byte(lead));
  if (lead < 0xC2 || lead > 0xF4) throw fail("byte " + hex_byte(lead) + " never occurs in UTF-8");

  const std::size_t length = lead < 0xE0 ? 2 : (lead < 0xF0 ? 3 : 4);
  // Allowed range of the second byte; the remaining bytes are always 0x80..0xBF.
  unsigned char low = 0x80;
  unsigned char high = 0xBF;
  if (lead == 0xE0) low = 0xA0;   // E0 80..9F would re-encode U+0000..U+07FF
  if (lead == 0xED) high = 0x9F;  // ED A0..BF would encode surrogates U+D800..U+DFFF
  if (lead == 0xF0) low = 0x90;   // F0 80..8F would re-encode U+0000..U+FFFF
  if (lead == 0xF4) high = 0x8F;  // F4 90..BF would encode U+110000 and above

  for (std::size_t k = 1; k < length; ++k) {
    if (offset + k >= text.size()) {
      throw fail("truncated " + std::to_string(length) + "-byte sequence");
    }
    const auto byte = static_cast<unsigned char>(text[offset + k]);
    if (byte < 0x80 || byte > 0xBF) {
      throw fail("truncated " + std::to_string(length) + "-byte sequence");
    }
    if (k == 1 && (byte < low || byte > high)) {
      const std::string pair = hex_byte(lead) + " " + hex_byte(byte);
      if (lead == 0xED) throw fail("UTF-16 surrogate encoded as " + pair);
      if (lead == 0xF4) throw fail("code point above U+10FFFF encoded as " + pair);
      throw fail("overlong encoding " + pair);
    }
  }
  return length;
}

}  // namespace detail

inline std::vector<std::string> tokenize_words(std::string_view text, bool lowercase) {
  std::vector<std::string> tokens;
  std::string word;
  const auto flush = [&] {
    if (!word.empty()) tokens.push_back(std::move(word));
    word.clear();
  };
  std::size_t i = 0;
  while (i < text.size()) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x80) {
      const std::size_t length = detail::utf8_char_length(text, i, "tokenize_words");
      word.append(text.substr(i, length));
      i += length;
      continue;
    }
    if (detail::is_ascii_space(c)) {
      flush();
    } else if (detail::is_ascii_punct(c)) {
      flush();
      tokens.emplace_back(1, static_cast<char>(c));
    } else {
      const bool upper = c >= 'A' && c <= 'Z';
      word.push_back(static_cast<char>(lowercase && upper ? c - 'A' + 'a' : c));
    }
    ++i;
  }
  flush();
  return tokens;
}

inline std::vector<std::string> tokenize_chars(std::string_view text) {
  std::vector<std::string> tokens;
  tokens.reserve(text.size());
  std::size_t i = 0;
  while (i < text.size()) {
    const std::size_t length = detail::utf8_char_length(text, i, "tokenize_chars");
    tokens.emplace_back(text.substr(i, length));
    i += length;
  }
  return tokens;
}

}  // namespace attend
