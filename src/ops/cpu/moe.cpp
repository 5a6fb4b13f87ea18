#include "ops/cpu/moe.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "ops/cpu/basic.h"

namespace kimi::cpu {

void moe_route(const MoeRouteParams& p) {
  const int E = p.num_experts, K = p.top_k;
#pragma omp parallel for schedule(static) if (p.num_tokens > 64)
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    std::vector<float> score(E), select(E);
    std::vector<int> order(E);
    for (int e = 0; e < E; ++e) {
      score[e] = sigmoid(p.logits[t * E + e]);
      select[e] = score[e] + p.correction_bias[e];
    }
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + K, order.end(), [&](int a, int b) {
      return select[a] > select[b] || (select[a] == select[b] && a < b);
    });
    float sum = 0;
    for (int i = 0; i < K; ++i) sum += score[order[i]];
    float norm = p.renormalize ? p.scaling / sum : p.scaling;
    for (int i = 0; i < K; ++i) {
      p.expert_ids[t * K + i] = order[i];
      p.weights[t * K + i] = score[order[i]] * norm;
    }
    if (p.margins) {
      float best_out = -INFINITY;
      for (int i = K; i < E; ++i) best_out = std::max(best_out, select[order[i]]);
      p.margins[t] = select[order[K - 1]] - best_out;
    }
  }
}

}  // namespace kimi::cpu
