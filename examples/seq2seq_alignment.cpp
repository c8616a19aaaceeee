// SPDX-License-Identifier: MIT
// An LSTM encoder-decoder with Bahdanau attention translates a sentence word by word; its
// alignment matrix is printed as a table and drawn as a heatmap with the words as labels.
//
// docs/lecture-notes.md, "attention as alignment between words": at output step i the decoder
// scores each encoder state h_j against its previous state s_{i-1}, a_ij = softmax_j(v .
// tanh(W1 h_j + W2 s_{i-1})), and reads c_i = sum_j a_ij h_j. a [output x source words]
// shows where each output word came from (Bahdanau, Cho & Bengio 2015, figure 3).
//
// attend ships no trained weights, so the model is set by hand (nothing random or trained):
// English -> French word by word, with French colour adjectives after the noun ("black
// cat" -> "chat noir"). Every LSTM unit is a 0/1 switch (make_switches). Encoder state h_j:
// P_j (position, one-hot), A (word j is an adjective), F (word j follows one), W_w (word j
// is w, one-hot), and a unit always on, which is also D_0 of the decoder's slot counter
// D_i (one-hot) since the decoder starts from z. Word j belongs in slot j + A_j - F_j: one
// tanh unit of the alignment per slot i and case fires on D_i & P_{i-1} & A, D_i & P_{i+1}
// & F, or D_i & P_i & !A & !F, and v sums them, so slot(j) = i scores about 2 gamma more.
// The output layer maps the context's W_w to the translation of w.
//
// Usage: seq2seq_alignment [output.png]   (default seq2seq_alignment.png)
#include "attend/rnn/decoding.hpp"
#include "attend/rnn/seq2seq.hpp"
#include "attend/text/tokenizer.hpp"
#include "attend/text/vocabulary.hpp"

#include <cmath>
#include <cstdio>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "common/label.hpp"
#include "common/png.hpp"
#include "common/print.hpp"

