// What one wake-up of a sleeping thread costs in CPU on this machine: a
// thread sleeps for a period and wakes, N times, three ways (a condition
// variable's timed wait, epoll on a timerfd, nanosleep), and prints the CPU
// time charged to it per wake-up (getrusage RUSAGE_THREAD). It does no work
// of its own, so all of it is the wake-up. modelgated's probe path is built
// around this figure (protocol/http_probe.cpp): on the virtual machines here
// it is 20-100 µs, more than a probe.
//
// Built with the tests (build/bin/wakeup_cost); run by hand:
//     build/bin/wakeup_cost [period-us (1000)] [wake-ups (2000)]
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/timerfd.h>
#include <unistd.h>

namespace {

double thread_cpu_us() {
  rusage r{};
  getrusage(RUSAGE_THREAD, &r);
  return (r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1e6 + r.ru_utime.tv_usec + r.ru_stime.tv_usec;
}

template <class Sleep>
void measure(const char* how, int wakeups, Sleep sleep) {
  auto before = thread_cpu_us();
  for (int i = 0; i < wakeups; ++i)
    sleep();
  std::printf("%-16s %6.1f us of CPU per wake-up\n", how, (thread_cpu_us() - before) / wakeups);
}

} // namespace

int main(int argc, char** argv) {
  int period_us = argc > 1 ? std::atoi(argv[1]) : 1000;
  int wakeups = argc > 2 ? std::atoi(argv[2]) : 2000;
  std::printf("nproc: %u  period: %d us  wake-ups: %d\n", std::thread::hardware_concurrency(),
              period_us, wakeups);
  auto period = std::chrono::microseconds(period_us);

  std::mutex mutex;
  std::condition_variable cv;
  std::unique_lock<std::mutex> lock(mutex);
  auto next = std::chrono::steady_clock::now();
  measure("cv.wait_until", wakeups, [&] {
    next += period;
    cv.wait_until(lock, next);
  });
  lock.unlock();

  int ep = epoll_create1(0);
  int timer = timerfd_create(CLOCK_MONOTONIC, 0);
  epoll_event ev{};
  ev.events = EPOLLIN;
  epoll_ctl(ep, EPOLL_CTL_ADD, timer, &ev);
  itimerspec spec{};
  spec.it_interval.tv_sec = period_us / 1000000;
  spec.it_interval.tv_nsec = (period_us % 1000000) * 1000L;
  spec.it_value = spec.it_interval;
  timerfd_settime(timer, 0, &spec, nullptr);
  measure("epoll timerfd", wakeups, [&] {
    epoll_event out[1];
    epoll_wait(ep, out, 1, -1);
    uint64_t expirations;
    if (read(timer, &expirations, sizeof expirations) < 0)
      std::perror("read timerfd");
  });
  close(timer);
  close(ep);

  measure("nanosleep", wakeups, [&] { std::this_thread::sleep_for(period); });
}
