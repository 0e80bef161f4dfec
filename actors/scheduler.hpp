// A CAF scheduler for programs that schedule thousands of delayed messages a
// second: CAF 0.17's work-sharing coordinator with a clock that wakes its
// thread only when a new timeout is due before the one it already waits for.
//
// CAF 0.17.6's own clock wakes its thread on every delayed_send. modelgate's
// probers each arm their next tick about one interval ahead, so at 10,000
// servers that was 10,000 needless wake-ups (and context switches) a second;
// with this clock the thread wakes once per batch of due ticks. A timeout may
// arrive up to 1 ms early, so that timeouts aimed at the same instant share
// one wake-up; a request's timeout up to 100 ms late, for the same reason.
//
// Use: `cfg.load<mg::modelgate_scheduler>()` before constructing the
// actor_system. modelgated does; an embedding program may.
#pragma once

#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/detail/thread_safe_actor_clock.hpp>
#include <caf/policy/work_sharing.hpp>
#include <caf/scheduler/coordinator.hpp>

namespace mg {

/// CAF's simple_actor_clock behind one mutex, with a dispatch thread that
/// sleeps until the earliest timeout and is woken only by an earlier one.
/// It derives from thread_safe_actor_clock only because the coordinator's
/// clock() must return one; it uses none of that class's own machinery.
class coalescing_actor_clock : public caf::detail::thread_safe_actor_clock {
public:
  using super = caf::detail::simple_actor_clock;

  void set_ordinary_timeout(time_point t, caf::abstract_actor* self, caf::atom_value type,
                            uint64_t id) override;
  void set_request_timeout(time_point t, caf::abstract_actor* self, caf::message_id id) override;
  void set_multi_timeout(time_point t, caf::abstract_actor* self, caf::atom_value type,
                         uint64_t id) override;
  void cancel_ordinary_timeout(caf::abstract_actor* self, caf::atom_value type) override;
  void cancel_request_timeout(caf::abstract_actor* self, caf::message_id id) override;
  void cancel_timeouts(caf::abstract_actor* self) override;
  void schedule_message(time_point t, caf::strong_actor_ptr receiver,
                        caf::mailbox_element_ptr content) override;
  void schedule_message(time_point t, caf::group target, caf::strong_actor_ptr sender,
                        caf::message content) override;
  void cancel_all() override;

  /// Dispatches due timeouts until cancel_dispatch_loop(); run by one thread.
  /// Actors made ready by one round of deliveries reach `sched` (when
  /// given) in one batch.
  void run_dispatch_loop(class modelgate_scheduler* sched = nullptr);
  void cancel_dispatch_loop();

private:
  /// Wakes the dispatch thread if `t` is earlier than its planned wake-up.
  /// Called with mx_ held.
  void wake_for(time_point t);

  /// How early a timeout may be delivered to share a round with others.
  static constexpr auto early = std::chrono::milliseconds(1);

  /// The grid request timeouts are rounded up to (set_request_timeout).
  static constexpr auto request_timeout_grain = std::chrono::milliseconds(100);

  /// The earliest instant anything is due; time_point::max() if nothing is.
  /// Called with mx_ held.
  time_point next_due() const;

  /// A delayed_send's message. These are kept apart from CAF's multimap, in
  /// 1 ms buckets whose vectors are reused: scheduling one then costs no
  /// allocation of its own, where the multimap costs two (an event and a
  /// node), freed on this thread. At 10,000 probers that is 20,000
  /// cross-thread allocations a second fewer.
  struct delayed_message {
    time_point due;
    caf::strong_actor_ptr receiver;
    caf::mailbox_element_ptr content;
  };
  using message_bucket = std::vector<delayed_message>;
  /// Takes the buckets due by `now` out of messages_. Called with mx_ held.
  void take_due_messages(time_point now, std::vector<message_bucket>& out);

  static constexpr auto bucket_width = std::chrono::milliseconds(1);
  static constexpr size_t max_spare_buckets = 64;
  std::map<time_point, message_bucket> messages_; // by bucket start
  std::vector<message_bucket> spare_buckets_;      // emptied, capacity kept

  std::mutex mx_;
  std::condition_variable cv_;
  time_point wake_at_ = time_point::max(); // max: sleeping until notified
  bool done_ = false;
};

/// CAF's work-sharing coordinator with the coalescing clock.
class modelgate_scheduler : public caf::scheduler::coordinator<caf::policy::work_sharing> {
public:
  using super = caf::scheduler::coordinator<caf::policy::work_sharing>;
  using super::super;

  static caf::actor_system::module* make(caf::actor_system& sys, caf::detail::type_list<>) {
    return new modelgate_scheduler(sys);
  }

  caf::detail::thread_safe_actor_clock& clock() noexcept override {
    return clock_;
  }

  /// Jobs made ready while the clock thread delivers a round of timeouts are
  /// held back and run by run_round on the clock thread itself, once the
  /// round is delivered: no worker is woken for a round of probe ticks.
  void enqueue(caf::resumable* job) override;
  void begin_round(std::vector<caf::resumable*>* jobs);
  void run_round();

protected:
  void start() override;
  void stop() override;

private:
  // The base coordinator's own clock thread still starts, and sleeps until
  // stop(): nothing is ever scheduled on it.
  coalescing_actor_clock clock_;
  std::thread clock_thread_;
};

} // namespace mg