namespace {

using attend::Index;
using Cell = attend::LSTMCell<double>;
// Gate input per unit of a condition: margins of 0.5 give sigmoid(+-10), 0 or 1 within 5e-5.
constexpr double kGate = 20;
const double kOn = std::tanh(1.0);  // h of a unit that is on

/// One term of a condition: input x[index] (0 or 1) or, if `state`, the previous step's
/// h[index] (0 or kOn), times `weight`.
struct Term {
  bool state;
  Index index;
  double weight;
};

/// Turns every unit of `cell` into a switch that is off: forget gate shut, cell input
/// g = tanh(20) = 1, output gate open, input gate i shut; so c' = i and h' = tanh(i).
void make_switches(Cell& cell) {
  const Index N = cell.hidden_size();
  cell.weight_ih.setZero();
  cell.weight_hh.setZero();
  cell.bias_hh.setZero();
  cell.bias_ih << attend::Vector<double>::Constant(N, -kGate / 2),  // gate blocks i, f, g, o
      attend::Vector<double>::Constant(N, -kGate), attend::Vector<double>::Constant(2 * N, kGate);
}

/// Switches unit u on (h = kOn) while sum(terms) + bias > 0 (conditions in steps of 0.5).
void set_switch(Cell& cell, Index u, const std::vector<Term>& terms, double bias) {
  for (const Term& t : terms) {
    if (t.state) {
      cell.weight_hh(u, t.index) = kGate * t.weight / kOn;
    } else {
      cell.weight_ih(u, t.index) = kGate * t.weight;
    }
  }
  cell.bias_ih(u) = kGate * bias;  // row u: the input gate block
}

}  // namespace

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : "seq2seq_alignment.png";
  const std::vector<std::pair<std::string, std::string>> dictionary{
      {"the", "le"},       {"a", "un"},      {"cat", "chat"},   {"dog", "chien"},
      {"fish", "poisson"}, {"sees", "voit"}, {"eats", "mange"}, {"black", "noir"},
      {"white", "blanc"},  {"red", "rouge"}, {".", "."}};
  std::vector<std::string> english, french;
  for (const auto& [en, fr] : dictionary) english.push_back(en);
  for (const auto& [en, fr] : dictionary) french.push_back(fr);
  const auto src = attend::Vocabulary::build({english}), tgt = attend::Vocabulary::build({french});

  // Hidden units: 0 always on (D_0), D_1..D_{K-1}, P_0..P_{K-1}, A, F, W_0..W_{V-1}.
  constexpr Index K = 12, on = 0, D = 0, P = K, A = 2 * K, F = A + 1, W = F + 1;  // K slots
  const Index V = src.size(), N = W + V;
  attend::Seq2SeqOptions o;
  o.source_vocab = o.embedding_dim = V;
  o.target_vocab = tgt.size();
  o.hidden_size = N;
  o.attention = attend::AttentionKind::bahdanau;
  o.attention_size = 3 * K;
  attend::Seq2Seq<double> model(o);
  model.source_embedding.weight.setIdentity();  // x_j = one-hot of source word j
  Cell& enc = model.encoder.cells[0];
  Cell& dec = model.decoder.cells[0];  // reads only its state: input weights stay 0
  make_switches(enc);
  make_switches(dec);
  set_switch(enc, on, {}, 0.5);
  set_switch(enc, P, {{true, on, -1}}, 0.5);  // P_0: the always-on unit was still off
  for (Index k = 1; k < K; ++k) set_switch(enc, P + k, {{true, P + k - 1, 1}}, -0.5);
  std::vector<Term> adjective;
  for (const char* a : {"black", "white", "red"}) adjective.push_back({false, src.id(a), 1});
  set_switch(enc, A, adjective, -0.5);
  set_switch(enc, F, {{true, A, 1}}, -0.5);
  for (Index w = 0; w < V; ++w) set_switch(enc, W + w, {{false, w, 1}}, -0.5);
  for (Index k = 1; k < K; ++k) set_switch(dec, D + k, {{true, D + k - 1, 1}}, -0.5);

  // Alignment row r: beta (D_slot + terms over h_j + bias); the always-on unit of every
  // h_j carries the bias. beta saturates the tanh; gamma sets the score gap.
  constexpr double beta = 6, gamma = 2;
  attend::BahdanauAttention<double>& align = *model.bahdanau;
  align.W1.setZero();
  align.W2.setZero();
  align.v.setConstant(gamma);
  const auto slot_rule = [&](Index r, Index slot, const std::vector<Term>& terms, double bias) {
    align.W2(r, D + slot) = beta / kOn;
    for (const Term& t : terms) align.W1(r, t.index) = beta * t.weight / kOn;
    align.W1(r, on) = beta * bias / kOn;
  };
  for (Index i = 0; i < K; ++i) {
    if (i > 0) slot_rule(3 * i, i, {{true, P + i - 1, 1}, {true, A, 1}}, -2.5);
    if (i + 1 < K) slot_rule(3 * i + 1, i, {{true, P + i + 1, 1}, {true, F, 1}}, -2.5);
    slot_rule(3 * i + 2, i, {{true, P + i, 1}, {true, A, -1}, {true, F, -1}}, -1.5);
  }
  // Logits from [s_i; c_i]: 10 per unit of the context's W_w, specials to themselves.
  model.out.weight.setZero();
  model.out.bias.setZero();
  for (Index s = 0; s < attend::Vocabulary::special_count(); ++s) {
    model.out.weight(s, N + W + s) = 10 / kOn;
  }
  for (const auto& [en, fr] : dictionary) {
    model.out.weight(tgt.id(fr), N + W + src.id(en)) = 10 / kOn;
  }

  const std::string sentence = "The black cat sees a white dog.";
  const std::vector<std::int64_t> ids =
      src.encode(attend::tokenize_words(sentence), /*add_bos=*/false, /*add_eos=*/true);
  const attend::Seq2SeqDecoder<double> decoder(model, ids);
  attend::DecodeOptions options;
  options.bos = attend::Vocabulary::bos_id();
  options.eos = attend::Vocabulary::eos_id();
  options.max_length = K;
  const auto best = attend::greedy_decode(decoder, options);
  const std::vector<std::string> source = src.decode(ids, false);
  const std::vector<std::string> output = tgt.decode(best.tokens, false);
  std::printf("English: %s\nFrench:  %s (greedy, log-probability %s)\n\n", sentence.c_str(),
              tgt.decode_text(best.tokens).c_str(), examples::fixed(best.log_prob).c_str());
  const attend::Matrix<double>& a = best.state.alignment;  // [output steps, source steps]
  examples::print_matrix("alignment a_ij (rows: output words i, columns: source words j)", a,
                         output, source, 2);
  std::printf(
      "\nEvery row sums to 1. The diagonal turns where French swaps adjective and noun:\n"
      "'chat' reads 'cat' and 'noir' reads 'black'; 'chien' and 'blanc' likewise.\n");

  examples::LabelledHeatmapOptions style;
  style.title = "Bahdanau alignment a_ij, English -> French (hand-set weights)";
  style.row_title = "output (French)";
  style.col_title = "source (English)";
  style.bar_title = "attention weight a_ij";
  try {
    examples::png::write(path, examples::labelled_heatmap(a, output, source, style));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  std::printf("Wrote the alignment heatmap to %s (white 0, red 1).\n", path.c_str());
  return 0;
}
