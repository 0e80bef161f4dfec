// Wall-clock time as modelgate stores and prints it, and the grid that
// steady-clock deadlines are rounded to.
//
// Times are kept as milliseconds since the Unix epoch (int64) everywhere inside,
// and rendered as UTC RFC 3339 with milliseconds ("2026-11-27T21:00:00.123Z") at
// the edges. Thread-safe; no state.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

namespace mg {

/// Milliseconds since the Unix epoch.
using epoch_ms = int64_t;

/// A source of wall-clock time; actors take one so tests can inject time.
using wall_clock = std::function<epoch_ms()>;

/// The system clock, in milliseconds.
epoch_ms now_ms();

/// `2026-11-27T21:00:00.123Z`.
std::string format_rfc3339(epoch_ms t);

/// `t` rounded up to a multiple of `step` since its clock's epoch: deadlines
/// rounded to one grid fall due together and share a wake-up.
template <class Clock, class Duration, class Rep, class Period>
std::chrono::time_point<Clock, Duration> round_up(std::chrono::time_point<Clock, Duration> t,
                                                  std::chrono::duration<Rep, Period> step) {
  auto grid = std::chrono::duration_cast<Duration>(step);
  return std::chrono::time_point<Clock, Duration>{
    ((t.time_since_epoch() + grid - Duration(1)) / grid) * grid};
}

/// `t` rounded down to a multiple of `step` since its clock's epoch.
template <class Clock, class Duration, class Rep, class Period>
std::chrono::time_point<Clock, Duration> round_down(std::chrono::time_point<Clock, Duration> t,
                                                    std::chrono::duration<Rep, Period> step) {
  auto grid = std::chrono::duration_cast<Duration>(step);
  return std::chrono::time_point<Clock, Duration>{(t.time_since_epoch() / grid) * grid};
}

} // namespace mg
