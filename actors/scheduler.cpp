#include "actors/scheduler.hpp"

#include <algorithm>
#include <vector>

#include <caf/detail/set_thread_name.hpp>
#include <caf/scoped_execution_unit.hpp>

#include "protocol/round_wakeups.hpp"
#include "protocol/time.hpp"

namespace mg {

using guard = std::lock_guard<std::mutex>;

void coalescing_actor_clock::wake_for(time_point t) {
  if (t < wake_at_) {
    wake_at_ = t;
    cv_.notify_one();
  }
}

void coalescing_actor_clock::set_ordinary_timeout(time_point t, caf::abstract_actor* self,
                                                  caf::atom_value type, uint64_t id) {
  guard g{mx_};
  super::set_ordinary_timeout(t, self, type, id);
  wake_for(t);
}

// CAF 0.17 never cancels a request's timeout when the answer comes: the
// timeout still fires, wakes this thread and the requester, and is dropped.
// After 10,000 registrations that was 1,000 wake-ups of two threads a second,
// ten seconds later. A request timeout is a safety net, so it lands on a
// 100 ms grid instead: late by at most that, and the stale ones share
// wake-ups.
void coalescing_actor_clock::set_request_timeout(time_point t, caf::abstract_actor* self,
                                                 caf::message_id id) {
  t = round_up(t, request_timeout_grain);
  guard g{mx_};
  super::set_request_timeout(t, self, id);
  wake_for(t);
}

void coalescing_actor_clock::set_multi_timeout(time_point t, caf::abstract_actor* self,
                                               caf::atom_value type, uint64_t id) {
  guard g{mx_};
  super::set_multi_timeout(t, self, type, id);
  wake_for(t);
}

// A cancellation never needs an early wake-up: at worst the thread wakes for
// a timeout that is gone, finds nothing due and sleeps again.
void coalescing_actor_clock::cancel_ordinary_timeout(caf::abstract_actor* self,
                                                     caf::atom_value type) {
  guard g{mx_};
  super::cancel_ordinary_timeout(self, type);
}

void coalescing_actor_clock::cancel_request_timeout(caf::abstract_actor* self,
                                                    caf::message_id id) {
  guard g{mx_};
  super::cancel_request_timeout(self, id);
}

void coalescing_actor_clock::cancel_timeouts(caf::abstract_actor* self) {
  guard g{mx_};
  super::cancel_timeouts(self);
}

void coalescing_actor_clock::schedule_message(time_point t, caf::strong_actor_ptr receiver,
                                              caf::mailbox_element_ptr content) {
  auto width = std::chrono::duration_cast<duration_type>(bucket_width);
  auto start = time_point{(t.time_since_epoch() / width) * width};
  guard g{mx_};
  auto bucket = messages_.find(start);
  if (bucket == messages_.end()) {
    message_bucket storage;
    if (!spare_buckets_.empty()) {
      storage = std::move(spare_buckets_.back());
      spare_buckets_.pop_back();
    }
    bucket = messages_.emplace(start, std::move(storage)).first;
  }
  bucket->second.push_back(delayed_message{t, std::move(receiver), std::move(content)});
  // A bucket goes out when its start is due: its messages up to 1 ms early,
  // as any timeout may be.
  wake_for(start);
}

void coalescing_actor_clock::take_due_messages(time_point now, std::vector<message_bucket>& out) {
  for (auto i = messages_.begin(); i != messages_.end() && i->first <= now;) {
    out.push_back(std::move(i->second));
    i = messages_.erase(i);
  }
}

coalescing_actor_clock::time_point coalescing_actor_clock::next_due() const {
  auto due = time_point::max();
  if (!schedule_.empty())
    due = schedule_.begin()->first;
  if (!messages_.empty())
    due = std::min(due, messages_.begin()->first);
  return due;
}

void coalescing_actor_clock::schedule_message(time_point t, caf::group target,
                                              caf::strong_actor_ptr sender,
                                              caf::message content) {
  guard g{mx_};
  super::schedule_message(t, std::move(target), std::move(sender), std::move(content));
  wake_for(t);
}

void coalescing_actor_clock::cancel_all() {
  // Destroyed outside the lock, for the reason given in run_dispatch_loop.
  schedule_map dropped;
  std::map<time_point, message_bucket> dropped_messages;
  {
    guard g{mx_};
    actor_lookup_.clear();
    dropped.swap(schedule_);
    dropped_messages.swap(messages_);
    spare_buckets_.clear();
  }
}

void coalescing_actor_clock::run_dispatch_loop(modelgate_scheduler* sched) {
  std::vector<unique_delayed_event_ptr> due;
  std::vector<message_bucket> due_messages;
  std::vector<caf::resumable*> ready;
  std::unique_lock<std::mutex> lock{mx_};
  while (!done_) {
    // Take the due events out under the lock, deliver them without it: a
    // delivery may drop the last reference to an actor, whose cleanup
    // cancels its timeouts, i.e. calls back into this clock.
    // Timeouts due within the next `early` go out with this round: one
    // wake-up instead of one per microsecond-apart timeout (actors that
    // aim at the same instant through delayed_send land microseconds apart).
    auto now = this->now();
    auto horizon = now + early;
    for (auto i = schedule_.begin(); i != schedule_.end() && i->first <= horizon;) {
      if (i->second->backlink != actor_lookup_.end())
        actor_lookup_.erase(i->second->backlink);
      due.push_back(std::move(i->second));
      i = schedule_.erase(i);
    }
    take_due_messages(now, due_messages);
    if (!due.empty() || !due_messages.empty()) {
      wake_at_ = time_point::min(); // awake: nobody needs to notify
      lock.unlock();
      if (sched)
        sched->begin_round(&ready);
      // Timeouts and delayed messages go out merged in due order, as from
      // CAF's one multimap. A bucket holds up to 1 ms of due times in the
      // order they were scheduled, so it is sorted first (stable: equal
      // times keep their order). (Across rounds the order holds to within
      // the 1 ms a timeout may be early: one due just before a message
      // whose bucket has not started yet may go first.)
      auto by_due = [](const delayed_message& a, const delayed_message& b) {
        return a.due < b.due;
      };
      size_t next_event = 0;
      for (auto& bucket : due_messages) {
        if (!std::is_sorted(bucket.begin(), bucket.end(), by_due))
          std::stable_sort(bucket.begin(), bucket.end(), by_due);
        for (auto& message : bucket) {
          while (next_event < due.size() && due[next_event]->due <= message.due)
            ship(*due[next_event++]);
          message.receiver->enqueue(std::move(message.content), nullptr);
        }
        bucket.clear(); // drops the receivers' references outside the lock
      }
      while (next_event < due.size())
        ship(*due[next_event++]);
      if (sched)
        sched->run_round();
      due.clear();
      lock.lock();
      for (auto& bucket : due_messages)
        if (spare_buckets_.size() < max_spare_buckets)
          spare_buckets_.push_back(std::move(bucket));
      due_messages.clear();
      continue; // more may have come due meanwhile
    }
    wake_at_ = next_due();
    if (wake_at_ == time_point::max())
      cv_.wait(lock);
    else
      cv_.wait_until(lock, wake_at_);
  }
  lock.unlock();
  cancel_all();
}

void coalescing_actor_clock::cancel_dispatch_loop() {
  guard g{mx_};
  done_ = true;
  cv_.notify_one();
}

namespace {

// The round of the clock thread in progress, if any (only ever set there),
// and the scheduler it belongs to: a job of another actor system made ready
// by this round goes to its own scheduler.
thread_local std::vector<caf::resumable*>* current_round = nullptr;
thread_local modelgate_scheduler* round_owner = nullptr;

} // namespace

void modelgate_scheduler::enqueue(caf::resumable* job) {
  if (current_round != nullptr && round_owner == this)
    current_round->push_back(job);
  else
    super::enqueue(job);
}

void modelgate_scheduler::begin_round(std::vector<caf::resumable*>* jobs) {
  current_round = jobs;
  round_owner = this;
}

void modelgate_scheduler::run_round() {
  auto& jobs = *current_round;
  current_round = nullptr;
  round_owner = nullptr;
  if (jobs.empty())
    return;
  // The round's jobs run here, on the clock thread, instead of waking a
  // worker for them: on a virtual machine a wake-up costs 20-40 µs of CPU,
  // a probe tick about 2, and the actors' mailboxes this thread just wrote
  // to are still in its cache. Jobs these make ready go to the workers as
  // usual (current_round is cleared), so a chain of messages never keeps
  // this thread from its timers; a job that still has messages after its
  // share of them (max_throughput) goes to the workers too. The reference
  // the scheduler holds for each job is handled as a worker does.
  caf::scoped_execution_unit unit{&system()};
  round_wakeups::begin(); // the probe hand-overs wake the I/O thread once, below
  for (auto* job : jobs) {
    switch (job->resume(&unit, max_throughput())) {
      case caf::resumable::resume_later:
        super::enqueue(job); // keeps the scheduler's reference
        break;
      case caf::resumable::done:
      case caf::resumable::awaiting_message:
      case caf::resumable::shutdown_execution_unit:
        caf::intrusive_ptr_release(job);
        break;
    }
  }
  round_wakeups::end();
  jobs.clear();
}

void modelgate_scheduler::start() {
  clock_thread_ = std::thread{[this] {
    caf::detail::set_thread_name("caf.clock");
    system().thread_started();
    clock_.run_dispatch_loop(this);
    system().thread_terminates();
  }};
  super::start();
}

void modelgate_scheduler::stop() {
  super::stop();
  clock_.cancel_dispatch_loop();
  clock_thread_.join();
}

} // namespace mg
