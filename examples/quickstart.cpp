// Quickstart: multi-head self-attention on a 4-token batch, with a causal mask.
#include <attend/attend.hpp>

#include <iostream>

int main() {
  using namespace attend;
  MultiheadAttentionOptions opts;
  opts.embed_dim = 8;
  opts.num_heads = 2;
  opts.batch_first = true;
  MultiheadAttention<float> mha(opts,
                                /*seed=*/42);  // or mha.load_state_dict(SafeTensors::load(path))

  Tensor<float> x({1, 4, 8});                                 // [B, L, E]
  x.matrix(0) = sinusoidal_positional_encoding<float>(4, 8);  // positions as toy inputs

  MultiheadAttentionArgs args;
  args.attn_mask = Mask::causal();    // token i sees tokens 0..i
  args.average_attn_weights = false;  // weights per head: [B, H, L, S]
  AttentionResult<float> r = mha.forward(x, args);

  std::cout << "output [1, 4, 8]:\n" << r.output.matrix(0) << "\n";
  std::cout << "head 0 weights [4, 4]:\n" << r.attn_weights.matrix(0, 0) << "\n";
}
