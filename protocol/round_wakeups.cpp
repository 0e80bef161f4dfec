#include "protocol/round_wakeups.hpp"

#include <algorithm>
#include <utility>
#include <vector>

namespace mg::round_wakeups {

namespace {

thread_local bool in_round = false;
thread_local std::vector<std::pair<wake_fn, void*>> deferred;

} // namespace

void begin() {
  in_round = true;
}

void end() {
  in_round = false;
  auto due = std::move(deferred);
  deferred.clear();
  for (auto& [wake, arg] : due)
    wake(arg);
  if (deferred.empty()) { // keep the capacity
    due.clear();
    deferred.swap(due);
  }
}

bool defer(wake_fn wake, void* arg) {
  if (!in_round)
    return false;
  auto entry = std::make_pair(wake, arg);
  if (std::find(deferred.begin(), deferred.end(), entry) == deferred.end())
    deferred.push_back(entry);
  return true;
}

} // namespace mg::round_wakeups
