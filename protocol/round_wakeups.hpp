// Wake-ups deferred to the end of a round of jobs on one thread.
//
// modelgate_scheduler's clock thread runs each 25-50 ms slot's probe ticks
// as one round (actors/scheduler.cpp). Every tick hands a probe to the probe
// I/O thread, and the first of them would wake it while the rest of the
// round is still to come. A thread running a round defers such wake-ups and
// makes each once, when the round ends: the woken thread then finds the
// whole batch. Outside a round, `defer` returns false and the caller wakes
// at once.
#pragma once

namespace mg::round_wakeups {

using wake_fn = void (*)(void* arg);

/// Marks the start and the end of a round on the calling thread; `end`
/// makes the deferred wake-ups, each once.
void begin();
void end();

/// Defers `wake(arg)` to the end of the round running on this thread (once
/// per `arg`); false when no round runs here.
bool defer(wake_fn wake, void* arg);

} // namespace mg::round_wakeups
