#include "bench/online.h"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "bench/arrivals.h"
#include "bench/progress.h"
#include "core/check.h"
#include "core/log.h"

namespace kimi::bench {

OnlineRun run_online(const Endpoint& ep, const std::vector<SampleRequest>& requests,
                     const OnlineOptions& opts) {
  if (requests.empty()) fail("no requests to send");
  for (int w = 0; w < opts.num_warmups; ++w) {
    RequestOutput o = send_request(ep, requests[size_t(w) % requests.size()], Clock::now());
    if (!o.success)
      fail("warm-up request to ", ep.host_url, ep.path, " failed: ", o.error,
           " (check --base-url, --endpoint and --model)");
  }
  const int n = int(requests.size());
  const int peak = opts.max_concurrency > 0 ? std::min(opts.max_concurrency, n) : n;
  if (peak > 900)
    spdlog::warn(
        "up to {} requests in flight: cpp-httplib 0.11.4 waits with select(), which cannot watch "
        "descriptors >= 1024 (reads then block without the timeout); consider --max-concurrency",
        peak);
  std::vector<double> arrivals = arrival_times(n, opts.request_rate, opts.burstiness, opts.seed);
  OnlineRun run;
  run.outputs.resize(size_t(n));
  std::mutex mu;
  std::condition_variable cv;
  int in_flight = 0;
  double last_end = 0;
  Progress progress(opts.max_concurrency > 0 ? str("c=", opts.max_concurrency) : "requests", n,
                    opts.progress);
  std::vector<std::thread> threads;
  threads.reserve(size_t(n));
  const auto bench_start = Clock::now();
  for (int i = 0; i < n; ++i) {
    std::this_thread::sleep_until(bench_start + std::chrono::duration_cast<Clock::duration>(
                                                    std::chrono::duration<double>(arrivals[i])));
    {
      std::unique_lock lk(mu);
      cv.wait(lk, [&] { return opts.max_concurrency <= 0 || in_flight < opts.max_concurrency; });
      ++in_flight;
    }
    threads.emplace_back([&, i] {
      RequestOutput o = send_request(ep, requests[size_t(i)], bench_start);
      // From the scheduled arrival: this loop waits for a slot before it sleeps for the next
      // arrival, where vLLM's requests arrive on schedule and then wait on the semaphore.
      o.queue_time = std::max(0.0, o.start_time - arrivals[size_t(i)]);
      double end = std::chrono::duration<double>(Clock::now() - bench_start).count();
      bool ok = o.success;
      {
        std::lock_guard lk(mu);
        run.outputs[size_t(i)] = std::move(o);
        last_end = std::max(last_end, end);
        --in_flight;
      }
      cv.notify_all();
      progress.tick(ok);
    });
  }
  for (auto& t : threads) t.join();
  progress.finish();
  run.duration = last_end;
  return run;
}

}  // namespace kimi::bench
