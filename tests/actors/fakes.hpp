// Test doubles for the actor tests: a probe driver whose probes the test
// completes by hand, a manual tick scheduler and clock, and a wait helper.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "actors/prober.hpp"
#include "protocol/probe.hpp"

namespace mg::test {

/// Polls `pred` until it holds or `limit` passes.
inline bool wait_until(const std::function<bool()>& pred,
                       std::chrono::milliseconds limit = std::chrono::seconds(5)) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred())
      return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return pred();
}

/// Probes wait in a queue until the test completes them; or, with
/// `auto_outcome` set, complete at once with it. Scheduled probes report to
/// `sink`, as the real runtime's do (a batch of one here).
struct fake_probes {
  struct pending_probe {
    probe_callback done;                     // on demand
    probe_report report;                     // scheduled: id, generation, lateness
    std::shared_ptr<std::atomic<bool>> busy; // scheduled: the driver's in-flight flag
    std::shared_ptr<std::atomic<bool>> abandoned; // scheduled: its prober stopped
  };
  std::mutex mtx;
  std::deque<pending_probe> pending;
  std::vector<std::string> probed_ids;
  std::vector<scheduled_probe> scheduled; // as handed to the drivers
  std::optional<probe_outcome> auto_outcome;
  probe_report_sink sink;

  void deliver(pending_probe p, probe_outcome outcome) {
    if (p.done)
      return p.done(std::move(outcome));
    outcome.lateness_ms = p.report.outcome.lateness_ms;
    p.report.outcome = std::move(outcome);
    p.busy->store(false);
    if (sink && !p.abandoned->load())
      sink(std::vector<probe_report>{std::move(p.report)});
  }

  size_t started() {
    std::lock_guard<std::mutex> g{mtx};
    return probed_ids.size();
  }

  scheduled_probe last_scheduled() {
    std::lock_guard<std::mutex> g{mtx};
    return scheduled.empty() ? scheduled_probe{} : scheduled.back();
  }

  size_t in_flight() {
    std::lock_guard<std::mutex> g{mtx};
    return pending.size();
  }

  /// Whether the oldest pending probe's driver was abandoned.
  bool oldest_abandoned() {
    std::lock_guard<std::mutex> g{mtx};
    return !pending.empty() && pending.front().abandoned && pending.front().abandoned->load();
  }

  /// Completes the oldest pending probe.
  bool complete(probe_outcome outcome) {
    pending_probe p;
    {
      std::lock_guard<std::mutex> g{mtx};
      if (pending.empty())
        return false;
      p = std::move(pending.front());
      pending.pop_front();
    }
    deliver(std::move(p), std::move(outcome));
    return true;
  }
};

class fake_driver : public probe_driver {
public:
  fake_driver(std::shared_ptr<fake_probes> probes, std::string id)
    : probes_(std::move(probes)), id_(std::move(id)) {
  }
  void probe(std::chrono::milliseconds, probe_callback done) override {
    fake_probes::pending_probe p;
    p.done = std::move(done);
    start(std::move(p));
  }

  bool probe_scheduled(const scheduled_probe& probe) override {
    if (busy_->exchange(true))
      return false;
    fake_probes::pending_probe p;
    p.report.server_id = id_;
    p.report.generation = probe.generation;
    p.report.outcome.lateness_ms = probe.lateness_ms;
    p.busy = busy_;
    p.abandoned = abandoned_;
    {
      std::lock_guard<std::mutex> g{probes_->mtx};
      probes_->scheduled.push_back(probe);
    }
    start(std::move(p));
    return true;
  }

  void abandon() override {
    abandoned_->store(true);
  }

private:
  void start(fake_probes::pending_probe p) {
    std::optional<probe_outcome> now;
    {
      std::lock_guard<std::mutex> g{probes_->mtx};
      probes_->probed_ids.push_back(id_);
      if (probes_->auto_outcome)
        now = probes_->auto_outcome;
      else
        probes_->pending.push_back(std::move(p));
    }
    if (now)
      probes_->deliver(std::move(p), *now);
  }

  std::shared_ptr<fake_probes> probes_;
  std::string id_;
  std::shared_ptr<std::atomic<bool>> busy_ = std::make_shared<std::atomic<bool>>(false);
  std::shared_ptr<std::atomic<bool>> abandoned_ = std::make_shared<std::atomic<bool>>(false);
};

inline probe_driver_factory make_fake_factory(std::shared_ptr<fake_probes> probes) {
  return [probes](const probe_target& t) -> std::shared_ptr<probe_driver> {
    return std::make_shared<fake_driver>(probes, t.server_id);
  };
}

/// Records the ticks actors ask for; the test delivers them.
struct manual_ticks {
  struct request {
    prober_actor prober;
    std::chrono::milliseconds delay;
    uint64_t number;
  };
  std::mutex mtx;
  std::vector<request> requests;

  tick_scheduler scheduler() {
    return [this](const prober_actor& p, std::chrono::milliseconds d, uint64_t n) {
      std::lock_guard<std::mutex> g{mtx};
      requests.push_back({p, d, n});
    };
  }

  size_t count() {
    std::lock_guard<std::mutex> g{mtx};
    return requests.size();
  }

  request at(size_t i) {
    std::lock_guard<std::mutex> g{mtx};
    return requests.at(i);
  }
};

inline probe_outcome healthy_outcome() {
  probe_outcome o;
  o.healthy = true;
  o.status_code = 200;
  o.response_time_ms = 1.0;
  o.at = 1;
  return o;
}

inline probe_outcome failed_outcome(const char* kind = "connect") {
  probe_outcome o;
  o.healthy = false;
  o.error = "refused";
  o.error_kind = kind;
  o.at = 1;
  return o;
}

} // namespace mg::test
